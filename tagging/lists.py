"""Named tag lists that ship in `tag_lists/`: `@meta` and `@quality` can stand wherever a
command takes tags to leave out (`tag auto --undesired @meta`, `tag edit --remove @quality`)."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from lorakit.errors import UserError

NAMED = {"@meta": "meta_tags.txt", "@quality": "quality_tags.txt", "@kaomoji": "kaomoji.txt"}


@lru_cache(maxsize=None)
def named(name: str) -> tuple[str, ...]:
    if name not in NAMED:
        raise UserError(f"unknown tag list {name}: use {', '.join(NAMED)}")
    text = files("lorakit.tag_lists").joinpath(NAMED[name]).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def expand(tags: list[str]) -> list[str]:
    """Tags with every `@name` replaced by the list it names."""
    out: list[str] = []
    for tag in tags:
        out.extend(named(tag) if tag.startswith("@") else [tag])
    return out
