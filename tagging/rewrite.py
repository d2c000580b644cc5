"""Editing captions in place, which is where every trainer reads them (DESIGN.md): one
mechanism for every command that rewrites captions, with a `--dry-run` diff and a backup of
each changed file, so `tag undo DIR` restores the last change.

Backups live in DIR/.lorakit/backups/<time>-<command>/: the previous version of every changed
caption, and a manifest naming the captions that did not exist before.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lorakit.captions import caption_files, format_tags, read_tags
from lorakit.discovery import check_source, discover
from lorakit.errors import UserError
from lorakit.fsio import atomic_path, write_text
from lorakit.report import OK, PLANNED, Outcome, Report, Section

CHANGED, CREATED = "changed", "created"
BACKUPS = Path(".lorakit") / "backups"

# (image path relative to DIR, current tags) -> new tags, or None to leave the caption alone
Edit = Callable[[Path, list[str]], "list[str] | None"]


@dataclass
class Target:
    image: Path  # relative to DIR
    caption: Path  # absolute; may not exist yet
    exists: bool


def targets(root: Path) -> list[Target]:
    out = []
    for rel in discover(root):
        found = caption_files(root / rel)
        caption = found[0] if found else (root / rel).with_suffix(".txt")
        out.append(Target(rel, caption, bool(found)))
    return out


class Backup:
    def __init__(self, root: Path, command: str):
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
        self.root, self.dir = root, root / BACKUPS / f"{stamp}-{command}"
        self.command, self.changed, self.created = command, [], []

    def save(self, caption: Path, existed: bool) -> None:
        rel = caption.relative_to(self.root)
        if existed:
            target = self.dir / "files" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(caption, target)
            self.changed.append(rel.as_posix())
        else:
            self.created.append(rel.as_posix())

    def commit(self) -> None:
        if self.changed or self.created:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_text(self.dir / "manifest.json", json.dumps(
                {"command": self.command, "changed": self.changed, "created": self.created}, indent=1))


def rewrite(root: Path, command: str, edit: Edit, dry_run: bool, create: bool = False) -> Report:
    """Apply `edit` to the caption of every image under `root`. Captions that do not exist
    are only created when `create` (tag auto, tag edit --add)."""
    root = check_source(root)
    report = Report(command, str(root))
    backup = Backup(root, command)
    diff_rows = []
    try:
        for target in targets(root):
            if not target.exists and not create:
                continue
            before = read_tags(target.caption) if target.exists else []
            after = edit(target.image, before)
            name = target.caption.relative_to(root).as_posix()
            if after is None or after == before:
                report.outcomes.append(Outcome(name, OK, "unchanged"))
                continue
            removed = [t for t in before if t not in after]
            added = [t for t in after if t not in before]
            details = {"before": before, "after": after}
            diff_rows.append([name, ", ".join(removed), ", ".join(added)])
            if dry_run:
                report.outcomes.append(Outcome(name, PLANNED, "would change", details))
                continue
            backup.save(target.caption, target.exists)
            write_text(target.caption, format_tags(after))
            report.outcomes.append(Outcome(name, CHANGED if target.exists else CREATED, "", details))
    finally:
        if not dry_run:
            backup.commit()
    report.sections.append(Section("would change" if dry_run else "changes",
                                   ["caption", "removed", "added"], diff_rows))
    if not dry_run and (backup.changed or backup.created):
        report.notes.append(f"previous captions kept in {backup.dir.relative_to(root)}; "
                            f"`tag undo {report.src}` restores them")
    return report


def undo(root: Path, dry_run: bool = False) -> Report:
    """Restore the captions the last caption-rewriting command changed, and remove the ones it
    created; that backup is then deleted, so the next undo goes one step further back."""
    root = check_source(root)
    sessions = sorted(p for p in (root / BACKUPS).glob("*") if (p / "manifest.json").is_file()) \
        if (root / BACKUPS).is_dir() else []
    if not sessions:
        raise UserError(f"nothing to undo in {root}: no caption backups in {root / BACKUPS}")
    last = sessions[-1]
    manifest = json.loads((last / "manifest.json").read_text(encoding="utf-8"))
    report = Report("undo", str(root))
    report.notes.append(f"undoing `{manifest['command']}` ({last.name})")
    for rel in manifest["changed"]:
        if not dry_run:
            with atomic_path(root / rel) as tmp:
                shutil.copy2(last / "files" / rel, tmp)
        report.outcomes.append(Outcome(rel, PLANNED if dry_run else "restored"))
    for rel in manifest["created"]:
        if not dry_run:
            (root / rel).unlink(missing_ok=True)
        report.outcomes.append(Outcome(rel, PLANNED if dry_run else "removed"))
    if not dry_run:
        shutil.rmtree(last)
    return report
