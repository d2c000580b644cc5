"""How a tag is spelt. Boorus store `long_hair`; captions usually read `long hair`; prompts
escape parentheses (`jinx \\(league of legends\\)`). Every comparison goes through `key`, so a
user may write a tag either way; `display` turns a booru name back into caption text."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files


@lru_cache(maxsize=1)
def kaomoji() -> frozenset[str]:
    text = files("lorakit.tag_lists").joinpath("kaomoji.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@lru_cache(maxsize=1 << 16)  # datasets repeat the same few thousand tags
def key(tag: str) -> str:
    """The booru name of a tag as written in a caption: `Long Hair` -> `long_hair`."""
    text = tag.strip().replace("\\(", "(").replace("\\)", ")").lower()
    if text in kaomoji():
        return text
    return "_".join(text.split())


def display(name: str, underscores: bool = False, escape: bool = False) -> str:
    """Caption text for a booru name: spaces instead of underscores (kaomoji excepted), and
    optionally parentheses escaped for prompt syntax (kohya's tagger never does this)."""
    text = name if underscores or name in kaomoji() else name.replace("_", " ")
    if escape:
        text = text.replace("(", "\\(").replace(")", "\\)")
    return text


def display_like(name: str, original: str) -> str:
    """Spell `name` the way the caption spelt the tag it replaces (underscores or spaces,
    escaped or not), so editing a caption does not change its style."""
    return display(name, underscores="_" in original and " " not in original,
                   escape="\\(" in original)
