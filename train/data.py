"""The training data: which images train (the `N_name` folders or kohya `[[datasets]]`), their
buckets and captions, and the batches of each epoch. `train plan` and `train run` both count and
batch through here, so they always agree.

Batches follow kohya: a dataset (all `N_name` folders under data.image_root are one; each
`[[datasets]]` table is one) pools its subsets' images by bucket, so a batch never mixes buckets
or datasets, and an epoch holds, per dataset and bucket, ceil(images x repeats / batch size)
batches. Regularisation images are reused until they match the training images. Every random
choice is drawn from a seed derived from (seed, epoch) (train/seeds.py), so any epoch's data can
be rebuilt exactly on resume without saving a random state."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from PIL import Image

from lorakit.captions import caption_files, parse_repeats_folder
from lorakit.discovery import discover
from lorakit.errors import UserError
from lorakit.images import ImageError, flatten, load_image, read_header
from lorakit.train import seeds
from lorakit.train.buckets import assign
from lorakit.train.caption_lines import caption_lines
from lorakit.train.subset_options import Augment, Buckets, CaptionOptions, augment, buckets, caption_options
from lorakit.train.templates import filewords_from_name

if TYPE_CHECKING:  # the config imports the registries, one of which (sampling) imports this module
    from lorakit.train.config import Config


@dataclass
class Subset:
    """One folder of images: an `N_name` folder, or a `[[datasets.subsets]]` table."""
    folder: Path
    repeats: int
    token: str | None
    is_reg: bool
    resolution: tuple[int, int]
    batch_size: int
    caption_extension: str
    dataset: int = 0  # 0: the N_name folders of data.image_root / reg_root; k: the k-th [[datasets]]
    images: list[Path] = field(default_factory=list)
    captions: CaptionOptions = CaptionOptions()  # its own, or its dataset's, or [data]'s
    augment: Augment = Augment()
    buckets: Buckets = Buckets()


@dataclass(frozen=True)
class Item:
    image: Path
    caption: str
    bucket: tuple[int, int]
    repeats: int
    is_reg: bool
    batch_size: int = 1
    dataset: int = 0
    captions: CaptionOptions = CaptionOptions()
    augment: Augment = Augment()
    # the caption file's non-blank lines, when its options train more than line 1 (enable_wildcard,
    # caption_recipe: train/caption_lines.py); () otherwise: `caption` is all that trains
    lines: tuple[str, ...] = ()
    token: str | None = None  # the folder's class tokens (a recipe's {trigger})


def resolution_pair(resolution: int | list[int]) -> tuple[int, int]:
    return (resolution, resolution) if isinstance(resolution, int) else (resolution[0], resolution[-1])


def subsets(config: Config) -> list[Subset]:
    """The folders that train, each with its images (sorted, hidden and lorakit's own skipped)."""
    data = config.data
    found: list[Subset] = []
    for root, is_reg in ((data.image_root, False), (data.reg_root, True)):
        if not root:
            continue
        root_path = Path(root)
        if not root_path.is_dir():
            raise UserError(f"data.{'reg_root' if is_reg else 'image_root'}: {root} is not a folder")
        for child in sorted(p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            parsed = parse_repeats_folder(child.name)
            if parsed is None:
                continue
            found.append(Subset(child, parsed[0], parsed[1], is_reg, resolution_pair(data.resolution),
                                data.batch_size, data.caption_extension, captions=caption_options(data),
                                augment=augment(data), buckets=buckets(data)))
    for k, dataset in enumerate(config.datasets, 1):
        for s in dataset.subsets:
            found.append(Subset(Path(s.image_dir), s.num_repeats, s.class_tokens, s.is_reg,
                                resolution_pair(dataset.resolution or data.resolution),
                                dataset.batch_size or data.batch_size,
                                s.caption_extension or dataset.caption_extension or data.caption_extension, dataset=k,
                                captions=caption_options(data, s, dataset), augment=augment(data, s, dataset),
                                buckets=buckets(data, dataset)))
    if not [s for s in found if not s.is_reg]:
        raise UserError("no training images: set data.image_root (with N_name folders below it) "
                        "or [[datasets]] with [[datasets.subsets]]")
    for s in found:
        if not s.folder.is_dir():
            raise UserError(f"{s.folder} is not a folder")
        s.images = [s.folder / rel for rel in discover(s.folder)]
    return found


def bucket_of(size: tuple[int, int], subset: Subset, config: Config) -> tuple[int, int]:
    b = subset.buckets
    if not b.enable:
        return subset.resolution
    return assign(size, subset.resolution, b.min_reso, b.max_reso, b.reso_steps, not b.no_upscale)


def load_items(config: Config, found: list[Subset] | None = None, on_error=None) -> list[Item]:
    """Every image of every subset, with its bucket and caption. An unreadable image stops the
    run naming it, or, with `on_error(subset, image, message)` (train plan), is reported and
    left out."""
    items = []
    for s in subsets(config) if found is None else found:
        for image in s.images:
            try:
                header = read_header(image)
            except ImageError as exc:
                if on_error is None:
                    raise UserError(f"{image}: {exc}") from None
                on_error(s, image, str(exc))
                continue
            text = caption_file_text(image, s)
            items.append(Item(image, trained_caption(text, image, s, config),
                              bucket_of((header.width, header.height), s, config), s.repeats, s.is_reg, s.batch_size,
                              s.dataset, s.captions, s.augment,
                              caption_lines(text) if s.captions.reads_lines() else (), s.token))
    return items


def caption_path(image: Path, extension: str) -> Path | None:
    """The caption kohya reads: the image's name with its suffix replaced by `extension`, and no
    other (a `.caption` file beside a `.txt` setting is not read: plan says so)."""
    path = image.with_name(image.stem + extension)
    return path if path.is_file() else None


def other_captions(image: Path, extension: str) -> list[Path]:
    """Caption files beside the image that `extension` leaves unread."""
    return [p for p in caption_files(image) if p.suffix != extension]


def caption_file_text(image: Path, subset: Subset) -> str | None:
    found = caption_path(image, subset.caption_extension)
    return found.read_text(encoding="utf-8-sig", errors="replace") if found else None


def trained_caption(text: str | None, image: Path, subset: Subset, config: Config) -> str:
    """What training reads of a caption file's text: its first line (kohya's, read as it is: a
    blank first line is no caption, as every lorakit stage reads it, never the line after it);
    with none, the file name's words (textual inversion's template) or the folder's class tokens.
    When further lines train (enable_wildcard, a recipe), its first non-blank line, as kohya's
    enable_wildcard reads the file (the other lines are Item.lines)."""
    lines = caption_lines(text) if subset.captions.reads_lines() else ()
    first = lines[0] if lines else text.split("\n", 1)[0].strip() if text else ""
    if first:
        return first
    if config.data.template:  # textual inversion's [filewords]: the file name's words
        return filewords_from_name(image, config.data.filewords_regex, config.data.filewords_join)
    return subset.token or ""  # no caption: the folder's class tokens, as kohya does


def pixels(item: Item, rng: random.Random | None = None, random_crop: bool = False,
           color_aug: bool = False, flip: bool = False) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """The image scaled to cover its bucket and cropped (centred, or at a random place with
    random_crop), as [3, H, W] in -1..1, with its original (h, w) and the crop's top-left corner
    (SDXL conditions on both). color_aug: kohya's weak colour change, drawn from `rng`; flip:
    mirrored, and so is the crop's corner."""
    img = flatten(load_image(item.image)).convert("RGB")  # alpha over white
    original = (img.height, img.width)
    bw, bh = item.bucket
    scale = max(bw / img.width, bh / img.height)
    size = (max(bw, round(img.width * scale)), max(bh, round(img.height * scale)))
    img = img.resize(size, Image.LANCZOS if scale > 1 else Image.BICUBIC)
    if random_crop and rng is not None:
        left, top = rng.randint(0, size[0] - bw), rng.randint(0, size[1] - bh)
    else:
        left, top = (size[0] - bw) // 2, (size[1] - bh) // 2
    arr = np.asarray(img.crop((left, top, left + bw, top + bh)), dtype=np.float32)
    if color_aug and rng is not None:
        arr = _color_aug(arr, rng)
    arr = arr / 127.5 - 1.0
    if flip:
        arr, left = arr[:, ::-1], size[0] - left - bw
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1), original, (top, left)


def _color_aug(arr: np.ndarray, rng: random.Random) -> np.ndarray:
    """One time in three: a hue shift of up to 8 of OpenCV's 180 hue steps, or a gamma of
    0.95-1.05; weak on purpose, so the colours the model learns stay the dataset's."""
    if rng.random() > 1 / 3:
        return arr
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(arr.astype(np.uint8), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(rng.uniform(-8, 8))) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    return np.clip(255.0 * (arr / 255.0) ** rng.uniform(0.95, 1.05), 0, 255)


def epoch_batches(items: list[Item], seed: int, epoch: int) -> list[list[int]]:
    """Indices into `items`, in batches of one dataset and one bucket each (of that dataset's batch
    size), in an order fixed by (seed, epoch). Within each dataset, regularisation images are
    repeated (or cut) until they match its training images, as kohya's datasets do."""
    rng = seeds.rng(seed, "batches", epoch)
    pools: dict[tuple[int, tuple[int, int]], list[int]] = {}
    for dataset in sorted({it.dataset for it in items}):
        train = [i for i, it in enumerate(items) for _ in range(it.repeats) if it.dataset == dataset and not it.is_reg]
        reg_pool = [i for i, it in enumerate(items) for _ in range(it.repeats) if it.dataset == dataset and it.is_reg]
        reg = [reg_pool[k % len(reg_pool)] for k in range(len(train))] if reg_pool else []
        for i in train + reg:
            pools.setdefault((dataset, items[i].bucket), []).append(i)
    batches = []
    for key in sorted(pools):
        members = pools[key]
        rng.shuffle(members)
        size = items[members[0]].batch_size
        batches += [members[k:k + size] for k in range(0, len(members), size)]
    rng.shuffle(batches)
    return batches


def steps_per_epoch(items: list[Item], accumulation: int, processes: int = 1) -> int:
    """Optimizer steps in an epoch: each takes `accumulation` batches on each process."""
    return -(-len(epoch_batches(items, 0, 0)) // (accumulation * processes))
