"""`tag balance`: repeats per concept folder so that every concept gets as many training steps
per epoch as the largest (the training guide, multi-concept section): target steps = largest
folder's images x base repeats; each folder's repeats = round(target / its images)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

from lorakit.captions import parse_repeats_folder
from lorakit.discovery import check_source, discover
from lorakit.errors import UserError

PASSES = {"sd15": 100, "sdxl": 50}  # the guide's aim: ~100 passes over each image (SDXL ~50)


@dataclass
class Concept:
    folder: Path
    name: str
    images: int
    repeats: int = 1
    regularisation: bool = False

    @property
    def steps(self) -> int:
        return self.images * self.repeats

    @property
    def new_name(self) -> str:
        return f"{self.repeats}_{self.name}"


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)  # 11.5 -> 12, not Python's banker's 12/11


def repeats_for(images: list[int], base_repeats: int, reduce_common: bool = False) -> list[int]:
    target = max(images) * base_repeats
    repeats = [max(1, round_half_up(target / n)) for n in images]
    if reduce_common:
        divisor = reduce(math.gcd, repeats)
        repeats = [r // divisor for r in repeats]
    return repeats


def concepts(root: Path, regularisation: bool = False) -> list[Concept]:
    """Every sub-folder of `root` that holds images (at any depth) is a concept."""
    root = check_source(root)
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        count = len(discover(child))
        if count:
            parsed = parse_repeats_folder(child.name)
            name = parsed[1] if parsed else child.name
            found.append(Concept(child, name, count, parsed[0] if parsed else 1, regularisation))
    if not found:
        raise UserError(f"no concept folders with images under {root} (expected {root}/10_name/...)")
    return found


def balance(train: list[Concept], reg: list[Concept], base_repeats: int, reduce_common: bool) -> None:
    """Set repeats in place. Regularisation folders together match the training total."""
    for concept, r in zip(train, repeats_for([c.images for c in train], base_repeats, reduce_common)):
        concept.repeats = r
    if reg:
        total = sum(c.steps for c in train)
        for concept in reg:
            concept.repeats = max(1, round_half_up(total / len(reg) / concept.images))


def apply_names(all_concepts: list[Concept]) -> list[tuple[Path, Path]]:
    """Rename folders to `N_name`; refuse before renaming anything if a target exists."""
    moves = [(c.folder, c.folder.with_name(c.new_name)) for c in all_concepts
             if c.folder.name != c.new_name]
    for _, target in moves:
        if target.exists():
            raise UserError(f"cannot rename to {target}: it already exists")
    for source, target in moves:
        os.rename(source, target)  # atomic on one filesystem
    return moves


def dataset_toml(train: list[Concept], reg: list[Concept], resolution: int, batch_size: int) -> str:
    """A kohya-style dataset config (`--dataset_config`), using the folders as they are."""
    lines = ["# written by `tag balance`", "[general]", 'caption_extension = ".txt"', "",
             "[[datasets]]", f"resolution = {resolution}", f"batch_size = {batch_size}", ""]
    for c in train + reg:
        lines += ["  [[datasets.subsets]]", f"  image_dir = {str(c.folder.resolve())!r}".replace("'", '"'),
                  f"  num_repeats = {c.repeats}", f'  class_tokens = "{c.name}"']
        if c.regularisation:
            lines.append("  is_reg = true")
        lines.append("")
    return "\n".join(lines)
