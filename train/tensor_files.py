"""Reading a .safetensors file a user names (a LoRA, an embedding): the one place where a damaged
file (garbage, a header cut short or claiming more bytes than the file has, offsets outside it)
becomes one error naming the file instead of safetensors' traceback."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from lorakit.errors import UserError


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(every tensor, the metadata)."""
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path}: not a readable .safetensors file ({str(exc).splitlines()[0]})") from None
