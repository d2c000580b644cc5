"""Running an upscaler over an image, tile by tile, exactly as Real-ESRGAN's `RealESRGANer` does
(same padding, tiling, rounding and alpha handling), so our output equals the reference's.

- pre-pad: reflect-pad right/bottom by `pre_pad`, cropped off after.
- size multiple: networks that pixel-unshuffle need sides divisible by 2 or 4: reflect-pad.
- tiles: `tile` px squares, each read with `tile_pad` px of context, only the centre kept.
- alpha: the alpha channel goes through the network as a grey RGB image and comes back grey
  (BT.601 weights, as the reference's cv2 BGR2GRAY).
- a `target` size other than the native scale is reached by a Lanczos resize at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from lorakit.curate.upscale.loading import build, detect, read_state_dict
from lorakit.curate.upscale.models import resolve

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# RealESRGANer reflect-pads to these multiples by the model's scale, whatever its architecture
# (an old-ESRGAN 2x model needs no padding, yet gets it): the border pixels depend on it.
REFERENCE_SIZE_MULTIPLE = {2: 2, 1: 4}


@dataclass
class Upscaler:
    net: Callable[[torch.Tensor], torch.Tensor]
    scale: int
    size_multiple: int = 1
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    tile: int = 0
    tile_pad: int = 10
    pre_pad: int = 0

    def _forward(self, img: torch.Tensor) -> torch.Tensor:
        """[1,3,H,W] in 0..1 -> [1,3,H*s,W*s]; tiled when `tile` > 0."""
        _, _, height, width = img.shape
        if self.tile <= 0:
            return self.net(img)
        scale = self.scale
        out = img.new_zeros((1, img.shape[1], height * scale, width * scale))
        for y in range(math.ceil(height / self.tile)):
            for x in range(math.ceil(width / self.tile)):
                x0, y0 = x * self.tile, y * self.tile
                x1, y1 = min(x0 + self.tile, width), min(y0 + self.tile, height)
                px0, py0 = max(x0 - self.tile_pad, 0), max(y0 - self.tile_pad, 0)
                px1, py1 = min(x1 + self.tile_pad, width), min(y1 + self.tile_pad, height)
                result = self.net(img[:, :, py0:py1, px0:px1])
                ox, oy = (x0 - px0) * scale, (y0 - py0) * scale
                out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                    result[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
        return out

    @torch.inference_mode()
    def run(self, rgb: np.ndarray) -> np.ndarray:
        """float32 HxWx3 in 0..1 -> float32 (H*s)x(W*s)x3, clamped to 0..1."""
        height, width = rgb.shape[:2]
        img = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float()
        img = img.unsqueeze(0).to(self.device, self.dtype)
        if self.pre_pad:
            img = F.pad(img, (0, self.pre_pad, 0, self.pre_pad), "reflect")
        mod = self.size_multiple
        pad_h, pad_w = (-img.shape[2]) % mod, (-img.shape[3]) % mod
        if pad_h or pad_w:
            img = F.pad(img, (0, pad_w, 0, pad_h), "reflect")
        out = self._forward(img)[:, :, :height * self.scale, :width * self.scale]
        return out.squeeze(0).float().cpu().clamp_(0, 1).numpy().transpose(1, 2, 0)

    def upscale(self, img: Image.Image, target: tuple[int, int] | None = None) -> Image.Image:
        """An 8-bit RGB/RGBA image upscaled by the native scale, then resized to `target`."""
        arr = np.asarray(img).astype(np.float32) / 255.0
        out = self.run(arr[:, :, :3])
        if img.mode == "RGBA":
            alpha = self.run(cv2.cvtColor(arr[:, :, 3], cv2.COLOR_GRAY2RGB))
            out = np.dstack([out, cv2.cvtColor(alpha, cv2.COLOR_RGB2GRAY)])
        out8 = (out * 255.0).round().astype(np.uint8)
        if target is not None and target != (out8.shape[1], out8.shape[0]):
            out8 = cv2.resize(out8, target, interpolation=cv2.INTER_LANCZOS4)
        return Image.fromarray(out8, img.mode)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":  # half precision is the reference's GPU default; CPU stays fp32
        return torch.float16 if device.type == "cuda" else torch.float32
    return PRECISIONS[precision]


def _spandrel(path: Path) -> tuple[Callable, int, int] | None:
    """Architectures we do not implement, through spandrel when it is installed."""
    try:
        import spandrel
    except ImportError:
        return None
    descriptor = spandrel.ModelLoader().load_from_file(str(path))
    requirements = getattr(descriptor, "size_requirements", None)
    return descriptor, int(descriptor.scale), int(getattr(requirements, "multiple_of", 1) or 1)


def load_upscaler(model: str, device: str = "auto", precision: str = "auto", tile: int = 512,
                  tile_pad: int = 10, pre_pad: int = 0) -> Upscaler:
    path = resolve(model)
    state = read_state_dict(path)
    dev = pick_device(device)
    dtype = pick_dtype(precision, dev)
    found = None if detect(state) else _spandrel(path)
    if found is not None:
        call, scale, multiple = found
        if hasattr(call, "to"):
            call = call.to(dev)
        net: Callable = call
    else:
        module = build(state, str(path)).to(dev, dtype)
        net, scale = module, int(module.scale)
        multiple = max(module.size_multiple, REFERENCE_SIZE_MULTIPLE.get(scale, 1))
    return Upscaler(net, scale, multiple, dev, dtype, tile, tile_pad, pre_pad)
