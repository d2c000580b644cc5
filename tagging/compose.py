"""From a tagger's probabilities to a caption: thresholds per category (or MCut), then
everything kohya's `tag_images_by_wd14_tagger.py` offers for writing (undesired tags,
always-first tags, character tags first, underscores, escaping, replacements, the rating tag),
then the instance and class tokens in front and implied tags pruned."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lorakit.tagging import defaults
from lorakit.tagging.models import TagInfo
from lorakit.tagging.prune import prune
from lorakit.tagging.relations import Relations
from lorakit.tagging.spelling import display, key

RATING = 9  # WD's selected_tags.csv category for the four rating outputs
CHARACTER = {4, 3}  # characters (and copyrights) take the stricter character threshold
MODES = ("overwrite", "append", "merge", "skip")


@dataclass
class Thresholds:
    general: float = defaults.GENERAL
    character: float = defaults.CHARACTER
    mcut: bool = False


@dataclass
class Writing:
    mode: str = "overwrite"
    trigger: str | None = None  # instance token, first
    class_token: str | None = None  # second
    undesired: list[str] = field(default_factory=list)
    always_first: list[str] = field(default_factory=list)
    character_first: bool = False
    underscores: bool = False
    escape: bool = False
    replace: list[tuple[str, str]] = field(default_factory=list)
    rating: str = "none"  # none | first | last
    order: str = "confidence"  # confidence | model (kohya writes the CSV's order)
    prune: bool = True


def mcut(probs: np.ndarray) -> float:
    """Maximum Cut Thresholding (Largeron et al. 2012): the midpoint of the largest gap
    between consecutive sorted probabilities."""
    if len(probs) < 2:
        return 0.5
    ordered = np.sort(probs)[::-1]
    gaps = ordered[:-1] - ordered[1:]
    i = int(np.argmax(gaps))
    return float((ordered[i] + ordered[i + 1]) / 2)


@dataclass(frozen=True)
class Found:
    general: list[tuple[str, float]]
    characters: list[tuple[str, float]]
    rating: str | None


def select(probs: np.ndarray, info: TagInfo, th: Thresholds) -> Found:
    cats = np.asarray(info.categories)
    rating_idx = np.nonzero(cats == RATING)[0]
    char_idx = np.nonzero(np.isin(cats, list(CHARACTER)))[0]
    gen_idx = np.nonzero(~np.isin(cats, list(CHARACTER | {RATING})))[0]
    g_th, c_th = th.general, th.character
    if th.mcut:
        g_th = mcut(probs[gen_idx]) if len(gen_idx) else 1.0
        c_th = max(defaults.MCUT_CHARACTER_FLOOR, mcut(probs[char_idx])) if len(char_idx) else 1.0
    rating = info.names[rating_idx[np.argmax(probs[rating_idx])]] if len(rating_idx) else None

    def above(idx: np.ndarray, t: float) -> list[tuple[str, float]]:
        return [(info.names[i], float(probs[i])) for i in idx if probs[i] > t]

    return Found(above(gen_idx, g_th), above(char_idx, c_th), rating)


def compose(found: Found, existing: list[str], w: Writing, rel: Relations | None,
            folder_token: str | None) -> list[str] | None:
    """The caption to write; None leaves the file alone (mode skip with a caption present)."""
    if w.mode == "skip" and existing:
        return None
    replacements = {key(a): b for a, b in w.replace}
    undesired = {key(t) for t in w.undesired}

    def ordered(pairs: list[tuple[str, float]]) -> list[str]:
        return [n for n, _ in sorted(pairs, key=lambda p: -p[1])] if w.order == "confidence" \
            else [n for n, _ in pairs]

    chars, general = ordered(found.characters), ordered(found.general)
    names = chars + general if w.character_first else general + chars
    if found.rating and w.rating != "none":
        names = [found.rating] + names if w.rating == "first" else names + [found.rating]
    model_tags = []
    for name in names:
        name = replacements.get(key(name), name)
        if key(name) not in undesired:
            model_tags.append(display(key(name), w.underscores, w.escape))
    first_keys = [key(t) for t in w.always_first]
    front = [t for k in first_keys for t in model_tags if key(t) == k]
    model_tags = front + [t for t in model_tags if key(t) not in first_keys]

    leading = [t for t in (w.trigger or folder_token, w.class_token) if t]
    if w.mode == "overwrite":
        body = model_tags
    elif w.mode == "append":  # kohya's --append_tags: the old caption, then the new tags
        body = existing + model_tags
    else:  # merge: the user's hand-written tags the model did not find stay, right after the tokens
        found_keys = {key(t) for t in model_tags}
        body = [t for t in existing if key(t) not in found_keys] + model_tags
    tags, seen = [], set()
    for tag in leading + body:
        if key(tag) not in seen and key(tag) not in undesired - {key(t) for t in leading}:
            tags.append(tag)
            seen.add(key(tag))
    if w.prune and rel is not None:
        tags = prune(tags, rel, frozenset(key(t) for t in leading), len(leading)).tags
    return tags
