"""What each folder may set for itself, as in kohya's dataset configs: a `[[datasets.subsets]]`
table's caption handling and augmentation, falling back to its `[[datasets]]` table's, then to
`[data]` (kohya's `[general]`); a `[[datasets]]` table's bucketing, falling back to `[data]`.
The guide's multi-concept part needs this: flip_aug on the folder of a symmetric subject only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from lorakit.train.caption_lines import (
    Parts,
    choose_template,
    epoch_line,
    is_sentence,
    resolve_wildcards,
    template_names,
)
from lorakit.train.templates import fill

if TYPE_CHECKING:
    from lorakit.train.data import Item

# the subset options and the DataConfig field each falls back to
CAPTION_KEYS = {"prefix": "caption_prefix", "suffix": "caption_suffix", "shuffle": "shuffle_caption",
                "keep_tokens": "keep_tokens", "keep_tokens_separator": "keep_tokens_separator",
                "dropout_rate": "caption_dropout_rate", "dropout_every_n_epochs": "caption_dropout_every_n_epochs",
                "tag_dropout_rate": "caption_tag_dropout_rate", "wildcard": "enable_wildcard",
                "recipe": "caption_recipe"}
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
    wildcard: bool = False
    recipe: tuple[tuple[str, float], ...] = ()  # (template, weight); () is off

    def varying(self) -> list[str]:
        """The options that give a caption another text at another step (or epoch)."""
        return [f"data.{CAPTION_KEYS[k]}" for k in ("shuffle", "dropout_rate", "dropout_every_n_epochs",
                                                    "tag_dropout_rate", "wildcard", "recipe") if getattr(self, k)]

    def reads_lines(self) -> bool:
        """Whether lines past line 1 can train (else kohya's rule: line 1 only)."""
        return self.wildcard or bool(self.recipe)


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
    options = _resolve(CaptionOptions, CAPTION_KEYS, data, *tables)
    # the config's RecipeTemplate list as plain pairs: the options stay hashable and comparable
    recipe = tuple((r.template, float(r.weight)) for r in options.recipe or ())
    return CaptionOptions(**{**options.__dict__, "recipe": recipe})


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
                differs.append(f"{key} = {_shown(value)}")
    return ", ".join(differs)


def _shown(value: Any) -> str:
    """A value as the config writes it (a recipe's pairs as its table)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{{template = {t!r}, weight = {w:g}}}" for t, w in value) + "]"
    return repr(value)


def with_affixes(text: str, prefix: str, suffix: str) -> str:
    """kohya's process_caption: the prefix and the suffix joined to the caption by one space each
    (and only where set), before anything is shuffled."""
    if prefix:
        text = f"{prefix} {text}"
    return f"{text} {suffix}" if suffix else text


def prompt_text(item: Item, seed: int, rng: random.Random, epoch: int, templates: list[str] | None = None,
                placeholder: str = "", substitute: Callable[[str], str] | None = None) -> str:
    """The text a step encodes for `item`: its caption (item_caption), in a textual-inversion
    template line, with the embeddings' placeholders turned into their tokens. The training loop
    (train/setup.prompt) and `train plan --captions` both call it."""
    text = item_caption(item, seed, rng, epoch)
    if templates:
        text = fill(rng.choice(templates), placeholder, text)
    return substitute(text) if substitute else text


def item_caption(item: Item, seed: int, rng: random.Random, epoch: int) -> str:
    """The caption `item` trains with at one step: with a caption recipe, the template chosen for
    this image and epoch (train/caption_lines.py); with enable_wildcard, the line chosen for it;
    else line 1 (or, without a caption, the file name's words or the class tokens). `rng` is the
    step's generator (dropout, wildcards, shuffle); the per-epoch choices come from `seed`."""
    o = item.captions
    lines = item.lines or ((item.caption,) if item.caption else ())
    if o.recipe:
        parts = Parts.of(lines, item.token, item.image, seed, epoch)
        template = choose_template(o.recipe, parts, item.image, seed, epoch)
        if template is not None:
            return _recipe_caption(template, parts, o, rng, epoch)
    line = epoch_line(lines, item.image, seed, epoch) if o.wildcard and lines else item.caption
    return caption_for_step(line, o, rng, epoch)


def _recipe_caption(template: str, parts: Parts, o: CaptionOptions, rng: random.Random, epoch: int) -> str:
    """A template filled in: {tags} shuffled as a tag line is (the prefix and suffix are tags and
    join it, as kohya's do); without {tags} the prefix and suffix wrap the whole text."""
    if _dropped(o, rng, epoch):
        return ""
    values = {"trigger": parts.trigger or ""}
    if parts.sentence is not None:
        values["sentence"] = resolve_wildcards(parts.sentence, rng) if o.wildcard else parts.sentence
    if "tags" in template_names(template):
        tags = with_affixes(parts.tags, o.prefix, o.suffix)
        values["tags"] = _tag_line(resolve_wildcards(tags, rng) if o.wildcard else tags, o, rng)
        return template.format(**values)
    return _sentence_affixes(template.format(**values), o)


def _dropped(o: CaptionOptions, rng: random.Random, epoch: int) -> bool:
    """Caption dropout: the whole caption is empty this step."""
    if o.dropout_rate and rng.random() < o.dropout_rate:
        return True
    # kohya counts epochs from 1: every 2 drops the 2nd, 4th... (epoch here counts from 0)
    return bool(o.dropout_every_n_epochs and (epoch + 1) % o.dropout_every_n_epochs == 0)


def caption_for_step(text: str, options: CaptionOptions, rng: random.Random, epoch: int) -> str:
    """One line as a step trains it, in kohya's order: prefix/suffix, caption dropout, wildcards
    (enable_wildcard), then, on a tag line only, shuffle past the kept tokens (or past the keep
    separator) with tag dropout. A sentence line is never cut at its commas (caption_lines)."""
    o = options
    sentence = is_sentence(text)  # the line's own words decide: a prefix of tags does not make it tags
    text = _sentence_affixes(text, o) if sentence else with_affixes(text, o.prefix, o.suffix)
    if _dropped(o, rng, epoch):
        return ""
    if o.wildcard:
        text = resolve_wildcards(text, rng)
    return text if sentence else _tag_line(text, o, rng)


def _sentence_affixes(text: str, o: CaptionOptions) -> str:
    """A sentence with the prefix and suffix, the keep separator taken out of them where tag
    processing would remove it (a prefix "1girl, miku |||" reads "1girl, miku, " before the
    sentence); the sentence itself is never touched, whatever words the separator matches."""
    sep = o.keep_tokens_separator
    if not (o.shuffle or o.tag_dropout_rate) or not sep or sep not in o.prefix + o.suffix:
        return with_affixes(text, o.prefix, o.suffix)

    def clean(affix: str) -> str:
        return ", ".join(p.strip().strip(",").strip() for p in affix.split(sep) if p.strip().strip(","))

    prefix, suffix = clean(o.prefix), clean(o.suffix)
    if prefix:
        text = f"{prefix}, {text}" if sep in o.prefix else f"{prefix} {text}"
    if suffix:
        text = f"{text}, {suffix}" if sep in o.suffix else f"{text} {suffix}"
    return text


def _tag_line(text: str, o: CaptionOptions, rng: random.Random) -> str:
    """Shuffle past the kept tokens (or between kohya's keep separators: before the first and
    after a second stay in place), with tag dropout."""
    if not o.shuffle and not o.tag_dropout_rate:
        return text
    tail_fixed: list[str] = []
    if o.keep_tokens_separator and o.keep_tokens_separator in text:
        head, tail = text.split(o.keep_tokens_separator, 1)
        if o.keep_tokens_separator in tail:
            tail, end = tail.split(o.keep_tokens_separator, 1)
            tail_fixed = [t.strip() for t in end.split(",") if t.strip()]
        fixed = [t.strip() for t in head.split(",") if t.strip()]
        rest = [t.strip() for t in tail.split(",") if t.strip()]
    else:
        tags = [t.strip() for t in text.split(",") if t.strip()]
        fixed, rest = tags[:o.keep_tokens], tags[o.keep_tokens:]
    if o.shuffle:
        rng.shuffle(rest)
    if o.tag_dropout_rate:
        rest = [t for t in rest if rng.random() >= o.tag_dropout_rate]
    return ", ".join(fixed + rest + tail_fixed)
