"""Pruning a caption with booru relations (REFERENCE.md §2; the guide: "an implied tag should
not be used together with the tag that implies it"): canonicalise aliases, drop every tag that
another tag in the caption implies (transitively), drop duplicates, keep the order."""

from __future__ import annotations

from dataclasses import dataclass

from tagging.relations import Relations
from tagging.spelling import display_like, key


@dataclass(frozen=True)
class Pruned:
    tags: list[str]
    implied: list[str]  # removed because another tag implies them
    duplicates: list[str]
    renamed: list[tuple[str, str]]  # alias spellings replaced: (old, new)


def prune(tags: list[str], rel: Relations, protected: frozenset[str] = frozenset(),
          keep_first: int = 0) -> Pruned:
    """`protected` names (keys) and the first `keep_first` tags are never removed or renamed:
    they are the instance and class tokens a LoRA is trained on."""
    keys = [key(t) for t in tags]
    names, implied_here = [], set()
    for i, k in enumerate(keys):
        name, implies = (k, rel.implied_by(k)) if i < keep_first or k in protected else rel.resolve(k)
        names.append(name)
        implied_here.update(implies)
    kept, implied, duplicates, renamed, seen = [], [], [], [], set()
    for i, (tag, k, name) in enumerate(zip(tags, keys, names)):
        fixed = i < keep_first or name in protected
        if name in seen:
            duplicates.append(tag)
        elif name in implied_here and not fixed:
            implied.append(tag)
        else:
            if name != k:
                new = display_like(name, tag)
                renamed.append((tag, new))
                tag = new
            kept.append(tag)
        seen.add(name)
    return Pruned(kept, implied, duplicates, renamed)
