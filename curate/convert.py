"""`curate convert`: any readable format to PNG, JPEG or WebP, normalised to 8-bit sRGB."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from lorakit.curate.colors import Color
from lorakit.curate.flatten import flatten
from lorakit.engine import Result, Stage, Task
from lorakit.images import OUTPUT_FORMATS, ImageError, load_image, save_image


def convert_image(img: Image.Image, alpha_ok: bool, background: Color | None) -> Image.Image:
    """Transparency survives where the format holds it; elsewhere it needs a background."""
    if img.mode == "RGBA" and not alpha_ok:
        if background is None:
            raise ImageError("has transparency, which JPEG cannot hold: pass --background "
                             "white (or any colour), or convert to png and run curate flatten")
        return flatten(img, background)
    return img


@dataclass
class ConvertStage(Stage):
    format: str = "png"
    quality: int = 95
    background: Color | None = None
    name = "convert"

    def output_name(self, rel: Path) -> Path:
        return rel.with_suffix(OUTPUT_FORMATS[self.format].suffix)

    def process(self, task: Task) -> Result:
        fmt = OUTPUT_FORMATS[self.format]
        img = convert_image(load_image(task.src, self.max_pixels), fmt.alpha, self.background)
        save_image(img, task.dst, fmt, self.quality)
        return Result(details={"width": img.width, "height": img.height, "mode": img.mode})
