"""The `curate upscale` stage: enlarge small images with a super-resolution network."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lorakit.curate.upscale.inference import Upscaler, load_upscaler
from lorakit.engine import Result, Stage, Task
from lorakit.images import load_image, natural_format, natural_output_name, save_image


@dataclass
class UpscaleSettings:
    model: str
    device: str = "auto"
    precision: str = "auto"
    tile: int = 512
    tile_pad: int = 10
    pre_pad: int = 0

    def load(self) -> Upscaler:
        return load_upscaler(self.model, self.device, self.precision, self.tile,
                             self.tile_pad, self.pre_pad)


def upscale_image(img: Image.Image, upscaler: Upscaler, scale: float | None = None,
                  downscale_first: float = 1.0) -> Image.Image:
    """Optionally shrink first (the guide's poison-cleaning recipe), run the network, and land
    on `scale` x the original size (the network's own scale when None)."""
    width, height = img.size
    if downscale_first != 1.0:
        small = (max(1, round(width * downscale_first)), max(1, round(height * downscale_first)))
        img = img.resize(small, Image.LANCZOS)
    factor = scale if scale is not None else upscaler.scale * downscale_first
    target = (int(width * factor), int(height * factor))
    return upscaler.upscale(img, target)


@dataclass
class UpscaleStage(Stage):
    settings: UpscaleSettings = field(default_factory=lambda: UpscaleSettings("RealESRGAN_x4plus"))
    scale: float | None = None
    only_below: int | None = None
    downscale_first: float = 1.0
    name = "upscale"
    parallel = False  # torch already uses every core; the model is loaded once

    def __post_init__(self) -> None:
        self._upscaler: Upscaler | None = None

    def prepare(self) -> None:
        self._upscaler = self.settings.load()

    def output_name(self, rel: Path) -> Path:
        return natural_output_name(rel)

    def process(self, task: Task) -> Result:
        img = load_image(task.src, self.max_pixels)
        if self.only_below and min(img.size) >= self.only_below:
            return self.pass_through(task, img, f"short side >= {self.only_below}")
        out = upscale_image(img, self._upscaler, self.scale, self.downscale_first)
        save_image(out, task.dst, natural_format(task.dst))
        return Result(details={"width": out.width, "height": out.height})
