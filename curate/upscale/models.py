"""Upscaler models by name: where their official release files live, and a download cache.

`resolve("RealESRGAN_x4plus")` returns the cached file, downloading it on first use. A path to
an existing file is used as is. `LORAKIT_UPSCALE_MIRROR` replaces the download location (a
folder URL, `file:///...` included) for offline machines and tests; `LORAKIT_CACHE` moves the
cache.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lorakit.errors import UserError
from lorakit.fsio import atomic_path
from lorakit.fsio import cache_dir as lorakit_cache

_RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases/download"


@dataclass(frozen=True)
class NamedModel:
    filename: str
    url: str
    about: str


# Official Real-ESRGAN release files (docs/formats.md, "Images"). Community models (4x-UltraSharp,
# 4x_foolhardy_Remacri) have no official address: users pass their file, or drop it in the cache
# folder and use its name.
UPSCALERS = {
    "RealESRGAN_x4plus": NamedModel(
        "RealESRGAN_x4plus.pth", f"{_RELEASES}/v0.1.0/RealESRGAN_x4plus.pth",
        "RRDBNet 23 blocks, 4x, photos and general images"),
    "RealESRGAN_x4plus_anime_6B": NamedModel(
        "RealESRGAN_x4plus_anime_6B.pth", f"{_RELEASES}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
        "RRDBNet 6 blocks, 4x, anime illustrations"),
    "RealESRGAN_x2plus": NamedModel(
        "RealESRGAN_x2plus.pth", f"{_RELEASES}/v0.2.1/RealESRGAN_x2plus.pth",
        "RRDBNet 23 blocks, 2x"),
    "realesr-animevideov3": NamedModel(
        "realesr-animevideov3.pth", f"{_RELEASES}/v0.2.5.0/realesr-animevideov3.pth",
        "SRVGGNetCompact 16 convs, 4x, fast, anime"),
    "realesr-general-x4v3": NamedModel(
        "realesr-general-x4v3.pth", f"{_RELEASES}/v0.2.5.0/realesr-general-x4v3.pth",
        "SRVGGNetCompact 32 convs, 4x, fast, general"),
}


def cache_dir() -> Path:
    return lorakit_cache("upscalers")


def _lookup(name: str) -> tuple[str, NamedModel] | None:
    folded = name.lower().replace("_", "-")
    for key, model in UPSCALERS.items():
        if folded in (key.lower().replace("_", "-"), Path(model.filename).stem.lower().replace("_", "-")):
            return key, model
    return None


def download(url: str, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)


def resolve(name_or_path: str, allow_download: bool = True) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    cache = cache_dir()
    for suffix in ("", ".pth", ".safetensors"):
        cached = cache / f"{name_or_path}{suffix}"
        if cached.is_file():
            return cached
    found = _lookup(name_or_path)
    if found is None:
        known = "; ".join(f"{name} ({model.about})" for name, model in UPSCALERS.items())
        raise UserError(f"no upscaler file or known model named {name_or_path!r}. Known models: "
                        f"{known}. For community models (4x-UltraSharp...) pass the .pth/"
                        f".safetensors path, or put the file in {cache}")
    key, model = found
    target = cache / model.filename
    if target.is_file():
        return target
    mirror = os.environ.get("LORAKIT_UPSCALE_MIRROR")
    url = f"{mirror.rstrip('/')}/{model.filename}" if mirror else model.url
    if not allow_download:
        raise UserError(f"{key} is not in the cache: download {url} to {target}")
    try:
        download(url, target)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"could not download {key} from {url} ({reason}). Fetch that file "
                        f"yourself and put it at {target}, or pass --model PATH") from None
    return target
