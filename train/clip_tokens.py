"""Counting tokens as CLIP does, with no model at hand: the BPE merges this project ships
(train/model_configs/clip_merges.txt.gz, the ones every SD text encoder uses: SD1's CLIP-L,
SD2's and SDXL's OpenCLIP) make the tokenizer once, in lorakit's cache. `train plan` and the
review page count with it, so both give the numbers the trainer's tokenizer gives."""

from __future__ import annotations

import gzip
import hashlib
import json
from functools import lru_cache
from pathlib import Path

from lorakit.fsio import atomic_path, cache_dir

LIMITS = (75, 150, 225)  # kohya's max_token_length: 1, 2 or 3 chunks of 75 (77 with start and end)


@lru_cache(maxsize=1)
def shipped_tokenizer():
    from transformers import CLIPTokenizer

    from lorakit.train.single_file import MERGES, _vocab

    packed = MERGES.read_bytes()
    folder = cache_dir("clip_tokenizer", hashlib.sha256(packed).hexdigest()[:12])
    if not (folder / "tokenizer_config.json").is_file():
        merges = gzip.decompress(packed).decode("utf-8")
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in (("vocab.json", json.dumps(_vocab(merges))), ("merges.txt", merges)):
            with atomic_path(folder / name) as tmp:
                tmp.write_text(text, encoding="utf-8")
        with atomic_path(folder / "tokenizer_config.json") as tmp:  # last: its presence marks the folder complete
            tmp.write_text(json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
                                       "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                                       "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def model_tokenizer(base: str):
    """The base model's own tokenizer where it is a local diffusers folder, else the shipped one."""
    folder = Path(base) / "tokenizer" if base else None
    if folder is None or not any((folder / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        return shipped_tokenizer()
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def count(tokenizer, text: str) -> int:
    """Tokens between the start and end tokens: what data.max_token_length limits."""
    return len(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)  # no "longer than 77" notice: counting it is the point
