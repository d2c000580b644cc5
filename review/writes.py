"""What the review page changes, through the code `tag edit` uses: every caption write is atomic
and backed up in DIR/.lorakit/backups (tagging/rewrite.py), so `tag undo DIR` reverts web edits
like any other. An edit is refused when the caption changed on disk since the page read it.
Excluding an image moves it (and its captions) to DIR/.lorakit/excluded/, never deletes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path

from lorakit.captions import CAPTION_SUFFIXES, format_tags, join_caption, parse_tags, split_caption
from lorakit.errors import UserError
from lorakit.fsio import move_file, own_folder, write_text
from lorakit.locks import folder_lock
from lorakit.report import PLANNED
from lorakit.review.dataset import Dataset, caption_text, caption_version
from lorakit.tagging.backups import Backup
from lorakit.tagging.edit import EditOps, apply
from lorakit.tagging.rewrite import CHANGED, CREATED, rewrite

EXCLUDED = Path(".lorakit") / "excluded"


@dataclass
class Conflict(Exception):
    disk: str | None  # the caption as it is now (None: deleted)
    yours: str


def save_caption(data: Dataset, rel: str, seen: str, text: str) -> str:
    """Write one caption if it is still the one the page saw (`seen`: its version); returns the
    new version. `text` is the whole caption as the page's box holds it (caption_text): line 1
    the tags, the further lines as typed. The previous bytes go into a backup first."""
    entry = data.entries[rel]
    path = data.root / entry.caption_rel
    if path.is_symlink():  # as tag edit: the write would replace the link, or land where it leads
        raise UserError(f"{entry.caption_rel} is a link: not edited (replace it with a copy of its file)")
    with folder_lock(data.root, "lorakit review"):
        try:
            old = path.read_bytes()  # read once: checked against the page's version, then backed up
        except FileNotFoundError:
            old = None
        if (caption_version(old) if old is not None else "") != seen:
            data.refresh(rel)  # the page is shown the disk's caption, and may save over it knowingly
            raise Conflict(entry.text if entry.version else None, text)
        new = caption_bytes(old, text)
        if old == new:
            return seen
        backup = Backup(data.root, "review-edit")
        backup.save(entry.caption_rel, old, new)
        backup.commit()
        write_text(path, new, like=path.stat() if old is not None else None)
    data.refresh(rel)  # reads what was written: its version is the one returned
    return entry.version


def caption_bytes(old: bytes | None, text: str) -> bytes:
    """The file for what the page's box holds: line 1's tags normalised (", ", a tag typed twice
    written once), the further lines as typed. Bytes the user did not change stay: the BOM, the
    line ending style, and the further lines byte for byte while their text is what the page
    showed (invalid UTF-8 in them included)."""
    first, _, further = text.replace("\r\n", "\n").partition("\n")
    tags = apply(parse_tags(first), EditOps())
    if old is None:
        return (format_tags(tags) + (further + "\n" if further else "")).encode("utf-8")
    bom, _, rest = split_caption(old)
    shown_rest = caption_text(rest)[1:] if rest.startswith((b"\n", b"\r\n")) else ""
    if further != shown_rest:
        newline = b"\r\n" if rest.startswith(b"\r\n") else b"\n"
        ending = newline if (rest.endswith(b"\n") or not rest) and (further or rest) else b""
        lines = further.split("\n") if further else []
        rest = b"".join(newline + line.encode("utf-8") for line in lines) + ending
    return join_caption(bom, tags, rest)


def bulk_edit(data: Dataset, rels: list[str], ops: EditOps, dry_run: bool = False,
              progress=None) -> tuple[list[str], list, list[str]]:
    """`tag edit`'s operations on these images' captions, through `tag edit`'s own rewrite (one
    backup, written before any caption): the images whose caption changed (`dry_run`: would
    change), and the diff rows (caption, removed, added). Images without a caption get one only
    when tags are added."""
    chosen = set(rels)
    report = rewrite(data.root, "review-bulk", lambda image, tags: apply(tags, ops) if image.as_posix() in chosen
                     else None, dry_run=dry_run, create=bool(ops.add), progress=progress)
    # a caption is named by its image's path without the suffix (it may be a .caption the page has not seen yet)
    by_stem = {str(Path(rel).with_suffix("")): rel for rel in rels}
    mine = lambda o: by_stem.get(str(Path(o.path).with_suffix("")))  # noqa: E731
    written = {mine(o): o.path for o in report.outcomes if o.status in (CHANGED, CREATED, PLANNED) and mine(o)}
    changed = list(written)
    if not dry_run:  # a caption written under a name the page did not know (a new .caption): read the folder
        if any(data.entries[rel].caption_rel != path for rel, path in written.items()):
            data.reload()
        else:
            for rel in changed:
                data.refresh(rel)
    failed = [o for o in report.failed if mine(o)]  # a caption of another image that cannot be read is not this edit's
    if failed and not changed:
        raise UserError(f"{len(failed)} captions could not be {'read' if dry_run else 'written'}: "
                        + "; ".join(f"{o.path}: {o.message}" for o in failed[:5]))
    return changed, report.sections[0].rows if report.sections else [], [f"{o.path}: {o.message}" for o in failed]


def tag_auto(data: Dataset, rels: list[str], options, mode: str, general: float | None, progress=None) -> dict:
    """`tag auto` on these images, as the command runs it (its composition, its backup: `tag
    undo` reverts it), with the review's tagger options; `mode`: how a caption that exists
    takes the tags (merge keeps the hand-written ones)."""
    from dataclasses import replace

    from lorakit.tagging.auto import auto_tag

    if not rels:
        raise UserError("no images to tag")
    opts = replace(options, writing=replace(options.writing, mode=mode), only=[Path(r) for r in rels],
                   general=general if general is not None else options.general, dry_run=False,
                   progress=False, on_progress=progress)
    try:
        report = auto_tag(data.root, opts)
    except UserError as exc:  # "pass --model-dir" means, on this page, to start the server with it
        raise UserError(f"{exc}. For this page: start `lorakit review` with --model-dir FOLDER or --model NAME"
                        if "--model" in str(exc) else str(exc)) from None
    data.reload()
    changed = [o.path for o in report.outcomes if o.status in (CHANGED, CREATED)]
    failed = [f"{o.path}: {o.message}" for o in report.failed]
    return {"changed": changed, "of": len(rels), "failed": failed[:20], "notes": report.notes}


def _siblings(image: Path) -> tuple[list[Path], list[Path]]:
    """(the image and the captions that move with it, the captions that stay because another
    image of the same name (x.png beside x.jpg) reads them too)."""
    captions = [p for p in (image.with_suffix(s) for s in CAPTION_SUFFIXES) if p.is_file()]
    shared = any(p != image and p.suffix.lower() not in CAPTION_SUFFIXES and not p.name.startswith(".")
                 for p in image.parent.glob(f"{glob_escape(image.stem)}.*"))
    return ([image], captions) if shared else ([image, *captions], [])


def _inside(root: Path, path: Path) -> bool:
    """Whether `path`'s folder is inside `root` once links are followed (a folder of DIR that is a
    link elsewhere is not DIR's)."""
    real_root = root.resolve()
    try:
        return path.parent.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # a link loop
        return False


def _moves(pairs: list[tuple[Path, Path]], root: Path) -> None:
    """Move each (source, target), every target checked first: nothing moves unless all can."""
    for src, dst in pairs:
        if not _inside(root, src) or not _inside(root, dst):
            raise UserError(f"{dst.relative_to(root)}: its folder leads outside the dataset; nothing was moved")
        if os.path.lexists(dst):
            raise UserError(f"{dst.relative_to(root)} exists: move it away first; nothing was moved")
    for src, dst in pairs:
        move_file(src, dst)


def exclude(data: Dataset, rel: str) -> list[str]:
    """Move an image and its captions to .lorakit/excluded; returns notes (a caption another
    image shares stays, and says so)."""
    image = data.root / rel
    moving, staying = _siblings(image)
    try:
        with folder_lock(data.root, "lorakit review"):
            own_folder(data.root, EXCLUDED, Path(rel).parent)  # never through a link out of DIR
            _moves([(p, data.root / EXCLUDED / p.relative_to(data.root)) for p in moving], data.root)
    finally:
        data.reload()  # what is on disk now, whatever happened
    return [f"{p.relative_to(data.root).as_posix()} stays: another image of that name reads it too" for p in staying]


def excluded(root: Path) -> list[str]:
    from lorakit.discovery import discover_names

    folder = root / EXCLUDED
    if not os.path.lexists(folder):
        return []
    own_folder(root, EXCLUDED)  # a link out of DIR: refused (UserError), never listed
    return discover_names(folder)


def restore(data: Dataset, rel: str) -> None:
    if rel not in excluded(data.root):
        raise UserError(f"{rel} is not among the excluded images")
    image = data.root / EXCLUDED / rel
    moving, _ = _siblings(image)
    try:
        with folder_lock(data.root, "lorakit review"):
            own_folder(data.root, EXCLUDED, Path(rel).parent)  # every folder a real one, none a link
            _moves([(p, data.root / p.relative_to(data.root / EXCLUDED)) for p in moving], data.root)
    finally:
        data.reload()
