"""Booru tag relations: aliases (old spelling -> canonical name) and implications (a tag that
always comes with another), read from e621's daily exports or Danbooru's API JSON, stored as a
compact index in the user cache. Without an index, the small built-in set in `tag_lists/` is
used, so pruning works before the first `tag lists update`.

Formats (docs/formats.md, "Booru relations"): relation exports are CSV with
`id,antecedent_name,consequent_name,created_at,status`, only `active` rows count; tag lists are
header-less `name,category,post_count,"aliases"`.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Iterator

from lorakit.errors import UserError
from lorakit.fsio import atomic_path, cache_dir
from lorakit.tagging.spelling import key

VOCABS = ("danbooru", "e621")
FORMAT_VERSION = 1
RELATION_COLUMNS = ("antecedent_name", "consequent_name")


@dataclass
class Relations:
    vocab: str
    aliases: dict[str, str] = field(default_factory=dict)
    implies: dict[str, list[str]] = field(default_factory=dict)  # direct consequents
    categories: dict[str, int] = field(default_factory=dict)  # known tag names, when available
    source: str = "built-in"

    def __post_init__(self) -> None:
        self._closure: dict[str, frozenset[str]] = {}
        self._resolved: dict[str, tuple[str, frozenset[str]]] = {}
        self._by_text: dict[str, tuple[str, str, frozenset[str]]] = {}

    def resolve_text(self, text: str) -> tuple[str, str, frozenset[str]]:
        """(key, canonical name, everything it implies) for a tag as a caption spells it: one
        dict lookup per tag once seen, which is what keeps pruning 100,000 captions fast."""
        found = self._by_text.get(text)
        if found is None:
            k = key(text)
            found = self._by_text[text] = (k, *self.resolve(k))
        return found

    def resolve(self, name: str) -> tuple[str, frozenset[str]]:
        """(canonical name, everything it implies), memoised: the hot path of pruning."""
        found = self._resolved.get(name)
        if found is None:
            canonical = self.canonical(name)
            found = self._resolved[name] = (canonical, self.implied_by(canonical))
        return found

    def canonical(self, name: str) -> str:
        """Follow aliases to the name in use (chains are followed; a cycle stops)."""
        seen = {name}
        while name in self.aliases:
            name = self.aliases[name]
            if name in seen:
                break
            seen.add(name)
        return name

    def implied_by(self, name: str) -> frozenset[str]:
        """Every tag `name` implies, transitively (not itself)."""
        cached = self._closure.get(name)
        if cached is not None:
            return cached
        out: set[str] = set()
        stack = list(self.implies.get(name, ()))
        while stack:
            tag = stack.pop()
            if tag not in out and tag != name:
                out.add(tag)
                stack.extend(self.implies.get(tag, ()))
        result = frozenset(out)
        self._closure[name] = result
        return result

    def knows(self, name: str) -> bool | None:
        """Whether the vocabulary has this tag; None when no tag list was loaded."""
        if not self.categories:
            return None
        return name in self.categories or name in self.aliases

    # --- storage -----------------------------------------------------------------------------

    def to_json(self) -> dict:
        return {"version": FORMAT_VERSION, "vocab": self.vocab, "source": self.source,
                "aliases": self.aliases, "implies": self.implies, "categories": self.categories}

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            with gzip.open(tmp, "wt", encoding="utf-8") as f:
                json.dump(self.to_json(), f, separators=(",", ":"))

    @classmethod
    def load(cls, path: Path) -> "Relations":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
        if data.get("version") != FORMAT_VERSION:
            raise UserError(f"{path} was written by another lorakit version; run tag lists update")
        return cls(data["vocab"], data["aliases"], data["implies"], data["categories"], data["source"])


# --- reading the public formats ------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A file that is not what its name says (binary, not gzip, cut short) is a UserError naming
    it: the stored relations stay as they are."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start}); pass the export as downloaded") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: not a whole gzip file ({exc}); download it again") from None
    except (csv.Error, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a valid export ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def read_relation_rows(path: Path) -> list[tuple[str, str]]:
    """Active (antecedent, consequent) pairs from an export CSV or API JSON."""
    name = path.name.removesuffix(".gz")
    with _reading(path), _open_text(path) as f:
        if name.endswith(".json"):
            rows = json.load(f)
        else:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
            if not set(RELATION_COLUMNS) <= set(columns):
                raise UserError(f"{path}: not a relations export: it needs the columns "
                                f"{', '.join(RELATION_COLUMNS)} (it has: {', '.join(columns) or 'none'})")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise UserError(f"{path}: expected a list of objects with {', '.join(RELATION_COLUMNS)}, as the API returns")
    pairs = []
    for row in rows:
        if row.get("status", "active") == "active" and row.get("antecedent_name") and row.get("consequent_name"):
            pairs.append((row["antecedent_name"], row["consequent_name"]))
    if not pairs and rows:
        raise UserError(f"{path}: no active antecedent_name/consequent_name rows")
    return pairs


def read_tag_list(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Tag names with their category, and the aliases listed beside them. Header-less
    `name,category,post_count,aliases` rows, or any column order under a header naming `name`
    and `category` (e621's own export: `id,name,category,post_count`)."""
    categories, aliases = {}, {}
    with _reading(path), _open_text(path) as f:
        reader = csv.reader(f)
        first = next(reader, [])
        header = [c.strip().lower() for c in first]
        if "name" in header:
            if "category" not in header:
                raise UserError(f"{path}: a tag list needs a category column (it has: {', '.join(first)})")
            name_at, category_at = header.index("name"), header.index("category")
            aliases_at = header.index("aliases") if "aliases" in header else None
            rows, start = reader, 2
        else:
            name_at, category_at, aliases_at = 0, 1, 3
            rows, start = itertools.chain([first], reader), 1
        for line, row in enumerate(rows, start=start):
            if not any(row):
                continue
            if len(row) <= max(name_at, category_at) or not row[category_at].strip().isdigit():
                raise UserError(f"{path} line {line}: not a tag row (expected name,category,post_count,aliases "
                                f"with a numeric category; found {','.join(row)[:80]!r})")
            tag = row[name_at]
            categories[tag] = int(row[category_at])
            if aliases_at is not None and len(row) > aliases_at and row[aliases_at]:
                for alias in row[aliases_at].split(","):
                    if alias and alias != tag:
                        aliases.setdefault(alias, tag)
    return categories, aliases


def classify(path: Path) -> str:
    """Which kind of file this is, by the names e621 and Danbooru give them."""
    name = path.name.lower()
    for kind in ("implication", "alias", "tags"):  # tag_implications-*, tag_aliases-*, tags-*
        if kind in name:
            return {"implication": "implications", "alias": "aliases", "tags": "tags"}[kind]
    raise UserError(f"{path}: cannot tell whether it holds implications, aliases or tags "
                    "(name it like e621's exports: tag_implications-*.csv.gz, tag_aliases-*, tags-*)")


def build(vocab: str, paths: list[Path], source: str) -> Relations:
    aliases: dict[str, str] = {}
    implication_pairs: list[tuple[str, str]] = []
    categories: dict[str, int] = {}
    for path in paths:
        kind = classify(path)
        if kind == "implications":
            implication_pairs += read_relation_rows(path)
        elif kind == "aliases":
            aliases.update(read_relation_rows(path))
        else:
            names, listed = read_tag_list(path)
            categories.update(names)
            for alias, target in listed.items():
                aliases.setdefault(alias, target)
    rel = Relations(vocab, aliases, {}, categories, source)
    implies: dict[str, set[str]] = {}
    for antecedent, consequent in implication_pairs:
        a, c = rel.canonical(antecedent), rel.canonical(consequent)
        if a != c:
            implies.setdefault(a, set()).add(c)
    rel.implies = {k: sorted(v) for k, v in implies.items()}
    if not (rel.aliases or rel.implies or rel.categories):
        raise UserError(f"{', '.join(str(p) for p in paths)}: no aliases, implications or tags in them; "
                        "nothing to store")
    return rel


def keep_missing(new: Relations, previous: Relations | None, given: set[str]) -> tuple[Relations, list[str]]:
    """`new` with the kinds of data not given this time (aliases, implications, tags) taken from
    the lists stored before: an update from the implications file alone must not empty the
    aliases. Returns it with what was kept, for the report."""
    if previous is None:
        return new, []
    kept = []
    if "aliases" not in given and previous.aliases:
        kept.append(f"{len(previous.aliases)} aliases")
        aliases = {**previous.aliases, **new.aliases}
    else:
        aliases = new.aliases
    implies = new.implies
    if "implications" not in given and previous.implies:
        kept.append(f"{sum(map(len, previous.implies.values()))} implications")
        implies = previous.implies
    categories = new.categories
    if "tags" not in given and previous.categories:
        kept.append(f"{len(previous.categories)} tags")
        categories = previous.categories
    return Relations(new.vocab, aliases, implies, categories, new.source), kept


# --- where an index lives ------------------------------------------------------------------------


def cache_path(vocab: str) -> Path:
    return cache_dir("tags", f"{vocab}.json.gz")


def builtin(vocab: str) -> Relations:
    base = files("lorakit.tag_lists")
    paths = []
    for kind in ("implications", "aliases"):
        resource = base.joinpath(f"builtin_{vocab}_{kind}.csv")
        paths.append((kind, resource.read_text(encoding="utf-8")))
    rel = Relations(vocab, source="built-in (most frequent tags; run `tag lists update` for all)")
    aliases = {}
    pairs = []
    for kind, text in paths:
        rows = [(r["antecedent_name"], r["consequent_name"]) for r in csv.DictReader(io.StringIO(text))]
        if kind == "aliases":
            aliases.update(rows)
        else:
            pairs = rows
    rel.aliases = aliases
    implies: dict[str, list[str]] = {}
    for a, c in pairs:
        implies.setdefault(rel.canonical(a), []).append(rel.canonical(c))
    rel.implies = implies
    return rel


def load(vocab: str) -> Relations:
    if vocab not in VOCABS:
        raise UserError(f"unknown vocabulary {vocab!r}: use {' or '.join(VOCABS)}")
    path = cache_path(vocab)
    return Relations.load(path) if path.is_file() else builtin(vocab)
