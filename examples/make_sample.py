"""Make the sample dataset that `make demo` runs on: small, generated images that carry every
trap a real raw folder has (webp, transparency, animation, CMYK with an ICC profile, 16-bit,
tiny, EXIF-rotated, huge, poisoned, unicode and spaces in names). Tests build theirs from
the same functions.

    python examples/make_sample.py examples/sample/raw
"""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def character(size: tuple[int, int] = (256, 320), background: tuple | None = (250, 250, 250),
              hue: int = 0) -> Image.Image:
    """A flat-shaded cartoon figure: the kind of image a LoRA dataset holds. `hue` picks the
    hair colour, the pose and where the figure stands, so different values give pictures that
    are not near-duplicates of each other."""
    w, h = size
    mode = "RGB" if background else "RGBA"
    img = Image.new(mode, size, background or (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    hair = [(200, 60, 60), (60, 90, 200), (60, 160, 80), (150, 90, 40)][hue % 4]
    fs = 0.55 + 0.45 * ((hue * 0.37) % 1)  # figure size, as a fraction of the image
    ox = ((hue * 0.71) % 1) * (1 - fs) * w  # where it stands
    oy = ((hue * 0.53) % 1) * (1 - fs) * h

    def xy(fx: float, fy: float) -> tuple[float, float]:
        return ox + fx * fs * w, oy + fy * fs * h

    head = 0.2 + (hue % 3) * 0.03
    arm = 0.5 + ((hue * 5) % 4) * 0.08
    line = (40, 30, 30)
    d.ellipse([*xy(.5 - head, .08), *xy(.5 + head, .42)], fill=(255, 220, 190), outline=line, width=3)
    d.pieslice([*xy(.46 - head, .02), *xy(.54 + head, .40)], 180, 360, fill=hair, outline=line, width=3)
    d.ellipse([*xy(.38, .22), *xy(.46, .28)], fill=(30, 30, 80))
    d.ellipse([*xy(.54, .22), *xy(.62, .28)], fill=(30, 30, 80))
    d.polygon([xy(.28, .95), xy(.5, .42), xy(.72, .95)], fill=hair, outline=line)
    d.line([xy(.15, arm), xy(.85, arm + .1 - (hue % 2) * .2)], fill=line, width=max(1, w // 64))
    return img


def poison(img: Image.Image, strength: float = 6.0, seed: int = 0) -> Image.Image:
    """Add noise like Glaze/Nightshade's: dense, mid/high frequency, over the whole image.
    (Not the real perturbation, which needs the attacked model; it has the same visible
    signature the guide describes, "JPEG-like artifacts all over".)"""
    rng = np.random.default_rng(seed)
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    noise = rng.normal(0, strength, arr.shape[:2] + (1,)) + rng.normal(0, strength / 2, arr.shape)
    yy, xx = np.mgrid[0:arr.shape[0], 0:arr.shape[1]]
    noise += (strength / 2) * np.sign(np.sin(xx * 1.9 + yy * 0.7))[..., None]
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8), "RGB")


# --- a toy CMYK ICC profile -------------------------------------------------------------------
# No CMYK profile can be made with Pillow, and the real ones are not ours to ship, so the sample
# writes a minimal ICC v2 printer profile: a lut16 A2B0 table over the 16 CMYK corners. Its paper
# white is deliberately warm (Lab 96, 0, 12), so a colour-managed conversion is told apart from
# Pillow's naive one (which makes zero ink pure white).

PAPER_LAB = (96.0, 0.0, 12.0)


def _srgb_to_lab(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    lin = [((c / 255 + 0.055) / 1.055) ** 2.4 if c / 255 > 0.04045 else c / 255 / 12.92 for c in rgb]
    x = (0.4360 * lin[0] + 0.3851 * lin[1] + 0.1431 * lin[2]) / 0.9642  # D50-adapted sRGB
    y = 0.2225 * lin[0] + 0.7169 * lin[1] + 0.0606 * lin[2]
    z = (0.0139 * lin[0] + 0.0971 * lin[1] + 0.7141 * lin[2]) / 0.8249
    f = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in (x, y, z)]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def _tag(sig: bytes, data: bytes) -> tuple[bytes, bytes]:
    return sig, data + b"\0" * (-len(data) % 4)


def toy_cmyk_profile() -> bytes:
    clut = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    if not (c or m or y or k):
                        lab = PAPER_LAB
                    else:
                        rgb = tuple(255 * (1 - ink) * (1 - k) for ink in (c, m, y))
                        lab = _srgb_to_lab(rgb)
                    clut += [round(lab[0] / 100 * 0xFF00), round((lab[1] + 128) * 256),
                             round((lab[2] + 128) * 256)]
    clut = [min(max(v, 0), 0xFFFF) for v in clut]
    ident = [0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x10000]
    lut = (b"mft2" + b"\0" * 4 + bytes([4, 3, 2, 0]) + struct.pack(">9i", *ident)
           + struct.pack(">HH", 2, 2) + struct.pack(">8H", *([0, 0xFFFF] * 4))
           + struct.pack(f">{len(clut)}H", *clut) + struct.pack(">6H", *([0, 0xFFFF] * 3)))
    text = b"lorakit toy CMYK"
    desc = (b"desc" + b"\0" * 4 + struct.pack(">I", len(text) + 1) + text + b"\0"
            + b"\0" * 8 + b"\0" * 3 + b"\0" * 67)
    tags = [
        _tag(b"desc", desc),
        _tag(b"cprt", b"text" + b"\0" * 4 + b"public domain\0"),
        _tag(b"wtpt", b"XYZ " + b"\0" * 4 + struct.pack(">3i", 63190, 65536, 54061)),
        _tag(b"A2B0", lut),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"prtr"
              + b"CMYK" + b"Lab " + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + struct.pack(">3i", 63190, 65536, 54061) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + body


def cmyk_jpeg(img: Image.Image, with_profile: bool = True) -> bytes:
    out = io.BytesIO()
    extra = {"icc_profile": toy_cmyk_profile()} if with_profile else {}
    img.convert("CMYK").save(out, "JPEG", quality=92, **extra)
    return out.getvalue()


def grey16(size: tuple[int, int] = (200, 160)) -> Image.Image:
    """A 16-bit greyscale gradient (mode I;16): Pillow's plain convert("RGB") turns it white."""
    w, h = size
    ramp = np.tile(np.linspace(0, 65535, w, dtype=np.float64), (h, 1))
    return Image.fromarray(ramp.astype(np.uint16))  # Pillow picks I;16 for uint16


def exif_rotated_jpeg(img: Image.Image, orientation: int = 6) -> bytes:
    """Stored sideways with an EXIF orientation tag, as phone cameras do (6 = rotate 90 CW)."""
    stored = img.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=92, exif=exif.tobytes())
    return out.getvalue()


def animated_gif(frames: int = 3) -> bytes:
    images = [character((160, 200), hue=i).convert("P", palette=Image.Palette.ADAPTIVE)
              for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=200, loop=0)
    return out.getvalue()


def write_sample(root: Path) -> list[Path]:
    """The demo's raw folder: one concept folder in kohya's `N_name` layout."""
    folder = root / "10_kitchan"
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "01 webp from a wiki.webp": lambda p: character(hue=1).save(p, "WEBP", quality=90),
        "02_transparent.png": lambda p: character(background=None, hue=2).save(p),
        "03_animated.gif": lambda p: p.write_bytes(animated_gif()),
        "04_cmyk_print.jpg": lambda p: p.write_bytes(cmyk_jpeg(character(hue=4))),
        "05_16bit_scan.png": lambda p: grey16().save(p),
        "06_tiny.png": lambda p: character((48, 60), hue=5).save(p),
        "07_phone_photo.jpg": lambda p: p.write_bytes(exif_rotated_jpeg(character(hue=6))),
        "08_glazed.png": lambda p: poison(character(hue=7)).save(p),
        "09 ünïcode & spaces.png": lambda p: character(hue=8).save(p),
        "10_huge_scan.jpg": lambda p: character((3600, 2400), hue=9).save(p, "JPEG", quality=80),
    }
    written = []
    for name, make in files.items():
        path = folder / name
        make(path)
        written.append(path)
    (folder / "01 webp from a wiki.txt").write_text("kitchan, 1girl, red hair\n", encoding="utf-8")
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/sample/raw")
    for path in write_sample(target):
        print(path, f"{path.stat().st_size / 1024:.0f} KiB")
