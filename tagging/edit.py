"""`tag edit`: bulk caption operations like BooruDatasetTagManager's. Tags match whatever
their spelling (`long_hair` = `Long Hair`); `--remove` and `--where` take shell wildcards
(`*_background`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from lorakit.captions import parse_repeats_folder
from lorakit.tagging.spelling import display_like, key


@dataclass
class EditOps:
    add: list[str] = field(default_factory=list)
    at: int | None = None  # position for added tags (0 = first; default: the end)
    remove: list[str] = field(default_factory=list)
    replace: list[tuple[str, str]] = field(default_factory=list)
    front: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # every pattern must match a tag
    folder: str | None = None  # only images under a folder of this name (`10_kit` or `kit`)


def _matches_any(tag: str, patterns: list[str]) -> bool:
    k = key(tag)
    return any(fnmatchcase(k, key(p)) for p in patterns)


def selected(image: Path, tags: list[str], ops: EditOps) -> bool:
    if ops.where and not all(any(_matches_any(t, [p]) for t in tags) for p in ops.where):
        return False
    if ops.folder is not None:
        names = set()
        for part in image.parent.parts:
            names.add(part)
            parsed = parse_repeats_folder(part)
            if parsed:
                names.add(parsed[1])
        return ops.folder in names
    return True


def apply(tags: list[str], ops: EditOps) -> list[str]:
    """replace, then remove, then add, then move to front; duplicates never added."""
    replacements = {key(old): new for old, new in ops.replace}
    out = [display_like(key(replacements[key(t)]), t) if key(t) in replacements else t for t in tags]
    out = [t for t in out if not _matches_any(t, ops.remove)] if ops.remove else out
    present = {key(t) for t in out}
    new = []
    for tag in ops.add:
        if key(tag) not in present:
            new.append(tag.strip())
            present.add(key(tag))
    at = len(out) if ops.at is None else max(0, min(ops.at, len(out)))
    out = out[:at] + new + out[at:]
    if ops.front:
        wanted = [key(t) for t in ops.front]
        first = [t for k in wanted for t in out if key(t) == k]
        out = first + [t for t in out if key(t) not in wanted]
    # a replacement may have produced a tag the caption already had
    seen, unique = set(), []
    for t in out:
        if key(t) not in seen:
            unique.append(t)
            seen.add(key(t))
    return unique
