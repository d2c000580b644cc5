"""Caption backups and `tag undo`. Every command that rewrites captions (tagging/rewrite.py, the
review page) first writes DIR/.lorakit/backups/<time>-<command>.json: the previous bytes of every
changed caption (as text where they are UTF-8, else base64), the names of the captions that did
not exist before, and a digest of what the command wrote in their place. One file per command, not
one per caption, keeps a 100,000-caption edit fast.

`tag undo` restores the newest backup, byte for byte, and deletes it only once all of it is
restored. It trusts nothing in it: every path must lie inside DIR (else the backup is set aside,
never deleted), and a caption changed since the command wrote it is not overwritten unless asked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

from lorakit.captions import CAPTION_SUFFIXES
from lorakit.discovery import check_source
from lorakit.errors import UserError
from lorakit.fsio import own_folder, sync_folder, write_text, write_texts
from lorakit.locks import folder_lock
from lorakit.report import FAILED, OK, PLANNED, Outcome, Report

BACKUPS = Path(".lorakit") / "backups"
UNDONE = BACKUPS / "undone"  # backups an undo used, with what it overwrote: `tag redo` puts it back
REDO = ".redo.json"


class Backup:
    def __init__(self, root: Path, command: str):
        ns = time.time_ns()  # names sort in time order, down to the microsecond
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(ns // 10**9)) + f"-{ns // 1000 % 10**6:06d}"
        self.root, self.path = root, root / BACKUPS / f"{stamp}-{command}.json"
        self.command, self.changed, self.created = command, {}, []
        self.written: dict[str, str] = {}  # what the edit writes, by digest: undo spots a later edit

    def save(self, rel: str, data: bytes | None, new: bytes | None = None) -> None:
        """`data`: the caption's previous bytes, or None if it did not exist; `new`: what the
        command writes in its place."""
        if data is None:
            self.created.append(rel)
        else:
            self.changed[rel] = data
        if new is not None:
            self.written[rel] = digest(new)

    def forget(self, rels: set[str]) -> None:
        """Drop captions whose write failed (they still hold what the backup would restore), so
        that an undo does not stop on them."""
        self.changed = {rel: data for rel, data in self.changed.items() if rel not in rels}
        self.created = [rel for rel in self.created if rel not in rels]
        self.written = {rel: d for rel, d in self.written.items() if rel not in rels}

    def commit(self) -> None:
        """Write the backup (on disk before this returns), or remove it when it holds nothing.
        A backup that cannot be written is a UserError: the edit it would protect must not run."""
        if not (self.changed or self.created):
            self.path.unlink(missing_ok=True)
            return
        manifest = {"command": self.command, "changed": {rel: _stored(data) for rel, data in self.changed.items()},
                    "created": self.created, "written": self.written}
        own_folder(self.root, BACKUPS)  # never through a link out of the dataset
        try:
            write_text(self.path, json.dumps(manifest), durable=True)
            _forget_undone(self.root)
        except OSError as e:
            raise UserError(f"cannot write the backup {self.path}: {e.strerror or e}; no caption was changed") from None


def _forget_undone(root: Path) -> None:
    """A new edit: what was undone can no longer be redone over it."""
    folder = root / UNDONE
    if os.path.isdir(folder) and not os.path.islink(folder):
        for path in folder.glob("*.json"):
            path.unlink()


def digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _stored(data: bytes) -> str | dict:
    """A caption's bytes in a backup: as text where they are UTF-8 (readable, and fast), else as
    base64, so that an undo restores them byte for byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _restored(value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and isinstance(value.get("base64"), str):
        return base64.b64decode(value["base64"], validate=True)
    raise ValueError(f"not a caption's content: {str(value)[:40]!r}")


UNREADABLE = ".unreadable"  # the suffix a backup that cannot be read is set aside under


def undo(root: Path, dry_run: bool = False, force: bool = False) -> Report:
    """Restore the captions the last caption-rewriting command changed, and remove the ones it
    created; that backup is then deleted, so the next undo goes one step further back. Every
    path in the backup must lie inside `root` (a shared dataset's `.lorakit/` is not trusted to
    name files elsewhere). A caption changed since the command wrote it (by hand, by another
    program) is not overwritten unless `force`: it is an error line that says so."""
    root = check_source(root)
    if dry_run:
        return _undo(root, dry_run, force)
    with folder_lock(root, "tag undo"):
        return _undo(root, dry_run, force)


def _changed_since(current: bytes | None, written: str | None) -> bool:
    """Whether the file (its bytes now; None: gone or unreadable) is no longer what the command
    wrote (`written` None: the backup predates the check). A file that is gone overwrites nothing
    when restored; one that cannot be read fails in the restore, which says why."""
    return written is not None and current is not None and digest(current) != written


def _undo(root: Path, dry_run: bool, force: bool) -> Report:
    folder = root / BACKUPS
    if os.path.lexists(folder):
        own_folder(root, BACKUPS)  # a link there would have undo write and delete files elsewhere
    sessions = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not sessions:
        raise UserError(f"nothing to undo in {root}: no caption backups in {root / BACKUPS}")
    last = sessions[-1]
    report = Report("undo", str(root))
    try:
        manifest = _manifest(last)
        outside = [rel for rel in [*manifest["changed"], *manifest["created"]] if _inside(root, rel) is None]
        if outside:  # not a backup lorakit wrote for this dataset: nothing in it is trusted
            raise ValueError(f"it names files outside the dataset, or files that are not captions: {', '.join(outside[:3])}")
    except (OSError, ValueError) as e:
        # set aside (never deleted: it may still hold text someone wants), so the next undo
        # reaches the edit before it instead of stopping here for good
        name = last.relative_to(root)
        if not dry_run:
            os.replace(last, last.with_name(last.name + UNREADABLE))
            report.notes.append(f"it is kept as {name}{UNREADABLE}; `tag undo` again undoes the edit before it")
        report.outcomes.append(Outcome(str(name), FAILED, f"this backup cannot be read ({e})"))
        return report
    report.notes.append(f"undoing `{manifest['command']}` ({last.name})")
    redo = _apply(root, manifest, dry_run, force, report, "tag undo --force")
    if not dry_run and not report.failed:
        sync_folder(root)
        # kept for `tag redo` (with what the undo overwrote), not deleted: the next new edit clears it
        undone = own_folder(root, UNDONE)
        os.replace(last, undone / last.name)
        write_text(undone / (last.stem + REDO), json.dumps(redo), durable=True)
    return report


def _apply(root: Path, manifest: dict, dry_run: bool, force: bool, report: Report, forced: str) -> dict:
    """Put back what `manifest` holds (restore its captions, remove the ones it created); the
    outcomes go to `report`. Returns the manifest that puts back what this overwrote (a redo)."""
    restores, outcomes, before = [], {}, {}
    written = manifest["written"]
    since = f"changed since `{manifest['command']}` wrote it: not restored (`{forced}` restores it anyway)"
    for rel, data in manifest["changed"].items():
        path = _inside(root, rel)
        current = _read(path)  # read once: compared with the backup and the digest, kept for a redo
        if current == data:  # never written (its write failed) or already restored
            report.outcomes.append(Outcome(rel, OK, "unchanged"))
            continue
        if not force and _changed_since(current, written.get(rel)):
            report.outcomes.append(Outcome(rel, FAILED, since, {"changed_since": True}))
            continue
        report.outcomes.append(Outcome(rel, PLANNED if dry_run else "restored"))
        outcomes[path] = report.outcomes[-1]
        restores.append((path, data))
        before[rel] = current
    if not dry_run:
        mark_failed(outcomes, write_texts(restores))
    for rel in manifest["created"]:
        path = _inside(root, rel)
        current = _read(path)
        if not force and _changed_since(current, written.get(rel)):
            report.outcomes.append(Outcome(rel, FAILED, since.replace("restored", "removed"), {"changed_since": True}))
            continue
        before[rel] = current
        try:
            if not dry_run:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            report.outcomes.append(Outcome(rel, FAILED, f"cannot remove: {e.strerror or e}"))
            continue
        report.outcomes.append(Outcome(rel, PLANNED if dry_run else "removed"))
    back = {rel: data for rel, data in before.items() if data is not None}
    return {"command": f"redo {manifest['command']}", "changed": {rel: _stored(d) for rel, d in back.items()},
            "created": [rel for rel, data in before.items() if data is None],
            "written": {rel: digest(manifest["changed"][rel]) for rel in back if rel in manifest["changed"]}}


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def redo(root: Path, dry_run: bool = False, force: bool = False) -> Report:
    """Put back what the last `tag undo` reverted (its backup goes back too, so it can be undone
    again). A new caption edit clears what can be redone, as in any editor."""
    root = check_source(root)
    if dry_run:
        return _redo(root, dry_run, force)
    with folder_lock(root, "tag redo"):
        return _redo(root, dry_run, force)


def _redo(root: Path, dry_run: bool, force: bool) -> Report:
    folder = root / UNDONE
    if os.path.lexists(folder):
        own_folder(root, UNDONE)
    records = sorted(folder.glob("*" + REDO)) if folder.is_dir() else []
    if not records:
        raise UserError(f"nothing to redo in {root}: no undo since the last edit")
    last = records[0]  # undo walks back in time, redo forward: the oldest undone edit comes first
    original = last.with_name(last.name[:-len(REDO)] + ".json")
    report = Report("redo", str(root))
    try:
        manifest = _manifest(last)
        if any(_inside(root, rel) is None for rel in [*manifest["changed"], *manifest["created"]]):
            raise ValueError("it names files outside the dataset, or files that are not captions")
    except (OSError, ValueError) as e:
        raise UserError(f"{last}: cannot be redone ({e})") from None
    report.notes.append(f"redoing `{manifest['command'][len('redo '):]}` ({original.name})")
    _apply(root, manifest, dry_run, force, report, "tag redo --force")
    if not dry_run and not report.failed:
        sync_folder(root)
        if original.is_file():
            os.replace(original, own_folder(root, BACKUPS) / original.name)  # `tag undo` undoes it again
        last.unlink()
    return report


def _manifest(path: Path) -> dict:
    """A backup, checked whole before anything is restored from it."""
    manifest = json.loads(path.read_bytes())
    if not (isinstance(manifest, dict) and isinstance(manifest.get("command"), str)
            and isinstance(manifest.get("changed"), dict) and isinstance(manifest.get("created"), list)
            and all(isinstance(rel, str) for rel in manifest["created"])):
        raise ValueError("not a lorakit caption backup")
    manifest["changed"] = {rel: _restored(value) for rel, value in manifest["changed"].items()}
    written = manifest.setdefault("written", {})  # absent from backups made before lorakit checked
    if not (isinstance(written, dict) and all(isinstance(v, str) for v in written.values())):
        raise ValueError("its record of what was written is damaged")
    return manifest


def _inside(root: Path, rel) -> str | None:
    """The absolute path of `rel` if it names a caption file inside `root` (no absolute path, no
    `..` out, no symlinked folder leading out, nothing of lorakit's own folder, nothing but a
    .txt / .caption: a backup never holds an image, so one naming an image was not written by
    lorakit); else None. A symlink there is replaced or removed itself, never followed."""
    if not isinstance(rel, str) or not rel or "\0" in rel or os.path.isabs(rel) or Path(rel).parts[0] == BACKUPS.parts[0]:
        return None
    if Path(rel).suffix.lower() not in CAPTION_SUFFIXES:
        return None
    path = os.path.join(root, rel)
    real_root = os.path.realpath(root)
    real_parent = os.path.realpath(os.path.dirname(path))
    if os.path.commonpath([real_root, real_parent]) != real_root:
        return None
    if os.path.basename(path) in ("", ".", ".."):
        return None
    return os.path.join(real_parent, os.path.basename(path))


def mark_failed(outcomes: dict[str, Outcome], failed: dict[str, str]) -> None:
    for path, error in failed.items():
        outcomes[path].status, outcomes[path].message = FAILED, error
