"""`curate flip`, `curate crop` and `curate split`: what the training guide does by hand in an
image editor. Each is a folder-to-folder stage: DST gets every image of SRC, changed where asked
and copied otherwise, with its captions.

- flip: mirror the chosen images (the guide's fix for an asymmetric subject drawn facing the
  wrong way; kohya's flip_aug would mirror every image, asymmetric or not);
- crop: cut boxes listed in a CSV or JSON file (subject detection is out of scope);
- split: cut reference sheets and very wide scans into a grid of tiles (`--tiles 2x1`), or each
  image wider or taller than `--auto` times the other side into near-square pieces.

An image cut into several pieces keeps its name for the first and gets `-2`, `-3`… for the
others, each with a copy of its captions.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from PIL import Image, ImageOps

from lorakit.engine import Result, Stage, Task, with_params
from lorakit.errors import UserError
from lorakit.fsio import copy_file, write_text
from lorakit.images import (
    IMAGE_SUFFIXES,
    ImageError,
    check_file,
    load_image,
    natural_format,
    natural_output_name,
    save_image,
)
from lorakit.report import COPIED, Report, Section

Box = tuple[int, int, int, int]  # left, top, right, bottom, in pixels (right and bottom excluded)
# A split that would cut a tile narrower than this refuses the image: a grid finer than the image
# (`--tiles 100x100` on a 64 px image) leaves slivers and empty tiles, nothing to train on.
MIN_TILE = 16


def matches(pattern: str, rel: Path) -> bool:
    """A path relative to SRC, a file name, or a stem; shell wildcards allowed."""
    pattern = pattern.strip().replace("\\", "/")
    return any(fnmatch(candidate, pattern) for candidate in (rel.as_posix(), rel.name, rel.stem))


def chosen(patterns: list[str], tasks: list[Task]) -> tuple[set[Path], list[str]]:
    """The tasks' paths some pattern names, and the patterns that name nothing (a typo)."""
    picked = {t.rel for t in tasks if any(matches(p, t.rel) for p in patterns)}
    unmatched = [p for p in patterns if not any(matches(p, t.rel) for t in tasks)]
    return picked, unmatched


def grid(size: tuple[int, int], columns: int, rows: int) -> list[Box]:
    """Row by row; the last column and row take the remainder, so no pixel is lost."""
    width, height = size
    xs = [round(i * width / columns) for i in range(columns + 1)]
    ys = [round(j * height / rows) for j in range(rows + 1)]
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(rows) for i in range(columns)]


def auto_grid(size: tuple[int, int], ratio: float) -> list[Box]:
    """Images whose long side exceeds `ratio` x the short one: as many near-square pieces along
    the long side as fit; the others stay whole."""
    width, height = size
    long, short = max(width, height), min(width, height)
    if long < ratio * short:
        return [(0, 0, width, height)]
    pieces = max(2, round(long / short))
    return grid(size, pieces, 1) if width >= height else grid(size, 1, pieces)


def piece_path(dst: Path, k: int) -> Path:
    return dst if k == 0 else dst.with_name(f"{dst.stem}-{k + 1}{dst.suffix}")


def _check_free(task: Task, count: int) -> None:
    """`a-2.png` must not be another source image's output (it would be overwritten)."""
    for k in range(1, count):  # a few existence checks per piece, not a listing of the folder per image
        stem = piece_path(task.src, k).stem
        taken = [p for suffix in IMAGE_SUFFIXES for p in (task.src.with_name(stem + suffix),
                                                          task.src.with_name(stem + suffix.upper())) if p.is_file()]
        if taken:
            raise ValueError(f"its piece {stem} would overwrite the output of {taken[0].name}; rename one of them")


def write_pieces(task: Task, img: Image.Image, boxes: list[Box]) -> Result:
    """Piece 0 goes where the engine expects (it carries the captions); the rest beside it."""
    _check_free(task, len(boxes))
    for k, box in enumerate(boxes):
        dst = piece_path(task.dst, k)
        save_image(img.crop(box), dst, natural_format(task.dst))
        if k:
            for caption in task.captions:
                copy_file(caption, dst.with_suffix(caption.suffix))
    return Result(details={"pieces": len(boxes), "boxes": [list(b) for b in boxes]})


class GeometryStage(Stage):
    def output_name(self, rel: Path) -> Path:
        return natural_output_name(rel)

    def keep(self, task: Task) -> Result:
        """Copied as it is, once it is known to be a whole, readable image (a broken file fails)."""
        check_file(task.src, self.max_pixels)
        return self.pass_through(task)

    def finish(self, report: Report) -> None:
        changed = [o for o in report.outcomes if o.status != COPIED and o.details.get("pieces")]
        report.sections.append(Section(f"{self.name}: images changed", ["image", "pieces"],
                                       [[o.path, o.details["pieces"]] for o in changed]))


@dataclass
class FlipStage(GeometryStage):
    only: tuple[str, ...] = ()  # empty: every image
    swap_sides: bool = False
    name = "flip"

    def assign(self, tasks: list[Task]) -> list[Task]:
        if not self.only:
            return [with_params(t, True) for t in tasks]
        picked, unmatched = chosen(list(self.only), tasks)
        if unmatched:
            raise UserError(f"--only names no image: {', '.join(unmatched)}")
        return [with_params(t, t.rel in picked) for t in tasks]

    def process(self, task: Task) -> Result:
        if not task.params:
            return self.keep(task)
        save_image(ImageOps.mirror(load_image(task.src, self.max_pixels)), task.dst, natural_format(task.dst))
        if not self.swap_sides:
            return Result(details={"pieces": 1})
        for caption in task.captions:
            text = caption.read_text(encoding="utf-8-sig", errors="replace")
            write_text(task.dst.with_suffix(caption.suffix), swap_sides(text))
        return Result(details={"pieces": 1}, captions_written=True)


def swap_sides(text: str) -> str:
    """A mirrored image's caption: `hair over left eye` becomes `hair over right eye`."""
    return re.sub(r"\b(left|right)\b", lambda m: "right" if m[1] == "left" else "left", text)


@dataclass
class CropStage(GeometryStage):
    boxes: dict[str, list[Box]] | None = None  # pattern -> boxes
    name = "crop"

    def assign(self, tasks: list[Task]) -> list[Task]:
        found = {}
        for pattern in self.boxes or {}:
            hits = [t.rel for t in tasks if matches(pattern, t.rel)]
            if not hits:
                raise UserError(f"the boxes file names no image: {pattern}")
            for rel in hits:
                found.setdefault(rel, []).extend(self.boxes[pattern])
        return [with_params(t, found.get(t.rel)) for t in tasks]

    def process(self, task: Task) -> Result:
        if not task.params:
            return self.keep(task)
        img = load_image(task.src, self.max_pixels)
        for box in task.params:
            left, top, right, bottom = box
            if not (0 <= left < right <= img.width and 0 <= top < bottom <= img.height):
                raise ImageError(f"box {list(box)} is not inside the {img.width}x{img.height} image")
        return write_pieces(task, img, task.params)


@dataclass
class SplitStage(GeometryStage):
    columns: int = 0  # with rows: a fixed grid
    rows: int = 0
    auto: float | None = None  # or: split images longer than this ratio
    name = "split"

    def process(self, task: Task) -> Result:
        img = load_image(task.src, self.max_pixels)
        boxes = grid(img.size, self.columns, self.rows) if self.auto is None else auto_grid(img.size, self.auto)
        if len(boxes) == 1:
            return self.pass_through(task, img)
        width, height = min(((right - left, bottom - top) for left, top, right, bottom in boxes), key=min)
        if min(width, height) < MIN_TILE:
            hint = "ask for fewer tiles" if self.auto is None else "too thin to cut into near-squares"
            raise ImageError(f"not split: {img.width}x{img.height} px in {len(boxes)} tiles would leave "
                             f"{width}x{height} px tiles, smaller than {MIN_TILE} px; {hint}")
        return write_pieces(task, img, boxes)


def parse_tiles(text: str) -> tuple[int, int]:
    try:
        columns, rows = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--tiles {text!r}: write COLUMNSxROWS, e.g. 2x1") from None
    if columns < 1 or rows < 1 or columns * rows < 2:
        raise UserError(f"--tiles {text!r}: at least two tiles (2x1, 1x2, 3x2…)")
    return columns, rows


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise UserError(f"{path}: no such {what}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); "
                        f"the {what} is text") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def read_names(path: Path) -> list[str]:
    """`--only-from`: one image per line (a path under SRC, a name or a stem; wildcards allowed)."""
    return [line.strip() for line in _read_text(path, "list of images").splitlines() if line.strip()]


def read_boxes(path: Path) -> dict[str, list[Box]]:
    """CSV with a header `image,left,top,right,bottom` (a row per box), or JSON
    `{"image": [l, t, r, b]}` / `{"image": [[l, t, r, b], …]}`; pixels, right and bottom excluded."""
    boxes: dict[str, list[Box]] = {}
    text = _read_text(path, "boxes file")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected an object of image -> box(es)")
        for image, value in data.items():
            listed = value if value and isinstance(value[0], list) else [value]
            boxes[image] = [_box(b, f"{path}: {image}") for b in listed]
        return boxes
    rows = list(csv.DictReader(text.splitlines()))
    needed = {"image", "left", "top", "right", "bottom"}
    if not rows or not needed <= set(rows[0]):
        raise UserError(f"{path}: a CSV with the header image,left,top,right,bottom")
    for n, row in enumerate(rows, start=2):
        boxes.setdefault(row["image"], []).append(
            _box([row[k] for k in ("left", "top", "right", "bottom")], f"{path} line {n}"))
    return boxes


def _box(values, where: str) -> Box:
    try:
        box = tuple(int(float(v)) for v in values)
    except (TypeError, ValueError):
        raise UserError(f"{where}: a box is four pixel numbers, not {values!r}") from None
    if len(box) != 4 or box[0] >= box[2] or box[1] >= box[3]:
        raise UserError(f"{where}: {list(values)} is not left, top, right, bottom with left < right, top < bottom")
    return box


def auto_ratio(value: float) -> float:
    if not math.isfinite(value) or value <= 1:
        raise UserError(f"--auto {value}: a ratio above 1 (2: split images twice as long as they are wide)")
    return value
