"""Block-wise settings, kohya's network_args for LoRA and LoCon: a learning-rate weight per UNet
block (`down_lr_weight`, `mid_lr_weight`, `up_lr_weight`, `block_lr_zero_threshold`) and a rank
and alpha per block (`block_dims`, `block_alphas`; `conv_block_dims`, `conv_block_alphas` for the
3x3 convolutions). The text encoders keep network.dim / alpha and their own learning rate.

kohya's block indexing (docs/formats.md, "kohya's LoRA file"):
- SD1/SD2, 25 blocks: 0 is conv_in (no LoRA); down_blocks_i resnets/attentions_j are 1 + 3i + j,
  its downsampler 3 + 3i; the mid block is 12; up_blocks_i resnets/attentions_j are 13 + 3i + j,
  its upsampler 15 + 3i. down_lr_weight holds blocks 0-11, mid 12, up 13-24.
- SDXL, 23 blocks (SGM names): 0 the time and label embeddings, input_blocks_k 1 + k (k < 9),
  middle_block_k 10 + k, output_blocks_k 13 + k, 22 the output. down_lr_weight holds 1-9, mid
  10-12, up 13-21; 0 and 22 weigh 1.
A block whose learning-rate weight is 0 (or not above the threshold) is not trained: its
modules are not created, as kohya does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lorakit.errors import UserError

LR_KEYS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold")
DIM_KEYS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas")
BLOCK_ARGS = set(LR_KEYS + DIM_KEYS)
SIZES = {False: (12, 1, 12), True: (9, 3, 9)}  # (down, mid, up) per family: SD1/SD2, SDXL
_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def block_index(name: str, sdxl: bool) -> int:
    """kohya's block of a UNet module name; -1 for the text encoders."""
    if not name.startswith("lora_unet_"):
        return -1
    rest = name[len("lora_unet_"):]
    if sdxl:
        for prefix, first in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
            if rest.startswith(prefix):
                return first + int(rest[len(prefix):].split("_")[0])
        return 22 if rest.startswith("out_") else 0
    m = _UPDOWN.search(name)
    if m:
        i, kind, j = int(m[2]), m[3], int(m[4])
        idx = 3 * i + (2 if kind in ("upsamplers", "downsamplers") else j)
        return 1 + idx if m[1] == "down" else 13 + idx
    return 12 if "mid_block_" in name else 0


def _numbers(value, key: str, cast=float) -> list:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # mid_lr_weight = 1: one block, one number
        value = [value]
    if not isinstance(value, list):
        raise UserError(f"network.args.{key}: a list of numbers, or them comma-separated")
    try:
        return [cast(float(v)) for v in value]
    except ValueError:
        raise UserError(f"network.args.{key}: numbers only ({value!r}); kohya's named curves (sine, cosine, "
                        "linear…) are not read: write the weights out") from None


@dataclass
class BlockSettings:
    lr_weight: list[float] | None  # per block index, or None
    dims: list[int] | None
    alphas: list[float] | None
    conv_dims: list[int] | None
    conv_alphas: list[float] | None

    def module(self, name: str, conv3x3: bool, sdxl: bool, rank: int, alpha: float, conv_rank: int,
               conv_alpha: float) -> tuple[int, float] | None:
        """(rank, alpha) of a module under these settings, or None when it is not trained."""
        block = block_index(name, sdxl)
        if block < 0:
            return (rank, alpha) if not conv3x3 else None
        if self.lr_weight is not None and self.lr_weight[block] == 0:
            return None
        if conv3x3:
            if self.conv_dims is not None:
                r = self.conv_dims[block]
                return (r, self.conv_alphas[block]) if r else None
            if self.dims is not None:
                return None  # kohya: block_dims alone leaves the 3x3 convolutions out
            return (conv_rank, conv_alpha) if conv_rank else None
        if self.dims is not None:
            r = self.dims[block]
            return (r, self.alphas[block]) if r else None
        return rank, alpha

    def weight(self, name: str, sdxl: bool) -> float:
        block = block_index(name, sdxl)
        return 1.0 if self.lr_weight is None or block < 0 else self.lr_weight[block]


def settings(args: dict, sdxl: bool, alpha: float, conv_alpha: float) -> BlockSettings | None:
    """The block settings in network.args, checked against the family's block counts."""
    if not BLOCK_ARGS & set(args):
        return None
    down, mid, up = SIZES[sdxl]
    family = "SDXL" if sdxl else "SD1/SD2"
    lr_weight = None
    if any(k in args for k in LR_KEYS[:3]):
        threshold = float(args.get("block_lr_zero_threshold", 0.0))
        parts = []
        for key, size in zip(LR_KEYS[:3], (down, mid, up)):
            values = _numbers(args[key], key) if key in args else [1.0] * size
            if len(values) != size:
                raise UserError(f"network.args.{key} has {len(values)} values; {family} has {size} such blocks")
            parts += [v if v > threshold else 0.0 for v in values]
        lr_weight = ([1.0] + parts + [1.0]) if sdxl else parts
    total = down + mid + up + (2 if sdxl else 0)
    lists = {}
    for dims_key, alphas_key, default_alpha in (("block_dims", "block_alphas", alpha),
                                                ("conv_block_dims", "conv_block_alphas", conv_alpha)):
        if alphas_key in args and dims_key not in args:
            raise UserError(f"network.args.{alphas_key} needs {dims_key}")
        if dims_key not in args:
            lists[dims_key] = lists[alphas_key] = None
            continue
        dims = _numbers(args[dims_key], dims_key, int)
        alphas = _numbers(args[alphas_key], alphas_key) if alphas_key in args else [default_alpha] * len(dims)
        for key, values in ((dims_key, dims), (alphas_key, alphas)):
            if len(values) != total:
                raise UserError(f"network.args.{key} has {len(values)} values; {family} has {total} blocks "
                                f"(kohya's indexing: docs/formats.md)")
        lists[dims_key], lists[alphas_key] = dims, alphas
    return BlockSettings(lr_weight, lists["block_dims"], lists["block_alphas"], lists["conv_block_dims"],
                         lists["conv_block_alphas"])
