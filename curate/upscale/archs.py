"""The Real-ESRGAN family of super-resolution networks, written for lorakit.

- `RRDBNet`: ESRGAN's generator (Wang et al. 2018, arXiv 1809.00219), as used by
  RealESRGAN_x4plus / x2plus / anime_6B and the community "old ESRGAN" models (4x-UltraSharp,
  4x_foolhardy_Remacri...). Generalised over the number of 2x upsampling stages and the pixel
  unshuffle that Real-ESRGAN puts in front of its x2 and x1 models.
- `SRVGGNetCompact`: the small VGG-style network of realesr-animevideov3 and general-x4v3.

Parameter names follow the Real-ESRGAN release files (`conv_first`, `body.N.rdb1.conv1`...);
`loading.py` maps the old-ESRGAN names onto them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the block input and every earlier output."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), 0.2))
        # residual scaling 0.2 (ESRGAN paper, section 3.1) keeps the deep stack stable
        return self.conv5(torch.cat(features, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """`unshuffle` (1, 2 or 4) folds pixels into channels first; `num_upsample` nearest-2x
    stages follow the trunk. The net scale is 2**num_upsample / unshuffle: Real-ESRGAN x2plus is
    unshuffle 2 with two upsamples, old-ESRGAN 2x models are unshuffle 1 with one."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32, num_upsample: int = 2,
                 unshuffle: int = 1):
        super().__init__()
        self.unshuffle = unshuffle
        self.conv_first = nn.Conv2d(num_in_ch * unshuffle * unshuffle, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up = nn.ModuleList(nn.Conv2d(num_feat, num_feat, 3, 1, 1)
                                     for _ in range(num_upsample))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    @property
    def scale(self) -> float:
        return 2 ** len(self.conv_up) / self.unshuffle

    @property
    def size_multiple(self) -> int:
        return self.unshuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        for conv in self.conv_up:
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


class SRVGGNetCompact(nn.Module):
    """conv, then `num_conv` (conv, PReLU) pairs, then a conv to out*scale^2 channels and a
    pixel shuffle; the nearest-upsampled input is added, so the body learns a residual."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_conv: int = 16, upscale: int = 4):
        super().__init__()
        self.upscale = upscale
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    @property
    def scale(self) -> float:
        return float(self.upscale)

    @property
    def size_multiple(self) -> int:
        return 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.pixel_shuffle(self.body(x), self.upscale)
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")
