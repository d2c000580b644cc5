"""What each folder may set for itself, as in kohya's dataset configs: a `[[datasets.subsets]]`
table's caption handling and augmentation, falling back to its `[[datasets]]` table's, then to
`[data]` (kohya's `[general]`); a `[[datasets]]` table's bucketing, falling back to `[data]`.
The guide's multi-concept part needs this: flip_aug on the folder of a symmetric subject only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

# the subset options and the DataConfig field each falls back to
CAPTION_KEYS = {"prefix": "caption_prefix", "suffix": "caption_suffix", "shuffle": "shuffle_caption",
                "keep_tokens": "keep_tokens", "keep_tokens_separator": "keep_tokens_separator",
                "dropout_rate": "caption_dropout_rate", "dropout_every_n_epochs": "caption_dropout_every_n_epochs",
                "tag_dropout_rate": "caption_tag_dropout_rate"}
AUGMENT_KEYS = {"flip": "flip_aug", "color": "color_aug", "random_crop": "random_crop"}
BUCKET_KEYS = {"enable": "enable_bucket", "min_reso": "min_bucket_reso", "max_reso": "max_bucket_reso",
               "reso_steps": "bucket_reso_steps", "no_upscale": "bucket_no_upscale"}


@dataclass(frozen=True)
class CaptionOptions:
    prefix: str = ""
    suffix: str = ""
    shuffle: bool = True
    keep_tokens: int = 1
    keep_tokens_separator: str = ""
    dropout_rate: float = 0.0
    dropout_every_n_epochs: int = 0
    tag_dropout_rate: float = 0.0

    def varying(self) -> list[str]:
        """The options that give a caption another text at another step."""
        return [f"data.{CAPTION_KEYS[k]}" for k in ("shuffle", "dropout_rate", "dropout_every_n_epochs",
                                                    "tag_dropout_rate") if getattr(self, k)]


@dataclass(frozen=True)
class Augment:
    flip: bool = False
    color: bool = False
    random_crop: bool = False

    def per_step(self) -> bool:
        """Pixels that change at every step: no latent can be cached for them."""
        return self.color or self.random_crop


@dataclass(frozen=True)
class Buckets:
    enable: bool = True
    min_reso: int = 256
    max_reso: int = 1024
    reso_steps: int = 64
    no_upscale: bool = False


def _resolve(kind: type, keys: dict[str, str], data: Any, *tables: Any) -> Any:
    """Each option from the first table that sets it (not None), else from `data`."""
    values = {}
    for name, key in keys.items():
        value = next((getattr(t, key) for t in tables if t is not None and getattr(t, key, None) is not None), None)
        values[name] = getattr(data, key) if value is None else value
    return kind(**values)


def caption_options(data: Any, *tables: Any) -> CaptionOptions:
    return _resolve(CaptionOptions, CAPTION_KEYS, data, *tables)


def augment(data: Any, *tables: Any) -> Augment:
    return _resolve(Augment, AUGMENT_KEYS, data, *tables)


def buckets(data: Any, *tables: Any) -> Buckets:
    return _resolve(Buckets, BUCKET_KEYS, data, *tables)


def own_options(subset: Any, data: Any) -> str:
    """What a folder sets unlike [data] (`train plan` shows it), as config keys: "flip_aug = true"."""
    differs = []
    for mine, theirs, keys in ((subset.captions, caption_options(data), CAPTION_KEYS),
                               (subset.augment, augment(data), AUGMENT_KEYS), (subset.buckets, buckets(data), BUCKET_KEYS)):
        for name, key in keys.items():
            value = getattr(mine, name)
            if value != getattr(theirs, name):
                differs.append(f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value)}")
    return ", ".join(differs)


def with_affixes(text: str, prefix: str, suffix: str) -> str:
    """kohya's process_caption: the prefix and the suffix joined to the caption by one space each
    (and only where set), before anything is shuffled."""
    if prefix:
        text = f"{prefix} {text}"
    return f"{text} {suffix}" if suffix else text


def caption_for_step(text: str, options: CaptionOptions, rng: random.Random, epoch: int) -> str:
    """kohya's order: prefix/suffix, caption dropout, then shuffle past the kept tokens (or past
    the keep separator) with tag dropout."""
    o = options
    text = with_affixes(text, o.prefix, o.suffix)
    if o.dropout_rate and rng.random() < o.dropout_rate:
        return ""
    # kohya counts epochs from 1: every 2 drops the 2nd, 4th... (epoch here counts from 0)
    if o.dropout_every_n_epochs and (epoch + 1) % o.dropout_every_n_epochs == 0:
        return ""
    if not o.shuffle and not o.tag_dropout_rate:
        return text
    if o.keep_tokens_separator and o.keep_tokens_separator in text:
        head, tail = text.split(o.keep_tokens_separator, 1)
        fixed = [t.strip() for t in head.split(",") if t.strip()]
        rest = [t.strip() for t in tail.split(",") if t.strip()]
    else:
        tags = [t.strip() for t in text.split(",") if t.strip()]
        fixed, rest = tags[:o.keep_tokens], tags[o.keep_tokens:]
    if o.shuffle:
        rng.shuffle(rest)
    if o.tag_dropout_rate:
        rest = [t for t in rest if rng.random() >= o.tag_dropout_rate]
    return ", ".join(fixed + rest)
