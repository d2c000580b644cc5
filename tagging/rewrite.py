"""Editing captions in place, which is where every trainer reads them (docs/architecture.md): one
mechanism for every command that rewrites captions, with a `--dry-run` diff and a backup of
each changed file, so `tag undo DIR` restores the last change.

Backups live in DIR/.lorakit/backups/<time>-<command>.json: the previous bytes of every changed
caption (as text where they are UTF-8, else base64) and the names of the captions that did not
exist before, in one file (captions are small; one file per command, not one per caption, keeps
a 100,000-caption edit fast). Only line 1 (the tags) is ever rewritten; every other byte of a
caption stays as it was (lorakit/captions.py). A command holds the dataset's lock
(lorakit/locks.py) from its first read to its last write, so two never edit one folder at once.
"""

from __future__ import annotations

import base64
import errno
import gc
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from lorakit.captions import CAPTION_SUFFIXES, format_tags, join_caption, parse_tags, split_caption
from lorakit.discovery import check_source, discover_names
from lorakit.errors import UserError
from lorakit.fsio import own_folder, sync_folder, write_text, write_texts
from lorakit.locks import folder_lock
from lorakit.parallel import default_jobs, forked_map
from lorakit.report import FAILED, OK, PLANNED, Outcome, Report, Section

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

    def save(self, rel: str, data: bytes | None) -> None:
        """`data`: the caption's previous bytes, or None if it did not exist."""
        if data is None:
            self.created.append(rel)
        else:
            self.changed[rel] = data

    def forget(self, rels: set[str]) -> None:
        """Drop captions whose write failed (they still hold what the backup would restore), so
        that an undo does not stop on them."""
        self.changed = {rel: data for rel, data in self.changed.items() if rel not in rels}
        self.created = [rel for rel in self.created if rel not in rels]

    def commit(self) -> None:
        """Write the backup (on disk before this returns), or remove it when it holds nothing.
        A backup that cannot be written is a UserError: the edit it would protect must not run."""
        if not (self.changed or self.created):
            self.path.unlink(missing_ok=True)
            return
        manifest = {"command": self.command, "changed": {rel: _stored(data) for rel, data in self.changed.items()},
                    "created": self.created}
        own_folder(self.root, BACKUPS)  # never through a link out of the dataset
        try:
            write_text(self.path, json.dumps(manifest), durable=True)
        except OSError as e:
            raise UserError(f"cannot write the backup {self.path}: {e.strerror or e}; no caption was changed") from None


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


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
UTF16 = (b"\xff\xfe", b"\xfe\xff")  # a caption saved as UTF-16 (Windows Notepad's "Unicode")


def _read_chunk(paths: list[str | None]) -> list[bytes | OSError | None]:
    out: list[bytes | OSError | None] = []
    for path in paths:
        try:
            if path is None:
                out.append(None)
            else:  # never through a link: the edit would replace the link, or write where it leads
                fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
                with open(fd, "rb") as f:  # bytes, decoded by the caller: faster than text mode
                    out.append(f.read())
        except OSError as e:
            out.append(e)
    return out


def _read_ahead(paths: list[str | None], chunk: int = 512) -> Iterator[bytes | OSError | None]:
    """Each file's bytes (None for None, the error for an unreadable one), in order, read on a
    thread a few chunks ahead: the reads are system calls that release the GIL, so on a
    second core they overlap the editing (~1.5 s of a 100,000-caption prune)."""
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    with ThreadPoolExecutor(1) as pool:
        pending = deque(pool.submit(_read_chunk, c) for c in chunks[:4])
        for i in range(len(chunks)):
            done = pending.popleft().result()
            if i + 4 < len(chunks):
                pending.append(pool.submit(_read_chunk, chunks[i + 4]))
            yield from done


PARALLEL_FROM = 5000  # captions: below this, starting worker processes costs more than it saves
SPAN = 2000  # captions per task sent to a worker


def rewrite(root: Path, command: str, edit: Edit, dry_run: bool, create: bool = False,
            pure: bool = False) -> Report:
    """Apply `edit` to the caption of every image under `root`. Captions that do not exist
    are only created when `create` (tag auto, tag edit --add). `pure`: `edit` has no side
    effects, so large folders are read and edited on every core. Every new caption is computed
    first; the backup is written before any caption, so an interrupted run can be undone."""
    root = check_source(root)
    collecting = gc.isenabled()
    gc.disable()  # 100,000s of small lists and outcomes, no cycles: the collector's repeated
    try:          # scans of them cost 2.5 s of a 12 s run over 100,000 captions (measured)
        if dry_run:
            return _rewrite(root, command, edit, dry_run, create, pure)
        with folder_lock(root, f"tag {command}"):
            return _rewrite(root, command, edit, dry_run, create, pure)
    finally:
        if collecting:
            gc.enable()


def _unread(error: Exception) -> str:
    if isinstance(error, UnicodeError):
        return "saved as UTF-16, which trainers do not read: not edited (save it as UTF-8)"
    if getattr(error, "errno", None) == errno.ELOOP:
        return "a link: not edited (lorakit edits no caption through a link; replace it with a copy of its file)"
    return f"cannot read: {error.strerror or error}"


def shown(tags: list[str]) -> list[str]:
    """Tags for a report: bytes that are not UTF-8 (kept as surrogates, to be written back as
    they were) shown as U+FFFD, which any terminal and any JSON reader take."""
    if all(t.isascii() for t in tags):
        return tags
    return [t.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for t in tags]


def _edited(found: list[Target], edit: Edit, pure: bool) -> Iterator[OSError | tuple | None]:
    """For each target in order: the read error, None when `edit` leaves it alone, else
    (previous bytes or None, tags before, tags after, the new bytes)."""
    def edit_span(span: tuple[int, int]) -> list[OSError | tuple | None]:
        part = found[span[0]:span[1]]
        out: list[OSError | tuple | None] = []
        for target, data in zip(part, _read_ahead([t.caption if t.exists else None for t in part])):
            if isinstance(data, OSError):
                out.append(data)
                continue
            if data is not None and data.startswith(UTF16):
                out.append(UnicodeError("UTF-16"))
                continue
            bom, line, rest = split_caption(data) if data is not None else (b"", "", None)
            before = parse_tags(line)
            after = edit(target.image, before)
            if after is None or after == before:
                out.append(None)
                continue
            new = join_caption(bom, after, rest) if rest is not None else format_tags(after).encode("utf-8")
            out.append((data, before, after, new))
        return out

    jobs = default_jobs() if pure and len(found) >= PARALLEL_FROM else 1
    spans = [(i, min(i + SPAN, len(found))) for i in range(0, len(found), SPAN)]
    for part in forked_map(edit_span, spans, jobs):
        yield from part


def _rewrite(root: Path, command: str, edit: Edit, dry_run: bool, create: bool, pure: bool) -> Report:
    report = Report(command, str(root))
    backup = Backup(root, command)
    diff_rows, changes, outcomes = [], [], {}
    found = [t for t in targets(root) if t.exists or create]
    for target, result in zip(found, _edited(found, edit, pure)):
        name = target.name
        if isinstance(result, (OSError, UnicodeError)):
            report.outcomes.append(Outcome(name, FAILED, _unread(result)))
            continue
        if result is None:
            report.outcomes.append(Outcome(name, OK, "unchanged"))
            continue
        data, before, after, new = result
        after_set, before_set = set(after), set(before)
        removed = [t for t in before if t not in after_set]
        added = [t for t in after if t not in before_set]
        diff_rows.append([name, ", ".join(shown(removed)), ", ".join(shown(added))])
        status = PLANNED if dry_run else CHANGED if target.exists else CREATED
        report.outcomes.append(Outcome(name, status, "would change" if dry_run else "",
                                       {"before": shown(before), "after": shown(after)}))
        backup.save(name, data)
        changes.append((target.caption, new))
        outcomes[target.caption] = report.outcomes[-1]
    if changes and not dry_run:
        backup.commit()
        failed = write_texts(changes)
        _mark_failed(outcomes, failed)
        if failed:  # the backup keeps only what was written, so an undo is not stopped by the rest
            backup.forget({outcomes[path].path for path in failed})
            try:
                backup.commit()
            except UserError:
                report.notes.append(f"{backup.path.relative_to(root)} still lists the captions that failed")
        sync_folder(root)
        if backup.changed or backup.created:
            report.notes.append(f"previous captions kept in {backup.path.relative_to(root)}; "
                                f"`tag undo {report.src}` restores them")
    report.sections.append(Section("would change" if dry_run else "changes",
                                   ["caption", "removed", "added"], diff_rows))
    return report


UNREADABLE = ".unreadable"  # the suffix a backup that cannot be read is set aside under


def undo(root: Path, dry_run: bool = False) -> Report:
    """Restore the captions the last caption-rewriting command changed, and remove the ones it
    created; that backup is then deleted, so the next undo goes one step further back. Every
    path in the backup must lie inside `root` (a shared dataset's `.lorakit/` is not trusted to
    name files elsewhere)."""
    root = check_source(root)
    if dry_run:
        return _undo(root, dry_run)
    with folder_lock(root, "tag undo"):
        return _undo(root, dry_run)


def _undo(root: Path, dry_run: bool) -> Report:
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
            raise ValueError(f"it names files outside the dataset: {', '.join(outside[:3])}")
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
    restores, outcomes = [], {}
    for rel, data in manifest["changed"].items():
        path = _inside(root, rel)
        if _holds(path, data):  # never written (its write failed) or already restored
            report.outcomes.append(Outcome(rel, OK, "unchanged"))
            continue
        report.outcomes.append(Outcome(rel, PLANNED if dry_run else "restored"))
        outcomes[path] = report.outcomes[-1]
        restores.append((path, data))
    if not dry_run:
        _mark_failed(outcomes, write_texts(restores))
    for rel in manifest["created"]:
        path = _inside(root, rel)
        try:
            if not dry_run:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            report.outcomes.append(Outcome(rel, FAILED, f"cannot remove: {e.strerror or e}"))
            continue
        report.outcomes.append(Outcome(rel, PLANNED if dry_run else "removed"))
    if not dry_run and not report.failed:
        sync_folder(root)
        last.unlink()  # kept while a caption could not be restored, so undo can be run again
    return report


def _holds(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data
    except OSError:
        return False


def _manifest(path: Path) -> dict:
    """A backup, checked whole before anything is restored from it."""
    manifest = json.loads(path.read_bytes())
    if not (isinstance(manifest, dict) and isinstance(manifest.get("command"), str)
            and isinstance(manifest.get("changed"), dict) and isinstance(manifest.get("created"), list)
            and all(isinstance(rel, str) for rel in manifest["created"])):
        raise ValueError("not a lorakit caption backup")
    manifest["changed"] = {rel: _restored(value) for rel, value in manifest["changed"].items()}
    return manifest


def _inside(root: Path, rel) -> str | None:
    """The absolute path of `rel` if it names a file inside `root` (no absolute path, no `..`
    out, no symlinked folder leading out, nothing of lorakit's own folder); else None. A symlink
    there is replaced or removed itself, never followed."""
    if not isinstance(rel, str) or not rel or "\0" in rel or os.path.isabs(rel) or Path(rel).parts[0] == BACKUPS.parts[0]:
        return None
    path = os.path.join(root, rel)
    real_root = os.path.realpath(root)
    real_parent = os.path.realpath(os.path.dirname(path))
    if os.path.commonpath([real_root, real_parent]) != real_root:
        return None
    if os.path.basename(path) in ("", ".", ".."):
        return None
    return os.path.join(real_parent, os.path.basename(path))


def _mark_failed(outcomes: dict[str, Outcome], failed: dict[str, str]) -> None:
    for path, error in failed.items():
        outcomes[path].status, outcomes[path].message = FAILED, error
