"""What the review page knows of each image without opening it again: its size, format, curate
scan's noise score, curate dedupe's hashes, and a thumbnail. Made once per image content in a
process pool, kept under DIR/.lorakit/thumbs: `<digest>.jpg` thumbnails and `facts.json`, whose
entries are found again by (path, size, mtime) so a restart rereads nothing unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from lorakit.fsio import atomic_path, cache_dir, own_folder, write_text
from lorakit.images import DEFAULT_MAX_PIXELS, ImageError, flatten, load_image

THUMB_SIDE = 256
FOLDER = Path(".lorakit") / "thumbs"
VERSION = 1  # of what a facts entry holds: another version makes them again
DIGEST = re.compile(r"[0-9a-f]{32}")  # a thumbnail's name: blake2b-16 in hex, nothing else


@dataclass
class Facts:
    digest: str  # of the file's bytes: names the thumbnail
    width: int
    height: int
    format: str
    score: float | None  # curate scan's noise score (None: too small to judge)
    hash: int  # curate dedupe's pHash, and of the mirror image
    mirror: int
    colours: str  # dedupe's 8x8 colour thumbnail, hex
    file_size: int
    error: str = ""


def digest_of(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def make_facts(job: tuple[str, str, str]) -> dict:
    """(image path, thumbnail folder, the dataset's folder) -> a Facts dict: the pure per-image
    work, run in workers."""
    from lorakit.curate.dedupe import colour_thumbnail, hashes
    from lorakit.curate.scan import noise_score

    path, folder, root = Path(job[0]), Path(job[1]), Path(job[2])
    size = 0
    try:  # a bad file (a bomb, a broken chunk, a dangling link) fails alone: the page still starts
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device named .png: reading it would never end
            raise ImageError("not a regular file")
        if not path.resolve().is_relative_to(root.resolve()):  # a link out of DIR: not the dataset's to read
            raise ImageError("a link that leads outside the dataset")
        size = st.st_size
        digest = digest_of(path)
        with Image.open(path) as raw:
            fmt = raw.format or path.suffix.lstrip(".").upper()
        img = load_image(path, DEFAULT_MAX_PIXELS)
    except (ImageError, OSError, ValueError, RuntimeError, Image.DecompressionBombError) as exc:  # RuntimeError: a link loop
        return asdict(Facts("", 0, 0, "", None, 0, 0, "", size, str(exc) or type(exc).__name__))
    thumb = folder / f"{digest}.jpg"
    if not thumb.is_file():
        small = flatten(img.copy()).convert("RGB")
        small.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR, reducing_gap=2.0)
        with atomic_path(thumb) as tmp:
            small.save(tmp, format="JPEG", quality=85)
    h, m = hashes(img)
    return asdict(Facts(digest, img.width, img.height, fmt, noise_score(img), h, m, colour_thumbnail(img).hex(), size))


class FactsCache:
    """facts.json: {rel: [size, mtime_ns, facts]} with the format version."""

    def __init__(self, root: Path, elsewhere: bool = False):
        """`elsewhere`: kept in lorakit's user cache, not in DIR (review --read-only writes nothing there)."""
        self.root, self.elsewhere = root, elsewhere
        self.folder = cache_dir("review", hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]) \
            if elsewhere else root / FOLDER
        self.path = self.folder / "facts.json"
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.entries = data["entries"] if data.get("version") == VERSION else {}
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            self.entries = {}
        if not isinstance(self.entries, dict):
            self.entries = {}

    def stamp(self, rel: str) -> tuple[int, int]:
        try:
            st = os.stat(self.root / rel)
        except OSError:  # a dangling or looping link: its facts say so, as long as it stays that way
            return -1, -1
        return st.st_size, st.st_mtime_ns

    def get(self, rel: str) -> Facts | None:
        """The facts kept for this image while it is unchanged; None for any entry a damaged or
        crafted facts.json holds (made again, never trusted: its digest names a file served)."""
        entry = self.entries.get(rel)
        try:
            if tuple(entry[:2]) != self.stamp(rel):
                return None
            facts = Facts(**entry[2])
        except (TypeError, ValueError, KeyError, IndexError):
            return None
        return facts if facts.error or DIGEST.fullmatch(str(facts.digest)) else None

    def missing(self, rels: list[str]) -> list[str]:
        """The images to (re)make: new or changed, or whose thumbnail is gone."""
        out = []
        for rel in rels:
            found = self.get(rel)
            if found is None or (not found.error and not (self.folder / f"{found.digest}.jpg").is_file()):
                out.append(rel)
        return out

    def thumb(self, rel: str) -> Path | None:
        found = self.get(rel)
        path = self.folder / f"{found.digest}.jpg" if found and found.digest else None
        return path if path is not None and path.is_file() else None

    def put(self, rel: str, facts: dict) -> None:
        self.entries[rel] = [*self.stamp(rel), facts]

    def make_folder(self) -> None:
        if self.elsewhere:
            self.folder.mkdir(parents=True, exist_ok=True)
        else:
            own_folder(self.root, FOLDER)  # never through a link out of DIR

    def save(self) -> None:
        self.make_folder()
        write_text(self.path, json.dumps({"version": VERSION, "entries": self.entries}))
