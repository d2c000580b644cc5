"""Editing captions in place, which is where every trainer reads them (docs/architecture.md): one
mechanism for every command that rewrites captions, with a `--dry-run` diff and a backup of
each changed file, so `tag undo DIR` restores the last change.

The backup is written before any caption (tagging/backups.py, which also undoes). Only line 1
(the tags) is ever rewritten; every other byte of a caption stays as it was
(lorakit/captions.py). A command holds the dataset's lock (lorakit/locks.py) from its first read
to its last write, so two never edit one folder at once.
"""

from __future__ import annotations

import errno
import gc
import os
import stat
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from lorakit.captions import CAPTION_SUFFIXES, format_tags, join_caption, parse_tags, split_caption
from lorakit.discovery import check_source, discover_names
from lorakit.errors import UserError
from lorakit.fsio import sync_folder, write_texts
from lorakit.parallel import default_jobs, forked_map
from lorakit.report import FAILED, OK, PLANNED, Outcome, Report, Section
from lorakit.shards import Shard, shard_lock
from lorakit.tagging.backups import Backup, mark_failed

CHANGED, CREATED = "changed", "created"

# (image path relative to DIR, current tags) -> new tags, or None to leave the caption alone
Edit = Callable[[Path, list[str]], "list[str] | None"]
Progress = Callable[[str, int, int], None]


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


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
UTF16 = (b"\xff\xfe", b"\xfe\xff")  # a caption saved as UTF-16 (Windows Notepad's "Unicode")


def _read_chunk(paths: list[str | None]) -> list[bytes | OSError | None]:
    out: list[bytes | OSError | None] = []
    for path in paths:
        try:
            if path is None:
                out.append(None)
            else:  # never through a link: the edit would replace the link, or write where it leads
                # O_NONBLOCK: a FIFO named .txt opens at once (and is refused) instead of waiting forever
                fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
                with open(fd, "rb") as f:  # bytes, decoded by the caller: faster than text mode
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise OSError(errno.EINVAL, "not a regular file")
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
            pure: bool = False, progress: Progress | None = None, share: Shard = Shard()) -> Report:
    """Apply `edit` to the caption of every image under `root`. Captions that do not exist
    are only created when `create` (tag auto, tag edit --add). `pure`: `edit` has no side
    effects, so large folders are read and edited on every core. Every new caption is computed
    first; the backup is written before any caption, so an interrupted run can be undone.
    `progress(stage, done, total)`: told as captions are read, and before and after the writes
    (the review page shows it for edits of 20,000 captions). `share`: only the captions of that
    share's images, under the lock the shares hold together (lorakit/shards.py)."""
    root = check_source(root)
    collecting = gc.isenabled()
    gc.disable()  # 100,000s of small lists and outcomes, no cycles: the collector's repeated
    try:          # scans of them cost 2.5 s of a 12 s run over 100,000 captions (measured)
        if dry_run:
            return _rewrite(root, command, edit, dry_run, create, pure, progress, share)
        with shard_lock(root, f"tag {command}", share):
            return _rewrite(root, command, edit, dry_run, create, pure, progress, share)
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


def _rewrite(root: Path, command: str, edit: Edit, dry_run: bool, create: bool, pure: bool,
             progress: Progress | None = None, share: Shard = Shard()) -> Report:
    report = Report(command, str(root))
    backup = Backup(root, command if share.whole else f"{command}-share{share.label()}")
    diff_rows, changes, outcomes = [], [], {}
    found = [t for t in targets(root) if (t.exists or create) and share.mine(t.image.as_posix())]
    tell = progress or (lambda stage, done, total: None)
    for n, (target, result) in enumerate(zip(found, _edited(found, edit, pure))):
        if n % 500 == 0:
            tell("reading captions", n, len(found))
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
        backup.save(name, data, new)
        changes.append((target.caption, new))
        outcomes[target.caption] = report.outcomes[-1]
    if changes and not dry_run:
        tell("writing captions", 0, len(changes))
        backup.commit()
        failed = write_texts(changes)
        tell("writing captions", len(changes), len(changes))
        mark_failed(outcomes, failed)
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
