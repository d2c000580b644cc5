"""Tag completion for the review page's caption editor and its "add a tag" field.

Order: tags that start with the prefix (the dataset's own, most used first; then the
vocabulary's, in its tag list's order, which is the list's ranking), then tags where the prefix
starts a later word ("hair" finds "red hair"), in the same two groups. A vocabulary alias is
offered as the tag it stands for, saying which alias matched. A tag is offered once.

The dataset's tags are offered as its captions spell them (a trigger word may be an alias).
The vocabulary (~100k names and their aliases) is indexed once per Relations object as sorted
lists, so one request is two binary searches and a partial sort of the matching range rather
than a pass over every name: the page asks on every keystroke.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left

from lorakit.tagging.spelling import display

_END = chr(0x10FFFF)  # sorts after any text that starts with the prefix
_BREAKS = "_("  # "hatsune_miku_(cosplay)": "miku", "(cosplay)" and "cosplay)" start words


def word_starts(name: str) -> list[int]:
    return [i for i in range(1, len(name)) if name[i - 1] in _BREAKS and name[i] not in _BREAKS]


class VocabIndex:
    def __init__(self, relations) -> None:
        self.relations = relations
        rank = {name: i for i, name in enumerate(relations.categories)}
        # row: (order, tag, alias); order ranks a tag by the list, its own name before an alias of it
        rows = [(2 * i, name, "") for name, i in rank.items()]
        after = len(rank)
        for n, alias in enumerate(relations.aliases):
            tag = relations.canonical(alias)
            if tag != alias:  # a tag list without the canonical name still resolves, ranked after the list
                rows.append((2 * rank.get(tag, after + n) + 1, tag, alias))
        self.full = _sorted((row[2] or row[1], row) for row in rows)
        self.words = _sorted((text[i:], row) for row in rows for text in (row[2] or row[1],)
                             for i in word_starts(text))

    def take(self, words: bool, prefix: str, found: dict[str, str], limit: int) -> None:
        """Add to `found` (tag -> alias) the best-ranked rows whose text (or a later word of it,
        with `words`) starts with `prefix`."""
        texts, rows = self.words if words else self.full
        lo, hi = bisect_left(texts, prefix), bisect_left(texts, prefix + _END)
        want = limit - len(found)
        n = 2 * want + 8
        while want > 0 and lo < hi:
            # the best n of the range; aliases of one tag can crowd it, so ask for more while short
            best = heapq.nsmallest(n, range(lo, hi), key=lambda k: rows[k][0]) if hi - lo > n else \
                sorted(range(lo, hi), key=lambda k: rows[k][0])
            for k in best:
                _, tag, alias = rows[k]
                if tag not in found:
                    found[tag] = alias
                    if len(found) >= limit:
                        return
            if len(best) == hi - lo:
                return
            n *= 4  # the rows seen again are skipped: their tags are found already


def _sorted(pairs) -> tuple[list, list]:
    pairs = sorted(pairs, key=lambda p: p[0])
    return [p[0] for p in pairs], [p[1] for p in pairs]


def dataset_matches(by_tag: dict[str, set], prefix: str, limit: int) -> tuple[list, list]:
    """The dataset's most used tags starting with the prefix, and those with a later word starting
    with it. Spelled as the captions spell them, aliases too: a trigger word may be one."""
    starts: dict[str, int] = {}  # tag -> images
    inside: dict[str, int] = {}
    under, paren = "_" + prefix, "(" + prefix
    for name, rels in by_tag.items():
        if rels and name.startswith(prefix):
            starts[name] = len(rels)
        elif rels and prefix and (under in name or paren in name):
            inside[name] = len(rels)
    return _most_used(starts, limit), _most_used(inside, 2 * limit)  # the vocabulary's may repeat some


def _most_used(images: dict[str, int], limit: int) -> list[tuple[str, str]]:
    # not a full sort: all 5,000 tags match an empty prefix
    return [(t, "") for t in heapq.nsmallest(limit, images, key=lambda t: (-images[t], t))]


def complete(by_tag: dict[str, set], index: VocabIndex | None, prefix: str, limit: int) -> list[dict]:
    found: dict[str, str] = {}  # tag -> the alias it was found through ("" when none); in order

    def add(matches) -> None:
        for tag, alias in matches:
            if len(found) >= limit:
                return
            found.setdefault(tag, alias)

    starts, inside = dataset_matches(by_tag, prefix, limit)
    add(starts)
    if prefix and index is not None and len(found) < limit:
        index.take(False, prefix, found, limit)
    add(inside)
    if prefix and index is not None and len(found) < limit:
        index.take(True, prefix, found, limit)
    return [{"tag": display(tag), "alias": display(alias)} if alias else {"tag": display(tag)}
            for tag, alias in found.items()]
