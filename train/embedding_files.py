"""Embedding files (docs/formats.md, "Additional embeddings"): what is written, and everything
that can be read back.

- standalone `.safetensors`: `emb_params` [n, dim] (SD1/SD2), or `clip_l` [n, 768] + `clip_g`
  [n, 1280] (SDXL); our own metadata says the name, step and base model;
- A1111 `.pt`: `string_to_token`, `string_to_param` {"*": [n, dim]}, `name`, `step`,
  `sd_checkpoint`, `sd_checkpoint_name` (one text encoder only, so SD1/SD2);
- bundled in a LoRA: `bundle_emb.<name>.string_to_param.*` (SD) or `bundle_emb.<name>.clip_l` /
  `.clip_g` (SDXL), as A1111 reads them;
- a PNG whose `sd-ti-embedding` text chunk holds the A1111 dictionary as base64 JSON, tensors as
  {"TORCHTENSOR": nested lists} (A1111's "save images with embedding in PNG chunks").

Vectors are always stored as float32: they are tiny, and a half-precision copy of a trained
embedding visibly shifts it.
"""

from __future__ import annotations

import base64
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save as save_bytes

from lorakit.errors import UserError
from lorakit.fsio import atomic_path
from lorakit.train.config import NAME
from lorakit.train.tensor_files import read_safetensors

XL_KEYS = ("clip_l", "clip_g")
SD_KEY = "emb_params"
BUNDLE = "bundle_emb."
PNG_CHUNK = "sd-ti-embedding"
FAMILIES = {(768,): "SD1.x (CLIP ViT-L/14)", (1024,): "SD2.x (OpenCLIP ViT-H/14)",
            (768, 1280): "SDXL (CLIP ViT-L/14 + OpenCLIP ViT-bigG/14)"}


@dataclass
class EmbeddingFile:
    name: str
    vectors: dict[str, torch.Tensor]  # "emb_params", or "clip_l" and "clip_g": each [n, dim]
    step: int | None = None
    base_model: str | None = None
    kind: str = ""

    def __post_init__(self):
        if set(self.vectors) == set(XL_KEYS):  # safetensors sorts keys: clip_g would come first
            self.vectors = {k: self.vectors[k] for k in XL_KEYS}

    @property
    def family(self) -> str:
        dims = tuple(v.shape[-1] for v in self.vectors.values())
        return FAMILIES.get(dims, f"no released model family (dimension {' + '.join(map(str, dims))})")


def by_encoder(vectors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """One text encoder: emb_params; two (SDXL): clip_l, clip_g."""
    if len(vectors) == 2:
        return {"clip_l": vectors[0].float().contiguous(), "clip_g": vectors[1].float().contiguous()}
    return {SD_KEY: vectors[0].float().contiguous()}


def bundle_keys(name: str, vectors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    if len(vectors) == 2:
        return {f"{BUNDLE}{name}.{k}": v for k, v in by_encoder(vectors).items()}
    return {f"{BUNDLE}{name}.string_to_param.*": vectors[0].float().contiguous()}


def a1111_dict(name: str, vector: torch.Tensor, step: int, base_model: str | None) -> dict:
    # 265 is the id of "*" in the CLIP vocabulary: A1111 writes it and never reads it back
    return {"string_to_token": {"*": 265}, "string_to_param": {"*": vector.float().contiguous()},
            "name": name, "step": step, "sd_checkpoint": None, "sd_checkpoint_name": base_model}


def save_standalone(path: Path, name: str, vectors: list[torch.Tensor], step: int,
                    base_model: str | None) -> Path:
    """`.pt` paths are written in A1111's format, anything else as safetensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if path.suffix == ".pt":
            if len(vectors) != 1:
                raise UserError("A1111 .pt embeddings hold one text encoder; SDXL embeddings are "
                                "saved as .safetensors (clip_l + clip_g): set saving.embedding_format = \"safetensors\"")
            torch.save(a1111_dict(name, vectors[0], step, base_model), tmp)
        else:
            meta = {"lorakit.name": name, "lorakit.step": str(step), "lorakit.base_model": base_model or ""}
            tmp.write_bytes(save_bytes(by_encoder(vectors), meta))
    return path


def png_payload(name: str, vectors: list[torch.Tensor], step: int, base_model: str | None) -> str:
    data: dict = (a1111_dict(name, vectors[0], step, base_model) if len(vectors) == 1
                  else by_encoder(vectors))  # A1111 reads SDXL ones only as the bare tensor pair

    def encode(obj):
        if isinstance(obj, torch.Tensor):
            return {"TORCHTENSOR": obj.cpu().numpy().tolist()}
        raise TypeError(type(obj))
    return base64.b64encode(json.dumps(data, default=encode).encode()).decode()


def save_png_with_embedding(image: Image.Image, path: Path, name: str, vectors: list[torch.Tensor],
                            step: int, base_model: str | None) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_CHUNK, png_payload(name, vectors, step, base_model))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


# --- reading -----------------------------------------------------------------------------------


def _as_rows(value, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() not in (1, 2):
        raise UserError(f"{where}: not an embedding (expected a [vectors, dim] tensor)")
    return (value[None] if value.dim() == 1 else value).float()


def _from_dict(data: dict, name: str, kind: str, where: str) -> EmbeddingFile:
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or not params:
            raise UserError(f"{where}: string_to_param is empty")
        return EmbeddingFile(str(data.get("name") or name), {SD_KEY: _as_rows(next(iter(params.values())), where)},
                             data.get("step"), data.get("sd_checkpoint_name"), kind)
    if all(k in data for k in XL_KEYS):
        return EmbeddingFile(name, {k: _as_rows(data[k], where) for k in XL_KEYS}, None, None, kind)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:  # emb_params, or diffusers' {token: tensor}
        return EmbeddingFile(name, {SD_KEY: _as_rows(next(iter(tensors.values())), where)}, None, None, kind)
    raise UserError(f"{where}: no embedding found (expected emb_params, clip_l + clip_g, or string_to_param)")


def _decode_png(text: str) -> dict:
    def hook(d):
        return torch.from_numpy(np.array(d["TORCHTENSOR"], dtype=np.float32)) if "TORCHTENSOR" in d else d
    return json.loads(base64.b64decode(text), object_hook=hook)


def read_embedding(path: str | Path) -> list[EmbeddingFile]:
    """Every embedding in a file: one for standalone files and PNGs, any number for a LoRA
    with bundled embeddings. A name read from the file becomes a file name (`train export`): a
    path there is refused, not followed."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise UserError(f"{where}: no such file")
    found = _read(path, where)
    for emb in found:
        if NAME.problem(emb.name):
            raise UserError(f"{where}: the embedding's name {emb.name!r} is a path, not a name; it is not read")
    return found


def _read(path: Path, where: str) -> list[EmbeddingFile]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors, meta = read_safetensors(path)
        bundled: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            if key.startswith(BUNDLE):
                emb, _, rest = key[len(BUNDLE):].partition(".")
                if not rest:
                    raise UserError(f"{where}: {key} is not a bundled embedding's key (bundle_emb.NAME.…)")
                bundled.setdefault(emb, {})[rest.split(".", 1)[0] if rest.startswith("clip_") else SD_KEY] = \
                    tensor.float()
        if bundled:
            step = int(meta["ss_steps"]) if meta.get("ss_steps", "").isdigit() else None
            return [EmbeddingFile(name, v, step, meta.get("ss_sd_model_name"), "bundled in a LoRA")
                    for name, v in bundled.items()]
        if any(k.endswith((".lora_down.weight", ".alpha")) for k in tensors):
            raise UserError(f"{where}: a LoRA without bundled embeddings")
        found = _from_dict(tensors, meta.get("lorakit.name") or path.stem, "safetensors", where)
        found.step = int(meta["lorakit.step"]) if meta.get("lorakit.step", "").isdigit() else None
        found.base_model = meta.get("lorakit.base_model") or None
        return [found]
    if suffix in (".pt", ".bin"):
        try:
            with warnings.catch_warnings():  # torch's notes on a pickle's protocol: noise beside the error
                warnings.simplefilter("ignore")
                data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 (a damaged file fails in many ways: pickle, zip, EOF)
            raise UserError(f"{where}: not an embedding file torch reads without running code in it "
                            f"({type(exc).__name__}): damaged, or a pickle holding more than tensors") from None
        if not isinstance(data, dict):
            raise UserError(f"{where}: not an embedding")
        return [_from_dict(data, path.stem, "A1111 .pt" if "string_to_param" in data else "diffusers .bin", where)]
    if suffix == ".png":
        try:
            with Image.open(path) as image:
                text = getattr(image, "text", {}).get(PNG_CHUNK)
            data = _decode_png(text) if text else None
        except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError) as exc:
            # PIL's errors for a damaged PNG (SyntaxError: a broken chunk); base64's or JSON's for the chunk
            raise UserError(f"{where}: not a readable PNG embedding ({type(exc).__name__})") from None
        if not text:
            raise UserError(f"{where}: the PNG carries no {PNG_CHUNK} chunk")
        if not isinstance(data, dict):
            raise UserError(f"{where}: its {PNG_CHUNK} chunk holds no embedding")
        return [_from_dict(data, path.stem, "PNG chunk", where)]
    raise UserError(f"{where}: embeddings are .safetensors, .pt, .bin or .png files")


def vectors_for_encoders(found: list[EmbeddingFile], text_encoders: list, where: str) -> list[torch.Tensor]:
    """The vectors of a (single) embedding file, one per text encoder, checked against them."""
    if len(found) != 1:
        raise UserError(f"{where}: holds {len(found)} embeddings; name one file per embedding")
    vectors = found[0].vectors
    keys = list(XL_KEYS) if len(text_encoders) == 2 else [SD_KEY]
    if list(vectors) != keys:
        raise UserError(f"{where}: an embedding for {found[0].family}, not for this model")
    out = []
    for key, encoder in zip(keys, text_encoders):
        dim = encoder.get_input_embeddings().weight.shape[1]
        if vectors[key].shape[1] != dim:
            raise UserError(f"{where}: vectors of dimension {vectors[key].shape[1]}; this text encoder has {dim}")
        out.append(vectors[key])
    return out
