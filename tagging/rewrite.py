"""Editing captions in place, which is where every trainer reads them (DESIGN.md): one
mechanism for every command that rewrites captions, with a `--dry-run` diff and a backup of
each changed file, so `tag undo DIR` restores the last change.

Backups live in DIR/.lorakit/backups/<time>-<command>.json: the previous text of every changed
caption and the names of the captions that did not exist before, in one file (captions are
small; one file per command, not one per caption, keeps a 100,000-caption edit fast).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lorakit.captions import CAPTION_SUFFIXES, format_tags, parse_tags
from lorakit.discovery import check_source, discover_names
from lorakit.errors import UserError
from lorakit.fsio import write_text
from lorakit.report import OK, PLANNED, Outcome, Report, Section

CHANGED, CREATED = "changed", "created"
BACKUPS = Path(".lorakit") / "backups"

# (image path relative to DIR, current tags) -> new tags, or None to leave the caption alone
Edit = Callable[[Path, list[str]], "list[str] | None"]


@dataclass
class Target:
    image: Path  # relative to DIR
    caption: str  # absolute; may not exist yet
    name: str  # the caption's path relative to DIR, as shown in reports
    exists: bool


def targets(root: Path) -> list[Target]:
    """Each image with its caption file (`.txt` first, then `.caption`), found from one
    listing per folder rather than a file-system query per image."""
    listings: dict[str, tuple[str, set[str]]] = {}
    out = []
    base = os.fspath(root)
    for rel in discover_names(root):
        parent, _, file_name = rel.rpartition("/")
        if parent not in listings:
            folder = os.path.join(base, parent) if parent else base
            listings[parent] = (folder, set(os.listdir(folder)))
        folder, names = listings[parent]
        stem = os.path.splitext(file_name)[0]
        found = next((stem + s for s in CAPTION_SUFFIXES if stem + s in names), None)
        file = found or stem + ".txt"
        out.append(Target(Path(rel), os.path.join(folder, file), f"{parent}/{file}" if parent else file,
                          found is not None))
    return out


class Backup:
    def __init__(self, root: Path, command: str):
        ns = time.time_ns()  # names sort in time order, down to the microsecond
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(ns // 10**9)) + f"-{ns // 1000 % 10**6:06d}"
        self.root, self.path = root, root / BACKUPS / f"{stamp}-{command}.json"
        self.command, self.changed, self.created = command, {}, []

    def save(self, rel: str, text: str | None) -> None:
        """`text`: the caption's previous content, or None if it did not exist."""
        if text is None:
            self.created.append(rel)
        else:
            self.changed[rel] = text

    def commit(self) -> None:
        if self.changed or self.created:
            write_text(self.path, json.dumps(
                {"command": self.command, "changed": self.changed, "created": self.created}))


WRITERS = 4  # renames in different folders overlap: 4 threads halve the time of 100,000 writes


def _write_all(changes: list[tuple[str, str]]) -> None:
    """Write (path, text) pairs atomically, folder by folder on a few threads."""
    by_folder: dict[str, list[tuple[str, str]]] = {}
    for path, text in changes:
        by_folder.setdefault(os.path.dirname(path), []).append((path, text))

    def write_folder(items: list[tuple[str, str]]) -> None:
        for path, text in items:
            write_text(path, text)

    if len(changes) < 200:
        write_folder(changes)
        return
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(write_folder, by_folder.values()))  # list(): re-raise the first error


def rewrite(root: Path, command: str, edit: Edit, dry_run: bool, create: bool = False) -> Report:
    """Apply `edit` to the caption of every image under `root`. Captions that do not exist
    are only created when `create` (tag auto, tag edit --add). Every new caption is computed
    first; the backup is written before any caption, so an interrupted run can be undone."""
    root = check_source(root)
    report = Report(command, str(root))
    backup = Backup(root, command)
    diff_rows, changes = [], []
    for target in targets(root):
        if not target.exists and not create:
            continue
        text = None
        if target.exists:
            with open(target.caption, encoding="utf-8-sig", errors="replace") as f:
                text = f.read()
        before = parse_tags(text) if text is not None else []
        after = edit(target.image, before)
        name = target.name
        if after is None or after == before:
            report.outcomes.append(Outcome(name, OK, "unchanged"))
            continue
        after_set, before_set = set(after), set(before)
        removed = [t for t in before if t not in after_set]
        added = [t for t in after if t not in before_set]
        diff_rows.append([name, ", ".join(removed), ", ".join(added)])
        status = PLANNED if dry_run else CHANGED if target.exists else CREATED
        report.outcomes.append(Outcome(name, status, "would change" if dry_run else "",
                                       {"before": before, "after": after}))
        backup.save(name, text)
        changes.append((target.caption, format_tags(after)))
    if changes and not dry_run:
        backup.commit()
        _write_all(changes)
        report.notes.append(f"previous captions kept in {backup.path.relative_to(root)}; "
                            f"`tag undo {report.src}` restores them")
    report.sections.append(Section("would change" if dry_run else "changes",
                                   ["caption", "removed", "added"], diff_rows))
    return report


def undo(root: Path, dry_run: bool = False) -> Report:
    """Restore the captions the last caption-rewriting command changed, and remove the ones it
    created; that backup is then deleted, so the next undo goes one step further back."""
    root = check_source(root)
    sessions = sorted((root / BACKUPS).glob("*.json")) if (root / BACKUPS).is_dir() else []
    if not sessions:
        raise UserError(f"nothing to undo in {root}: no caption backups in {root / BACKUPS}")
    last = sessions[-1]
    manifest = json.loads(last.read_text(encoding="utf-8"))
    report = Report("undo", str(root))
    report.notes.append(f"undoing `{manifest['command']}` ({last.name})")
    for rel, text in manifest["changed"].items():
        if not dry_run:
            write_text(root / rel, text)
        report.outcomes.append(Outcome(rel, PLANNED if dry_run else "restored"))
    for rel in manifest["created"]:
        if not dry_run:
            (root / rel).unlink(missing_ok=True)
        report.outcomes.append(Outcome(rel, PLANNED if dry_run else "removed"))
    if not dry_run:
        last.unlink()
    return report
