"""The training data: images in buckets, captions as kohya prepares them, batches that never mix
buckets. Every random choice is drawn from a generator seeded by (seed, epoch), so the data of
any epoch can be rebuilt exactly on resume without saving a random state."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from lorakit.captions import caption_file
from lorakit.images import flatten, load_image, read_header
from train.buckets import assign
from train.config import Config
from train.plan import Subset, subsets
from train.templates import filewords_from_name


@dataclass(frozen=True)
class Item:
    image: Path
    caption: str
    bucket: tuple[int, int]
    repeats: int
    is_reg: bool


def load_items(config: Config) -> list[Item]:
    data = config.data
    items = []
    for s in subsets(config):
        for image in s.images:
            header = read_header(image)
            bucket = assign((header.width, header.height), s.resolution, data.min_bucket_reso,
                            data.max_bucket_reso, data.bucket_reso_steps, not data.bucket_no_upscale) \
                if data.enable_bucket else s.resolution
            items.append(Item(image, _caption_text(image, s, config), bucket, s.repeats, s.is_reg))
    return items


def _caption_text(image: Path, subset: Subset, config: Config) -> str:
    found = caption_file(image, subset.caption_extension)
    if found:
        lines = found.read_text(encoding="utf-8-sig", errors="replace").strip().splitlines()
        if lines and lines[0].strip():
            return lines[0].strip()
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


def caption_for_step(text: str, config: Config, rng: random.Random, epoch: int) -> str:
    """kohya's order: prefix/suffix, caption dropout, then shuffle past the kept tokens (or past
    the keep separator) with tag dropout."""
    d = config.data
    text = f"{d.caption_prefix}{text}{d.caption_suffix}"
    if d.caption_dropout_rate and rng.random() < d.caption_dropout_rate:
        return ""
    if d.caption_dropout_every_n_epochs and epoch % d.caption_dropout_every_n_epochs == 0:
        return ""
    if not d.shuffle_caption and not d.caption_tag_dropout_rate:
        return text
    if d.keep_tokens_separator and d.keep_tokens_separator in text:
        head, tail = text.split(d.keep_tokens_separator, 1)
        fixed = [t.strip() for t in head.split(",") if t.strip()]
        rest = [t.strip() for t in tail.split(",") if t.strip()]
    else:
        tags = [t.strip() for t in text.split(",") if t.strip()]
        fixed, rest = tags[:d.keep_tokens], tags[d.keep_tokens:]
    if d.shuffle_caption:
        rng.shuffle(rest)
    if d.caption_tag_dropout_rate:
        rest = [t for t in rest if rng.random() >= d.caption_tag_dropout_rate]
    return ", ".join(fixed + rest)


def epoch_batches(items: list[Item], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices into `items`, in batches of one bucket each, in an order fixed by (seed, epoch).
    Regularisation images are repeated until they match the training images, as kohya does."""
    rng = random.Random(seed * 1_000_003 + epoch)
    train = [i for i, it in enumerate(items) for _ in range(it.repeats) if not it.is_reg]
    reg_pool = [i for i, it in enumerate(items) for _ in range(it.repeats) if it.is_reg]
    reg = [reg_pool[k % len(reg_pool)] for k in range(len(train))] if reg_pool else []
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i in train + reg:
        by_bucket.setdefault(items[i].bucket, []).append(i)
    batches = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        rng.shuffle(members)
        batches += [members[k:k + batch_size] for k in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    return batches
