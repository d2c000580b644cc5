"""A caption file's lines as training reads them. Line 1 holds the tags (comma-separated, as
every lorakit stage writes them); further lines hold sentences (BLIP-style captions) or other
alternatives. Without data.enable_wildcard or data.caption_recipe only line 1 trains (kohya's
rule); with enable_wildcard every non-blank line trains, one per image per epoch, and `{a|b}`
wildcards pick one option at each step; a caption recipe composes the text from the lines' parts.

Choices made per image per epoch (which line, which recipe template, which sentence) are drawn
from (seed, image, epoch) only, never from the step's generator: a resumed run makes the same
choices, and they do not depend on which batch the image landed in.

Sentences are never shuffled: tag processing (shuffle, keep_tokens, tag dropout) cuts a caption
at its commas, which turns "a girl, smiling at the camera." into word salad. `is_sentence` tells
the two apart."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Callable, Sequence

from lorakit.train import seeds

SENTENCE_ENDS = (".", "!", "?")
# booru tags are short: of Danbooru's and e621's tags on 50 posts or more, a handful have 10 words
# or more (long copyright names), so a comma-separated piece of 10 or more is prose
LONG_PIECE = 10
TAG_WORDS = 2.5  # words per comma-separated piece: a tag line averages under 2, prose more


def is_sentence(line: str) -> bool:
    """A line of prose rather than tags. Booru tags are lower case, and many end in "!" or "."
    ("love live!", "super mario bros."), so the end alone says nothing. A sentence is a line
    that starts with a capital letter, ends in . ! or ? after a word, and is either one or two
    comma-separated pieces ("She smiles, waving.") or averages TAG_WORDS words or more a piece;
    or a line with a piece of LONG_PIECE words or more. On random lines of real Danbooru tags
    this reads under 1% as sentences (e621: under 0.1%), against 28% for a rule on the ending
    alone; `tag caption` writes its sentences capitalised and ended, so they always read as ones."""
    pieces = [p.strip() for p in line.split(",") if p.strip()]
    if not pieces:
        return False
    if any(len(p.split()) >= LONG_PIECE for p in pieces):
        return True
    last = pieces[-1]
    if not (pieces[0][0].isupper() and last.endswith(SENTENCE_ENDS) and any(c.isalpha() for c in last.rstrip(".!?"))):
        return False
    return len(pieces) <= 2 or sum(len(p.split()) for p in pieces) / len(pieces) >= TAG_WORDS


def caption_lines(text: str | None) -> tuple[str, ...]:
    """The non-blank lines of a caption file, stripped (kohya's enable_wildcard reading)."""
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


# `{{` and `}}` are literal braces; `{a|b|c}` one of its options. One pattern scanned left to
# right, so an escape is never read as the start of a wildcard (kohya swaps them for markers first).
_WILDCARD = re.compile(r"\{\{|\}\}|\{([^{}]+)\}")


def resolve_wildcards(text: str, rng: random.Random) -> str:
    """kohya's replace_wildcard: each `{a|b|c}` becomes one option, drawn from `rng`."""
    def one(match: re.Match) -> str:
        whole = match.group(0)
        if whole in ("{{", "}}"):
            return whole[0]
        return rng.choice(match.group(1).split("|"))
    return _WILDCARD.sub(one, text)


def image_key(image: Path) -> str:
    """An image as the per-epoch choices know it: its folder's name and its own, so a dataset
    moved to another disk between `train run` and `train resume` still chooses the same."""
    return f"{image.parent.name}/{image.name}"


def epoch_rng(seed: int, what: str, image: Path, epoch: int) -> random.Random:
    return seeds.rng(seed, f"{what} {image_key(image)}", epoch)


def epoch_line(lines: Sequence[str], image: Path, seed: int, epoch: int) -> str:
    """The line an image trains with this epoch (enable_wildcard): every line in turn, at random."""
    return lines[0] if len(lines) == 1 else epoch_rng(seed, "caption line", image, epoch).choice(list(lines))


# --- the caption recipe ----------------------------------------------------------------------


@dataclass(frozen=True)
class Parts:
    """What a recipe template may name, for one image in one epoch (None: it has none)."""
    tags: str | None  # the first tag line, before shuffling
    sentence: str | None  # a sentence line (one of them per epoch, if several)
    trigger: str | None  # the folder's class token

    @classmethod
    def of(cls, lines: Sequence[str], token: str | None, image: Path, seed: int, epoch: int) -> "Parts":
        prose = [is_sentence(line) for line in lines]  # once a line: this runs at every step
        sentences = [line for line, p in zip(lines, prose) if p]
        tags = next((line for line, p in zip(lines, prose) if not p), None)
        sentence = epoch_line(sentences, image, seed, epoch) if sentences else None
        return cls(tags, sentence, token or None)


# each name a template may use, and where its text comes from
PARTS: dict[str, Callable[[Parts], str | None]] = {
    "tags": lambda p: p.tags, "sentence": lambda p: p.sentence, "trigger": lambda p: p.trigger}


def template_names(template: str) -> list[str]:
    """The `{names}` of a template, read as str.format reads it (`{{` `}}` are literal braces).
    ValueError for a template str.format could not fill."""
    names = []
    for _, name, spec, conversion in Formatter().parse(template):
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"{{{name}}} takes no format spec or conversion")
        names.append(name)
    return names


MOST_TEMPLATES = 100


def recipe_problem(recipe: Sequence) -> str | None:
    """What is wrong with a recipe (its entries have .template and .weight), or None."""
    for k, entry in enumerate(recipe):
        try:
            names = template_names(entry.template)
        except ValueError as exc:
            return f"[{k}] template {entry.template!r}: {exc} (write {{{{ and }}}} for literal braces)"
        unknown = sorted(set(names) - set(PARTS))
        if unknown:
            return (f"[{k}] template {entry.template!r} names {', '.join('{' + n + '}' for n in unknown)}, which no "
                    f"caption has; the parts are {', '.join('{' + n + '}' for n in PARTS)}")
        if not names:
            return f"[{k}] template {entry.template!r} names no part ({', '.join('{' + n + '}' for n in PARTS)})"
    if len(recipe) > MOST_TEMPLATES:
        return f": {len(recipe)} templates: a recipe is a few ({MOST_TEMPLATES} at most)"
    if not math.isfinite(sum(entry.weight for entry in recipe)):
        return ": the weights add up past what a number holds: weights are shares, such as 0.4 and 0.6"
    return None


def choose_template(recipe: Sequence[tuple[str, float]], parts: Parts, image: Path, seed: int,
                    epoch: int) -> str | None:
    """The template an image trains with this epoch: among those whose parts it has, by weight
    (renormalised over them); None when it has the parts of none."""
    eligible = [(t, w) for t, w in recipe if all(PARTS[n](parts) for n in template_names(t))]
    if not eligible:
        return None
    rng = epoch_rng(seed, "caption recipe", image, epoch)
    return rng.choices([t for t, _ in eligible], weights=[w for _, w in eligible])[0]


def eligible_share(recipe: Sequence[tuple[str, float]], lines: Sequence[str], token: str | None) -> list[tuple[str, float]]:
    """Each template an image with these lines can train with, and its share (the review page
    says it). A sentence line counts whichever one an epoch picks."""
    parts = Parts.of(lines, token, Path("x"), 0, 0)
    eligible = [(t, w) for t, w in recipe if all(PARTS[n](parts) for n in template_names(t))]
    total = sum(w for _, w in eligible)
    return [(t, w / total) for t, w in eligible]


def lines_rule(wildcard: bool, recipe: Sequence[tuple[str, float]], lines: Sequence[str],
               token: str | None) -> str | None:
    """What trains of a caption's lines under these options, in words (the review page shows
    it); None: kohya's rule, line 1 only."""
    shares = eligible_share(recipe, lines, token) if recipe else []
    if shares:
        return "a caption recipe picks per epoch: " + ", ".join(f"{t} ({round(100 * w)}%)" for t, w in shares)
    if wildcard:
        braces = any(_WILDCARD.search(line) for line in lines)
        return (f"one of these {len(lines)} lines per epoch" if len(lines) > 1 else "this line") + \
            (", its {a|b} wildcards resolved at each step" if braces else "")
    return None
