"""The dataset the review page shows, held in memory: every image of DIR with its folder (and the
folder's repeats), its caption, and its facts (review/facts.py); a tag -> images index, so a
query over 20,000 captions is a few set operations; the filters; and tag frequencies with what
the vocabulary says of each tag (redundant by an implication, unknown).
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import astuple, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from lorakit.captions import parse_repeats_folder, parse_tags
from lorakit.curate.defaults import DEDUPE_DISTANCE, SCAN_THRESHOLD
from lorakit.review.facts import Facts, FactsCache
from lorakit.tagging.spelling import key


@dataclass
class Entry:
    rel: str  # POSIX path under DIR: the image's id in the page and the API
    folder: str
    caption_rel: str  # the caption file it has, or would have (`.txt`)
    caption: str | None  # its text (first line), None when there is no caption file
    tags: list[str] = field(default_factory=list)
    facts: Facts | None = None
    version: str = ""  # a digest of the caption file's bytes as read ("" for none)
    text: str = ""  # the whole caption as the page edits it (every line; see caption_text)
    stamp: tuple[int, int] = (-1, -1)  # the caption file's size and mtime when read: a change on disk shows


@dataclass
class Query:
    text: str = ""  # tags, comma-separated; `-tag` excludes; `*` wildcards; `red hair -hat` works too
    folder: str | None = None
    no_caption: bool = False
    flagged: bool = False  # curate scan's noise score at or above the threshold
    duplicates: bool = False  # in a near-duplicate group (shown group by group)
    smaller_than: int | None = None  # short side under this many pixels
    unreadable: bool = False  # images that could not be read (their facts carry the error)


def caption_version(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def caption_text(data: bytes) -> str:
    """A caption file as the page's box shows it: every line, LF line endings, no BOM, no final
    line ending (bytes that are not UTF-8 shown as U+FFFD; writes.save_caption keeps them as they
    were while their lines are not changed)."""
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff").replace("\r\n", "\n")
    return text[:-1] if text.endswith("\n") else text


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def parse_query(text: str) -> tuple[list[str], list[str]]:
    """(included, excluded) tag patterns, as booru keys."""
    include, exclude = [], []
    for piece in text.split(","):
        # `red hair -hat`: a space followed by a dash starts an excluded tag
        parts = [p for p in piece.replace(" -", ",-").split(",") if p.strip()]
        for part in parts:
            part = part.strip()
            (exclude if part.startswith("-") else include).append(key(part.lstrip("-")))
    return [p for p in include if p], [p for p in exclude if p]


class Dataset:
    def __init__(self, root: Path, read_only: bool = False):
        self.root = root
        self._real_root = root.resolve()
        self.cache = FactsCache(root, elsewhere=read_only)  # read-only: thumbnails kept outside DIR
        self.entries: dict[str, Entry] = {}
        self.by_tag: dict[str, set[str]] = {}
        self._groups: list[list[str]] | None = None
        self._tag_panels: dict = {}  # query -> its tag frequencies, until a caption changes
        self.reload()

    # --- reading -------------------------------------------------------------------------------

    # Reads run on worker threads (the server never blocks on one), writes on the event loop. So a
    # write never changes a dict or set a read may be walking: it builds new ones and swaps them in.

    def reload(self, found: list | None = None) -> None:
        """Every image with its caption file, as `tag edit` finds them (tagging.rewrite.targets)."""
        from lorakit.tagging.rewrite import targets

        entries = {}
        for target in targets(self.root) if found is None else found:  # found: a listing just made
            rel = target.image.as_posix()
            entry = Entry(rel, rel.split("/")[0] if "/" in rel else ".", target.name, None)
            if target.exists:
                self._read_caption(entry)
            entry.facts = self.cache.get(rel)
            entries[rel] = entry
        by_tag: dict[str, set[str]] = {}
        for rel, entry in entries.items():
            for tag in entry.tags:
                by_tag.setdefault(key(tag), set()).add(rel)
        self.entries, self.by_tag, self._groups, self._tag_panels = entries, by_tag, None, {}

    def _read_caption(self, entry: Entry) -> None:
        path = self.root / entry.caption_rel
        entry.stamp = _stamp(path)
        try:
            if not path.resolve().is_relative_to(self._real_root):  # a symlink out: not the dataset's text
                raise PermissionError(f"{entry.caption_rel} leads outside the dataset")
            if not stat.S_ISREG(path.stat().st_mode):  # a FIFO named .txt: reading it would never end
                raise PermissionError(f"{entry.caption_rel} is not a regular file")
            data = path.read_bytes()
        except (OSError, RuntimeError):  # RuntimeError: a link loop
            entry.caption, entry.tags, entry.version, entry.text = None, [], "", ""
            return
        entry.version = caption_version(data)  # what the page sees: an edit is checked against it
        entry.text = caption_text(data)
        entry.caption = entry.text.split("\n", 1)[0].strip()  # line 1: the tags
        entry.tags = parse_tags(entry.text)

    def rescan(self) -> list[str]:
        """What changed on disk since the page read it: captions another program edited (a stat
        each) are read again; images added or removed read the whole folder again. Returns the
        images that have no facts yet (new ones), for the caller to make."""
        from lorakit.tagging.rewrite import targets

        found = targets(self.root)
        if {t.image.as_posix() for t in found} != set(self.entries):
            self.reload(found)  # the listing just made: the folder is not walked twice
            return self.cache.missing(list(self.entries))
        for rel in [r for r in self.entries if self.changed_on_disk(r)]:
            self.refresh(rel)
        return []

    def changed_on_disk(self, rel: str) -> bool:
        """Whether the caption file changed since it was read (one stat: another program's edit
        shows without a restart)."""
        entry = self.entries[rel]
        return _stamp(self.root / entry.caption_rel) != entry.stamp

    def refresh(self, rel: str) -> None:
        """One image's caption read again (after a write), and the index with it (new sets and a
        new dict, swapped in: see above)."""
        entry = self.entries[rel]
        old = {key(t) for t in entry.tags}
        self._read_caption(entry)
        new = {key(t) for t in entry.tags}
        by_tag = dict(self.by_tag)
        for k in old - new:
            by_tag[k] = by_tag[k] - {rel}
        for k in new - old:
            by_tag[k] = by_tag.get(k, set()) | {rel}
        self.by_tag, self._tag_panels = by_tag, {}

    def folders(self) -> list[dict]:
        """Each top folder with its image count and, for `N_name`, its repeats and name."""
        counts: dict[str, int] = {}
        for entry in self.entries.values():
            counts[entry.folder] = counts.get(entry.folder, 0) + 1
        out = []
        for folder, n in sorted(counts.items()):
            parsed = parse_repeats_folder(folder)
            out.append({"folder": folder, "images": n, "repeats": parsed[0] if parsed else None,
                        "name": parsed[1] if parsed else folder})
        return out

    # --- filtering -----------------------------------------------------------------------------

    def _matching(self, pattern: str) -> set[str]:
        if any(c in pattern for c in "*?["):
            found: set[str] = set()
            for tag, rels in self.by_tag.items():
                if fnmatchcase(tag, pattern):
                    found |= rels
            return found
        return self.by_tag.get(pattern, set())

    def select(self, query: Query, progress=None) -> list[str]:
        """The images the query keeps, in path order (duplicates: group by group)."""
        include, exclude = parse_query(query.text)
        chosen = set(self.entries) if not include else set.intersection(*(self._matching(p) for p in include))
        for pattern in exclude:
            chosen -= self._matching(pattern)
        if query.folder:
            chosen = {r for r in chosen if self.entries[r].folder == query.folder}
        if query.no_caption:
            chosen = {r for r in chosen if not self.entries[r].tags}
        if query.flagged:
            chosen = {r for r in chosen if (f := self.entries[r].facts) and f.score is not None
                      and f.score >= SCAN_THRESHOLD}
        if query.smaller_than:
            chosen = {r for r in chosen if (f := self.entries[r].facts) and not f.error
                      and min(f.width, f.height) < query.smaller_than}
        if query.unreadable:
            chosen = {r for r in chosen if (f := self.entries[r].facts) and f.error}
        if query.duplicates:
            return [r for group in self.duplicate_groups(progress) for r in group if r in chosen]
        return sorted(chosen)

    def duplicate_groups(self, progress=None) -> list[list[str]]:
        """curate dedupe's groups (its hashes, distance and colour check), largest image first;
        kept until the images are read again (a caption edit changes no image)."""
        if self._groups is None:
            self._groups = self._duplicate_groups(progress)
        return self._groups

    def _duplicate_groups(self, progress=None) -> list[list[str]]:
        from lorakit.curate.dedupe import Fingerprint, group_duplicates

        rels = [r for r, e in self.entries.items() if e.facts and not e.facts.error]
        prints = [Fingerprint(f.width, f.height, f.file_size, f.hash, f.mirror, bytes.fromhex(f.colours))
                  for f in (self.entries[r].facts for r in rels)]
        return [[rels[i] for i in group] for group in group_duplicates(prints, DEDUPE_DISTANCE, progress)]

    # --- tags ----------------------------------------------------------------------------------

    def tag_panel(self, query: Query, relations=None) -> list[dict]:
        """The frequencies of the images a query selects, kept until a caption changes: turning
        pages of one query (or coming back to it) reads them, not 20,000 captions again."""
        found_key = (astuple(query), id(relations))
        if found_key not in self._tag_panels:
            self._tag_panels[found_key] = self.frequencies(self.select(query), relations)
        return self._tag_panels[found_key]

    def frequencies(self, rels: list[str], relations=None) -> list[dict]:
        """Tags of these images, most frequent first, each with `implied`: in how many of its
        captions another tag of the same caption implies it, and `unknown` where the vocabulary
        has no such tag (when a tag list is loaded)."""
        counts: dict[str, int] = {}
        implied: dict[str, int] = {}
        for rel in rels:
            keys = [key(t) for t in self.entries[rel].tags]
            for k in keys:
                counts[k] = counts.get(k, 0) + 1
            if relations is not None:
                canon = {relations.canonical(k): k for k in keys}
                redundant = {canon[i] for c in canon for i in relations.implied_by(c) if i in canon}
                for k in redundant:
                    implied[k] = implied.get(k, 0) + 1
        out = []
        for tag, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            known = relations.knows(relations.canonical(tag)) if relations is not None else None
            out.append({"tag": tag, "images": n, "implied": implied.get(tag, 0), "unknown": known is False})
        return out
