"""Finding the images under a source folder, and refusing folder pairs that could lose data."""

from __future__ import annotations

import os
from pathlib import Path

from lorakit.errors import UserError
from lorakit.images import IMAGE_SUFFIXES

# Written into every output folder, so that a later run over a parent folder does not treat our
# own outputs as inputs.
OUTPUT_MARKER = ".lorakit-output"


class FolderError(UserError):
    """A problem with the folders given on the command line (exit code 2, nothing processed)."""


def check_source(src: Path) -> Path:
    if not src.exists():
        raise FolderError(f"{src} does not exist")
    if not src.is_dir():
        raise FolderError(f"{src} is not a folder")
    return src.resolve()


def check_pair(src: Path, dst: Path) -> tuple[Path, Path]:
    """Resolve SRC and DST and refuse any overlap: DST inside SRC would feed outputs back in as
    inputs on the next run, and SRC inside DST could see sources overwritten."""
    src = check_source(src)
    dst_resolved = dst.resolve()
    if dst_resolved == src:
        raise FolderError(f"destination {dst} is the source folder; sources are never modified")
    if dst_resolved.is_relative_to(src):
        raise FolderError(f"destination {dst} is inside the source folder {src}; pick a folder outside it")
    if src.is_relative_to(dst_resolved):
        raise FolderError(f"source {src} is inside the destination folder {dst}; pick a folder outside it")
    if dst_resolved.exists() and not dst_resolved.is_dir():
        raise FolderError(f"destination {dst} exists and is not a folder")
    return src, dst_resolved


def mark_output(dst: Path, stage: str) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    marker = dst / OUTPUT_MARKER
    if not marker.exists():
        marker.write_text(f"written by lorakit {stage}\n", encoding="utf-8")


def discover(src: Path, exclude: Path | None = None) -> list[Path]:
    """Image paths under `src`, relative to it, sorted; hidden files and folders (".git",
    ".lorakit", our temporary files) and folders marked as lorakit outputs are skipped."""
    return [Path(p) for p in discover_names(src, exclude)]


def discover_names(src: Path, exclude: Path | None = None) -> list[str]:
    """`discover` as POSIX strings, for callers that handle 100,000s of files: no Path objects
    are made (they cost more than the listing itself)."""
    found: list[str] = []
    base = os.fspath(src)
    skip = os.fspath(exclude) if exclude is not None else None
    for root, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if not d.startswith(".")
                   and os.path.join(root, d) != skip
                   and not os.path.exists(os.path.join(root, d, OUTPUT_MARKER))]
        prefix = os.path.relpath(root, base).replace(os.sep, "/") + "/" if root != base else ""
        found.extend(prefix + f for f in files
                     if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES)
    found.sort()
    return found
