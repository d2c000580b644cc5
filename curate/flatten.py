"""`curate flatten`: composite transparency onto solid backgrounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorakit.curate.colors import Color, background_tag
from lorakit.engine import Result, Stage, Task, with_params
from lorakit.images import (
    ImageError,
    check_file,
    flatten,
    load_image,
    natural_format,
    natural_output_name,
    read_header,
    save_image,
)


def _has_alpha(path: Path, max_pixels: int) -> bool:
    try:
        return read_header(path, max_pixels).has_alpha
    except (ImageError, OSError):
        return False  # the error is reported when the image itself is processed


@dataclass
class FlattenStage(Stage):
    colors: list[Color] = field(default_factory=lambda: [(255, 255, 255)])
    tag_background: bool = False
    name = "flatten"

    def output_name(self, rel: Path) -> Path:
        return natural_output_name(rel)

    def assign(self, tasks: list[Task]) -> list[Task]:
        """With several colours, transparent images take them in turn, in sorted path order, so
        every run gives each image the same colour. Only transparent images take a turn (read
        from the header, without decoding), so the colours stay balanced."""
        if len(self.colors) == 1:
            return [with_params(t, self.colors[0]) for t in tasks]
        assigned, turn = [], 0
        for task in tasks:
            color = None
            if _has_alpha(task.src, self.max_pixels):
                color = self.colors[turn % len(self.colors)]
                turn += 1
            assigned.append(with_params(task, color or self.colors[0]))
        return assigned

    def process(self, task: Task) -> Result:
        if task.dst.suffix == task.src.suffix and not check_file(task.src, self.max_pixels).has_alpha:
            return self.pass_through(task, message="opaque")  # without decoding it
        img = load_image(task.src, self.max_pixels)
        if img.mode != "RGBA":  # no alpha, or an alpha channel that hides nothing
            return self.pass_through(task, img, "opaque")
        save_image(flatten(img, task.params), task.dst, natural_format(task.dst))
        tag = background_tag(task.params)
        return Result(details={"background": tag},
                      caption_tags=(tag,) if self.tag_background else ())
