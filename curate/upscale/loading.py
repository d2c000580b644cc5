"""Reading upscaler weight files and building the right network from their keys alone.

Three key layouts occur in the wild (docs/formats.md, "Images"):
- Real-ESRGAN releases: `{"params_ema": {...}}` (or `params`) with `conv_first.weight`,
  `body.0.rdb1.conv1.weight`, `conv_up1.weight`... for RRDBNet, `body.N.weight` for SRVGG.
- Old ESRGAN (4x-UltraSharp, Remacri...): `model.0.weight`, `model.1.sub.0.RDB1.conv1.0.weight`,
  ..., `model.1.sub.<num_block>.weight` (trunk conv), then the upsampling convs and the two HR
  convs at growing `model.N` indices.
- Either of those saved as `.safetensors`.
`.pth` files are read with `torch.load(weights_only=True)`: a pickle would otherwise run code.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from lorakit.curate.upscale.archs import RRDBNet, SRVGGNetCompact
from lorakit.errors import UserError

StateDict = dict[str, torch.Tensor]


class UnknownArchitecture(UserError):
    pass


def read_state_dict(path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{path}: not a readable .safetensors file ({exc}); a download cut "
                            "short looks like this: fetch it again") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises a variety of pickle errors
            raise UserError(f"{path}: not a weights-only PyTorch file ({exc}). lorakit never "
                            "runs pickled code; convert the model to .safetensors") from None
    for wrapper in ("params_ema", "params", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path}: holds no weights")
    # DataParallel saves prefix every key with "module."
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _rrdb_shape(state: StateDict, first: str, last: str, block_key: str) -> dict:
    in_ch_total = state[first].shape[1]
    out_ch = state[last].shape[0]
    unshuffle = math.isqrt(in_ch_total // out_ch)
    blocks = {int(m.group(1)) for k in state if (m := re.match(block_key, k))}
    return dict(num_in_ch=in_ch_total // (unshuffle * unshuffle), num_out_ch=out_ch,
                num_feat=state[first].shape[0], num_block=len(blocks), unshuffle=unshuffle)


def _from_realesrgan_rrdb(state: StateDict) -> tuple[nn.Module, StateDict]:
    shape = _rrdb_shape(state, "conv_first.weight", "conv_last.weight", r"body\.(\d+)\.")
    ups = sorted(int(m.group(1)) for k in state if (m := re.match(r"conv_up(\d+)\.weight$", k)))
    renamed = {re.sub(r"^conv_up(\d+)\.", lambda m: f"conv_up.{int(m.group(1)) - 1}.", k): v
               for k, v in state.items()}
    grow = state["body.0.rdb1.conv1.weight"].shape[0]
    return RRDBNet(num_grow_ch=grow, num_upsample=len(ups), **shape), renamed


def _from_old_esrgan(state: StateDict) -> tuple[nn.Module, StateDict]:
    convs = sorted({int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.weight$", k))})
    # model.0 is the first conv; after the trunk (model.1) come the upsampling convs, then the
    # two HR convs.
    tail = [i for i in convs if i > 1]
    if len(tail) < 2:
        raise UnknownArchitecture("an old-ESRGAN file without its HR convolutions")
    ups, (hr, last) = tail[:-2], tail[-2:]
    shape = _rrdb_shape(state, "model.0.weight", f"model.{last}.weight", r"model\.1\.sub\.(\d+)\.RDB")
    num_block = shape["num_block"]
    renamed: StateDict = {}
    for key, value in state.items():
        new = key
        if m := re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", key):
            new = f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"
        elif m := re.match(rf"model\.1\.sub\.{num_block}\.(weight|bias)$", key):
            new = f"conv_body.{m[1]}"
        elif m := re.match(r"model\.(\d+)\.(weight|bias)$", key):
            index = int(m[1])
            names = {0: "conv_first", hr: "conv_hr", last: "conv_last"}
            names.update({u: f"conv_up.{n}" for n, u in enumerate(ups)})
            new = f"{names[index]}.{m[2]}"
        renamed[new] = value
    grow = state["model.1.sub.0.RDB1.conv1.0.weight"].shape[0]
    return RRDBNet(num_grow_ch=grow, num_upsample=len(ups), **shape), renamed


def _from_srvgg(state: StateDict) -> tuple[nn.Module, StateDict]:
    indices = sorted({int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.weight$", k))})
    first, last = state["body.0.weight"], state[f"body.{indices[-1]}.weight"]
    num_in = first.shape[1]
    upscale = math.isqrt(last.shape[0] // num_in)
    return SRVGGNetCompact(num_in_ch=num_in, num_out_ch=num_in, num_feat=first.shape[0],
                           num_conv=(indices[-1] - 2) // 2, upscale=upscale), state


# Which layout a file has, told by a key only that layout has; first match wins.
ARCHITECTURES = {
    "realesrgan-rrdb": ("conv_first.weight", _from_realesrgan_rrdb),
    "old-esrgan-rrdb": ("model.1.sub.0.RDB1.conv1.0.weight", _from_old_esrgan),
    "srvgg-compact": ("body.1.weight", _from_srvgg),
}


def detect(state: StateDict) -> str | None:
    for name, (key, _) in ARCHITECTURES.items():
        if key in state:
            return name
    return None


def build(state: StateDict, source: str) -> nn.Module:
    """A network in eval mode with every weight of the file loaded (strictly)."""
    arch = detect(state)
    if arch is None:
        raise UnknownArchitecture(
            f"{source}: not an RRDBNet (Real-ESRGAN / old ESRGAN) or SRVGGNetCompact file. "
            "Other architectures (SwinIR, HAT, DAT, OmniSR...) load through spandrel: "
            "pip install spandrel (it needs torchvision)")
    net, renamed = ARCHITECTURES[arch][1](state)
    try:
        net.load_state_dict(renamed, strict=True)
    except RuntimeError as exc:
        raise UnknownArchitecture(f"{source}: looks like {arch} but its weights do not fit: "
                                  f"{str(exc).splitlines()[0]}") from None
    return net.eval()
