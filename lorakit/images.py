"""Safe image loading and saving, shared by every stage.

`load_image` turns whatever a user's folder holds into an 8-bit ``RGB`` or ``RGBA`` Pillow image
with EXIF orientation applied, or raises `ImageError` with a one-line message that names the
problem. The pitfalls it handles are listed in docs/formats.md, "Images" (16-bit greyscale clipping white,
CMYK without its ICC profile, palette/LA transparency, animated files, decompression bombs).
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from lorakit.fsio import atomic_path

try:  # HEIC/HEIF support is optional (`pip install lorakit[heic]`); without it they fail clearly.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:
    pass

IMAGE_SUFFIXES = {
    ".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".avif", ".gif", ".bmp", ".dib",
    ".tif", ".tiff", ".tga", ".ico", ".heic", ".heif", ".jxl",
}

# Pillow warns above 89.5 MP and refuses above twice that; we refuse at the refusal point by
# default (a 12,000 x 14,900 scan is still fine) and let the user move the limit.
DEFAULT_MAX_PIXELS = 2 * 89_478_485

_SRGB = ImageCms.createProfile("sRGB")


class ImageError(Exception):
    """A file that cannot be used as an image; the message is shown to the user as is."""


@dataclass(frozen=True)
class Header:
    """What can be known about an image file without decoding its pixels."""

    format: str
    mode: str
    width: int
    height: int
    frames: int
    has_alpha: bool


def _unreachable(path: Path, exc: OSError) -> str:
    """Why a file that discovery listed cannot be read: os.walk lists broken symlinks as files."""
    if exc.errno == errno.ELOOP:
        return "a symlink loop (it leads back to itself); remove it or point it at an image"
    if exc.errno == errno.ENOENT and path.is_symlink():
        return f"a dangling symlink (its target {os.readlink(path)} does not exist)"
    return f"cannot read: {exc.strerror or exc}"


# Pillow refuses a PNG iCCP/zTXt/iTXt chunk that inflates past PngImagePlugin.MAX_TEXT_CHUNK with
# a ValueError: the same attack as a decompression bomb, in the metadata.
_PILLOW_REASONS = {
    "runcated": "truncated file (the download or copy was cut short)",
    "Decompressed data too large": "a PNG text or colour-profile chunk inflates past Pillow's limit "
                                   "(a decompression bomb?)",
}


def _reason(exc: Exception) -> str:
    """Pillow's message, or what it means for the user where it says little."""
    reason = str(exc) or type(exc).__name__
    for known, meaning in _PILLOW_REASONS.items():
        if known in reason:
            return meaning
    return reason


def _open(path: Path, max_pixels: int) -> Image.Image:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(_unreachable(path, exc)) from None
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise ImageError("not an image, or a format Pillow cannot read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"cannot open: {_reason(exc)}") from None
    pixels = img.width * img.height
    if pixels > max_pixels:
        img.close()
        raise ImageError(
            f"{img.width}x{img.height} is {pixels / 1e6:.0f} MP, over the limit of "
            f"{max_pixels / 1e6:.0f} MP (a decompression bomb?); raise it with --max-pixels"
        )
    return img


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info


def _header(path: Path, img: Image.Image) -> Header:
    return Header(format=img.format or path.suffix.lstrip(".").upper(), mode=img.mode,
                  width=img.width, height=img.height, frames=getattr(img, "n_frames", 1),
                  has_alpha=_has_alpha(img))


def read_header(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """Format, mode, size, frame count and transparency, from the file header only."""
    with _open(path, max_pixels) as img:
        return _header(path, img)


def _check_complete(path: Path, img: Image.Image) -> None:
    """Catch truncation without decoding pixels: Pillow's `verify` walks PNG chunks and their
    CRCs; JPEG and WebP need their own end checks (Pillow's verify does not decode them)."""
    if img.format == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            if b"\xff\xd9" not in f.read():
                raise ImageError("truncated file (no JPEG end marker)")
    elif img.format == "WEBP":
        with open(path, "rb") as f:
            riff = f.read(8)
        if len(riff) == 8 and int.from_bytes(riff[4:8], "little") + 8 > path.stat().st_size:
            raise ImageError("truncated file (shorter than its WebP header says)")
    else:
        img.verify()


def check_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """`read_header`, plus a check that the file is complete, for stages that pass files through
    without decoding them (a full decode costs ~100x more)."""
    img = _open(path, max_pixels)
    try:
        header = _header(path, img)
        _check_complete(path, img)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"cannot decode: {_reason(exc)}") from None
    finally:
        img.close()
    return header


def _high_bit_depth_to_8(img: Image.Image) -> Image.Image:
    """I;16/I/F greyscale to L. Pillow's own convert clips at 255 (a white image), so scale."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float32)
        peak = float(arr.max()) if arr.size else 0.0
        scaled = arr * 255.0 if peak <= 1.0 else arr / max(peak, 255.0) * 255.0
    elif arr.dtype == np.uint16 or (arr.size and int(arr.max()) > 255):
        scaled = arr.astype(np.float32) / 257.0  # 65535 -> 255 exactly
    else:
        scaled = arr.astype(np.float32)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _to_srgb(img: Image.Image) -> Image.Image:
    """Colour-manage CMYK (and any image with an embedded profile) into sRGB RGB/RGBA."""
    icc = img.info.get("icc_profile")
    alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
    base = img.convert("RGB" if img.mode in ("RGBA", "LA") else img.mode) if alpha else img
    if icc and base.mode in ("RGB", "CMYK", "L"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            base = ImageCms.profileToProfile(base, src, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            base = base.convert("RGB")  # a broken profile: fall back to the naive conversion
    base = base if base.mode == "RGB" else base.convert("RGB")
    if alpha is not None:
        base.putalpha(alpha)
    return base


def normalize(img: Image.Image) -> Image.Image:
    """Any decoded Pillow image (first frame) to 8-bit sRGB ``RGB`` or ``RGBA``."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = _high_bit_depth_to_8(img)
    if img.mode in ("P", "PA", "1", "L", "LA", "La", "RGBa", "I;16") or (
        img.mode == "RGB" and "transparency" in img.info
    ):
        img = img.convert("RGBA" if _has_alpha(img) else "RGB")
    if img.mode not in ("RGB", "RGBA") or img.info.get("icc_profile"):
        img = _to_srgb(img)
    if img.mode == "RGBA" and img.getchannel("A").getextrema()[0] == 255:
        img = img.convert("RGB")  # an alpha channel that hides nothing is dropped, losslessly
    return img


def load_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `path` to an 8-bit RGB/RGBA image; first frame of animations."""
    img = _open(path, max_pixels)
    try:
        img.seek(0)
        img.load()
        out = normalize(img)
        if out is img:
            out = img.copy()
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"cannot decode: {_reason(exc)}") from None
    finally:
        img.close()
    return out


def flatten(img: Image.Image, color: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGBA over a solid colour -> RGB; images without alpha are returned as they are."""
    if img.mode != "RGBA":
        return img
    background = Image.new("RGBA", img.size, (*color, 255))
    return Image.alpha_composite(background, img).convert("RGB")


# --- saving -------------------------------------------------------------------------------
# PNG at compress level 1: intermediate files between stages are read once or twice, and level 6
# costs ~4x the time for ~10% smaller files (docs/formats.md, "Images": 675 ms vs 173 ms at 1.57 MP).


@dataclass(frozen=True)
class OutputFormat:
    suffix: str
    pil_format: str
    alpha: bool

    def save_kwargs(self, quality: int) -> dict:
        return {
            "PNG": {"compress_level": 1},
            "JPEG": {"quality": quality, "subsampling": 0 if quality >= 90 else 2},
            "WEBP": {"quality": quality, "method": 4},
        }[self.pil_format]


OUTPUT_FORMATS = {
    "png": OutputFormat(".png", "PNG", alpha=True),
    "jpg": OutputFormat(".jpg", "JPEG", alpha=False),
    "webp": OutputFormat(".webp", "WEBP", alpha=True),
}
_SUFFIX_TO_FORMAT = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}


def natural_format(src: Path) -> OutputFormat:
    """Stages after `convert` keep png/jpg/webp as they are and write anything else as PNG."""
    return OUTPUT_FORMATS[_SUFFIX_TO_FORMAT.get(src.suffix.lower(), "png")]


def natural_output_name(rel: Path) -> Path:
    return rel if rel.suffix.lower() in _SUFFIX_TO_FORMAT else rel.with_suffix(".png")


def save_image(img: Image.Image, dst: Path, fmt: OutputFormat, quality: int = 95) -> None:
    """Write atomically; JPEG cannot hold alpha, so callers flatten first."""
    if img.mode == "RGBA" and not fmt.alpha:
        raise ImageError(f"has transparency and {fmt.pil_format} cannot hold it; flatten first")
    with atomic_path(dst) as tmp:
        img.save(tmp, format=fmt.pil_format, **fmt.save_kwargs(quality))
