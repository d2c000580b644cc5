"""Tagger models by short name, found locally or downloaded with huggingface_hub.

A tagger is an ONNX file plus a CSV of its output tags (SmilingWolf's `selected_tags.csv`:
`tag_id,name,category,count`; Z3D's `tags-selected.csv`). `--model-dir` takes a folder holding
both, for offline use. `--precision int8` makes an onnxruntime dynamically quantised copy once,
next to the cache, and reuses it.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from lorakit.errors import UserError
from lorakit.fsio import cache_dir
from lorakit.hub import unreachable
from lorakit.tagging.defaults import CHARACTER, GENERAL

TAG_FILES = ("selected_tags.csv", "tags-selected.csv")


@dataclass(frozen=True)
class TaggerSpec:
    repo: str
    vocab: str
    tags_file: str = "selected_tags.csv"
    general: float = GENERAL  # the reference app's; a model card's P=R threshold where it gives one
    character: float = CHARACTER


TAGGERS = {
    "wd-swinv2-v3": TaggerSpec("SmilingWolf/wd-swinv2-tagger-v3", "danbooru", general=0.2653),
    "wd-vit-v3": TaggerSpec("SmilingWolf/wd-vit-tagger-v3", "danbooru"),
    "wd-convnext-v3": TaggerSpec("SmilingWolf/wd-convnext-tagger-v3", "danbooru", general=0.2682),
    "wd-vit-large-v3": TaggerSpec("SmilingWolf/wd-vit-large-tagger-v3", "danbooru"),
    "wd-eva02-large-v3": TaggerSpec("SmilingWolf/wd-eva02-large-tagger-v3", "danbooru", general=0.5296),
    "wd-v1-4-moat-v2": TaggerSpec("SmilingWolf/wd-v1-4-moat-tagger-v2", "danbooru"),
    "wd-v1-4-swinv2-v2": TaggerSpec("SmilingWolf/wd-v1-4-swinv2-tagger-v2", "danbooru"),
    "wd-v1-4-convnext-v2": TaggerSpec("SmilingWolf/wd-v1-4-convnext-tagger-v2", "danbooru"),
    "wd-v1-4-convnextv2-v2": TaggerSpec("SmilingWolf/wd-v1-4-convnextv2-tagger-v2", "danbooru"),
    "wd-v1-4-vit-v2": TaggerSpec("SmilingWolf/wd-v1-4-vit-tagger-v2", "danbooru"),
    "z3d-e621-convnext": TaggerSpec("toynya/Z3D-E621-Convnext", "e621", tags_file="tags-selected.csv"),
}
DEFAULT_TAGGER = {"danbooru": "wd-swinv2-v3", "e621": "z3d-e621-convnext"}


@dataclass(frozen=True)
class TagInfo:
    names: tuple[str, ...]
    categories: tuple[int, ...]


@dataclass(frozen=True)
class TaggerFiles:
    name: str
    model: Path
    tags: Path
    spec: TaggerSpec | None


def read_tags(path: Path) -> TagInfo:
    """Both layouts: a header naming `name` (or `tag`) and optionally `category`. The category
    decides which tags are ratings (9) or characters (4): a CSV with a category that is not a
    number is refused, not read as general tags (it would write `rating:` tags into captions)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 CSV ({exc.reason} at byte {exc.start}); use the tag "
                        "list that came with the model") from None
    except csv.Error as exc:
        raise UserError(f"{path}: not a CSV ({exc})") from None
    if not rows:
        raise UserError(f"{path}: no tags")
    name_col = next((c for c in ("name", "tag", "tag_name") if c in rows[0]), None)
    if name_col is None:
        raise UserError(f"{path}: no 'name' column (columns: {', '.join(rows[0])})")
    if "category" not in rows[0]:
        return TagInfo(tuple(r[name_col] for r in rows), (0,) * len(rows))
    for line, row in enumerate(rows, start=2):
        if not str(row["category"]).strip().isdigit():
            raise UserError(f"{path} line {line}: the category of {row[name_col]!r} is {row['category']!r}, "
                            "not a number; the tag list is damaged or not the model's")
    return TagInfo(tuple(r[name_col] for r in rows), tuple(int(r["category"]) for r in rows))


def _from_dir(folder: Path) -> tuple[Path, Path]:
    model = folder / "model.onnx"
    tags = next((folder / t for t in TAG_FILES if (folder / t).is_file()), None)
    if not model.is_file() or tags is None:
        raise UserError(f"{folder} must hold model.onnx and {' or '.join(TAG_FILES)}")
    return model, tags


def resolve(name: str | None, vocab: str, model_dir: Path | None) -> TaggerFiles:
    if model_dir is not None:
        model, tags = _from_dir(model_dir)
        return TaggerFiles(name or model_dir.name, model, tags, TAGGERS.get(name or ""))
    if not name and vocab not in DEFAULT_TAGGER:
        raise UserError(f"unknown vocabulary {vocab!r}: use {' or '.join(DEFAULT_TAGGER)}")
    name = name or DEFAULT_TAGGER[vocab]
    spec = TAGGERS.get(name)
    if spec is None:
        raise UserError(f"unknown tagger {name!r}: use one of {', '.join(TAGGERS)}, or --model-dir")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = unreachable()
    try:
        model = Path(hf_hub_download(spec.repo, "model.onnx", local_files_only=bool(offline)))
        tags = Path(hf_hub_download(spec.repo, spec.tags_file, local_files_only=bool(offline)))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        why = f"offline: {offline}" if offline else f"the download failed: {type(exc).__name__}"
        raise UserError(
            f"{name}: model.onnx and {spec.tags_file} of {spec.repo} are not in the Hugging Face "
            f"cache ({why}). Put both files in a folder and pass --model-dir FOLDER, or where there is a network "
            f"run `hf download {spec.repo} model.onnx {spec.tags_file}` (into the cache) and run this again") from None
    return TaggerFiles(name, model, tags, spec)


def quantized(model: Path) -> Path:
    """An int8 copy (onnxruntime dynamic quantisation), made once and cached by content."""
    digest = hashlib.sha256()
    with open(model, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    root = cache_dir("int8")
    target = root / f"{digest.hexdigest()[:16]}.onnx"
    if not target.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            quantize_dynamic(str(model), str(tmp), weight_type=QuantType.QInt8)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target
