"""`curate dedupe`: find near-duplicate images by perceptual hash, mirror images included.

The hash is the classic pHash: 32x32 greyscale, 2-D DCT, the 8x8 lowest frequencies compared
with their median -> 64 bits. Two images are duplicates when the Hamming distance between their
hashes, or between one and the other's mirror image, is at most the threshold. In each group the
file with the most pixels is kept (then the larger file, then the first name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lorakit.captions import caption_files
from lorakit.curate.defaults import DEDUPE_DISTANCE
from lorakit.discovery import mark_output
from lorakit.engine import RunOptions, analyse
from lorakit.fsio import move_file
from lorakit.images import ImageError, load_image
from lorakit.report import FAILED, OK, PLANNED, Outcome, Report, Section

DEFAULT_THRESHOLD = DEDUPE_DISTANCE
# pHash sees only grey levels, so a recoloured drawing hashes like the original; an 8x8 colour
# thumbnail must agree too, in every cell (mean channel difference, in levels). A recolour is a
# different image to train on.
COLOR_TOLERANCE = 24.0
THUMB = 8
KEPT, DUPLICATE, MOVED = "kept", "duplicate", "moved"


def phash(grey32: np.ndarray) -> int:
    dct = cv2.dct(grey32)[:8, :8].flatten()
    bits = dct > np.median(dct)
    return int(np.packbits(bits).view(">u8")[0])


def hashes(img: Image.Image) -> tuple[int, int]:
    """pHash of the image and of its mirror image."""
    grey = np.asarray(img.convert("L"), dtype=np.float32)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA)
    return phash(small), phash(np.ascontiguousarray(small[:, ::-1]))


def colour_thumbnail(img: Image.Image) -> bytes:
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    return cv2.resize(rgb, (THUMB, THUMB), interpolation=cv2.INTER_AREA).round().astype(np.uint8).tobytes()


@dataclass
class Fingerprint:
    width: int
    height: int
    size: int
    hash: int
    mirror: int
    colours: bytes  # THUMB x THUMB RGB thumbnail

    @classmethod
    def of(cls, img: Image.Image, file_size: int) -> "Fingerprint":
        return cls(img.width, img.height, file_size, *hashes(img), colour_thumbnail(img))

    def colour_difference(self, other: "Fingerprint") -> float:
        """The largest per-cell difference, the mirror image considered."""
        a = np.frombuffer(self.colours, np.uint8).reshape(THUMB, THUMB, 3).astype(np.float32)
        b = np.frombuffer(other.colours, np.uint8).reshape(THUMB, THUMB, 3).astype(np.float32)
        return float(min(np.abs(a - b).mean(-1).max(), np.abs(a - b[:, ::-1]).mean(-1).max()))


def fingerprint_file(path: Path, max_pixels: int) -> Fingerprint | str:
    try:
        img = load_image(path, max_pixels)
    except ImageError as exc:
        return str(exc)
    return Fingerprint.of(img, path.stat().st_size)


class Fingerprinter:
    def __init__(self, max_pixels: int):
        self.max_pixels = max_pixels

    def __call__(self, path: Path) -> Fingerprint | str:
        return fingerprint_file(path, self.max_pixels)


def group_duplicates(prints: list[Fingerprint], threshold: int, progress=None) -> list[list[int]]:
    """Groups (lists of indices into `prints`, keeper first) of two or more near-duplicates.
    `progress(stage, done, total)`: told every 256 images (the review page shows it)."""
    n = len(prints)
    if n < 2:
        return []
    h = np.array([p.hash for p in prints], dtype=np.uint64)
    m = np.array([p.mirror for p in prints], dtype=np.uint64)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n - 1):
        if progress is not None and i % 256 == 0:
            progress("comparing images", i, n)
        dist = np.minimum(np.bitwise_count(h[i] ^ h[i + 1:]), np.bitwise_count(h[i] ^ m[i + 1:]))
        for j in np.nonzero(dist <= threshold)[0] + i + 1:
            if prints[i].colour_difference(prints[j]) <= COLOR_TOLERANCE:
                parent[root(int(j))] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    ordered = []
    for members in groups.values():
        if len(members) > 1:
            members.sort(key=lambda i: (-prints[i].width * prints[i].height, -prints[i].size, i))
            ordered.append(members)
    return sorted(ordered, key=lambda g: g[0])


def distance(a: Fingerprint, b: Fingerprint) -> int:
    return min(bin(a.hash ^ b.hash).count("1"), bin(a.hash ^ b.mirror).count("1"))


def dedupe_folder(src: Path, options: RunOptions, threshold: int = DEFAULT_THRESHOLD,
                  move_to: Path | None = None) -> Report:
    src_abs, rels, results = analyse(src, Fingerprinter(options.max_pixels), options, "dedupe")
    report = Report("dedupe", str(src), str(move_to) if move_to else None)
    good = [(rel, fp) for rel, fp in zip(rels, results) if isinstance(fp, Fingerprint)]
    status = {rel.as_posix(): OK for rel, _ in good}
    messages: dict[str, str] = {}
    for rel, fp in zip(rels, results):
        if not isinstance(fp, Fingerprint):
            report.outcomes.append(Outcome(rel.as_posix(), FAILED, fp))
    rows = []
    groups = group_duplicates([fp for _, fp in good], threshold)
    if move_to is not None and groups and not options.dry_run:
        mark_output(move_to, "dedupe")
    for number, members in enumerate(groups, 1):
        keeper_rel, keeper = good[members[0]]
        status[keeper_rel.as_posix()] = KEPT
        rows.append([number, "keep", keeper_rel.as_posix(), f"{keeper.width}x{keeper.height}", 0])
        for i in members[1:]:
            rel, fp = good[i]
            key = rel.as_posix()
            status[key], messages[key] = DUPLICATE, f"duplicate of {keeper_rel.as_posix()}"
            if move_to is not None:
                if options.dry_run:
                    status[key] = PLANNED
                    messages[key] = f"would move to {move_to / rel}"
                else:
                    try:
                        _move_with_captions(src_abs / rel, move_to / rel)
                        status[key] = MOVED
                    except OSError as exc:
                        status[key], messages[key] = FAILED, f"not moved: {exc}"
            rows.append([number, "duplicate", key, f"{fp.width}x{fp.height}", distance(keeper, fp)])
    report.outcomes += [Outcome(k, v, messages.get(k, "")) for k, v in status.items()]
    report.outcomes.sort(key=lambda o: o.path)
    report.sections.append(Section(f"near-duplicate groups (distance <= {threshold})",
                                   ["group", "role", "image", "size", "distance"], rows))
    report.data["groups"] = [[good[i][0].as_posix() for i in g] for g in groups]
    if groups and move_to is None:
        report.notes.append("nothing was moved; pass --move-to DIR to move the duplicates")
    return report


def _move_with_captions(image: Path, dst: Path) -> None:
    """Move an image and its captions, or nothing at all if any target already exists."""
    pairs = [(c, dst.with_suffix(c.suffix)) for c in caption_files(image)] + [(image, dst)]
    for _, target in pairs:
        if target.exists():
            raise FileExistsError(f"{target} already exists")
    for source, target in pairs:
        move_file(source, target)
