"""`tag translate`: captions from one booru vocabulary to the other. A tag goes through, in
order: the source vocabulary's aliases, the hand-curated equivalence table in `tag_lists/`
(`from_side` <-> `side_view`, which no public mapping holds), then the target vocabulary's
aliases (e621 aliases many Danbooru spellings: `1girl` -> `female`)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

from lorakit.tagging.relations import Relations
from lorakit.tagging.spelling import display_like, key


@lru_cache(maxsize=1)
def equivalents() -> tuple[tuple[str, str], ...]:
    text = files("lorakit.tag_lists").joinpath("equivalents.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return tuple((r["danbooru"], r["e621"]) for r in rows)


def table(source: str, target: str) -> dict[str, str]:
    pairs = equivalents()
    return {d: e for d, e in pairs} if (source, target) == ("danbooru", "e621") else {e: d for d, e in pairs}


@dataclass(frozen=True)
class Translated:
    tags: list[str]
    unknown: list[str]  # tags with no equivalent the target vocabulary knows


def translate(tags: list[str], src: Relations, dst: Relations, mapping: dict[str, str],
              keep: frozenset[str] = frozenset(), drop_unknown: bool = False) -> Translated:
    out, unknown = [], []
    for tag in tags:
        k = key(tag)
        if k in keep:
            out.append(tag)
            continue
        name = src.canonical(k)
        name = dst.canonical(mapping.get(name, name))
        if dst.knows(name) is False:
            unknown.append(tag)
            if drop_unknown:
                continue
        out.append(display_like(name, tag))
    return Translated(out, unknown)
