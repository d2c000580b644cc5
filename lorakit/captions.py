"""The caption-file and `N_name` folder conventions (docs/architecture.md, "The folder contract between stages").

A caption is a UTF-8 text file beside its image, with the image's stem and the suffix `.txt`
(`.caption` is read too). Line 1 holds the tags, separated by ", "; further lines hold sentences
or alternatives (kohya's wildcard captions pick one line per epoch). A command that changes the
tags rewrites line 1 only: every other byte (a BOM, CRLF line endings, the further lines, bytes
that are not UTF-8) stays as it was (`split_caption`, `join_caption`).
"""

from __future__ import annotations

import re
from pathlib import Path

from lorakit.fsio import write_text

CAPTION_SUFFIXES = (".txt", ".caption")
SEPARATOR = ", "
_REPEATS_FOLDER = re.compile(r"^(\d+)_(.+)$")


def caption_files(image: Path) -> list[Path]:
    """The caption files that belong to `image`, in preference order."""
    return [p for p in (image.with_suffix(s) for s in CAPTION_SUFFIXES) if p.is_file()]


def parse_tags(text: str) -> list[str]:
    """The tags of a caption's text: its line 1 (a blank line 1 holds none, whatever follows)."""
    first_line = text.lstrip("\ufeff").split("\n", 1)[0]
    return [t.strip() for t in first_line.split(",") if t.strip()]


BOM = b"\xef\xbb\xbf"


def split_caption(data: bytes) -> tuple[bytes, str, bytes]:
    """A caption file's bytes as (BOM, line 1, the rest): line 1 decoded (bytes that are not
    UTF-8 kept as surrogates, so they are written back as they were), the rest (line 1's
    ending, CRLF or LF, and every further line) left as bytes. `join_caption` puts a caption
    back together with new tags."""
    bom = BOM if data.startswith(BOM) else b""
    end = data.find(b"\n", len(bom))
    end = len(data) if end < 0 else end - 1 if data[end - 1:end] == b"\r" and end > len(bom) else end
    line = data[len(bom):end]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        text = line.decode("utf-8", "surrogateescape")
    return bom, text, data[end:]


def join_caption(bom: bytes, tags: list[str], rest: bytes) -> bytes:
    return bom + SEPARATOR.join(tags).encode("utf-8", "surrogateescape") + rest


def read_tags(caption: Path) -> list[str]:
    return parse_tags(caption.read_text(encoding="utf-8-sig", errors="replace"))


def format_tags(tags: list[str]) -> str:
    return SEPARATOR.join(tags) + "\n"


def copy_with_tags(src: Path, dst: Path, extra: list[str]) -> None:
    """Copy a caption file, appending tags it does not already have to line 1 (every other byte
    copied as it is)."""
    bom, line, rest = split_caption(src.read_bytes())
    tags = parse_tags(line)
    tags += [t for t in extra if t not in tags]
    write_text(dst, join_caption(bom, tags, rest))


def write_new_caption(dst: Path, tags: list[str]) -> None:
    write_text(dst, format_tags(tags))


def parse_repeats_folder(name: str) -> tuple[int, str] | None:
    """`10_mizutsune` -> (10, "mizutsune"), kohya's convention; None for other names."""
    match = _REPEATS_FOLDER.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def instance_tokens(image: Path) -> list[str]:
    """The names of the `N_name` folders an image sits in, outermost first."""
    return folder_instance_tokens(image.parent)


def folder_instance_tokens(folder: Path) -> list[str]:
    """The names of the `N_name` folders in a folder's path, outermost first."""
    return [p[1] for part in folder.parts if (p := parse_repeats_folder(part))]


def instance_token(image: Path) -> str | None:
    """The instance token of an image: the name of its innermost `N_name` folder."""
    tokens = instance_tokens(image)
    return tokens[-1] if tokens else None


def caption_file(image: Path, prefer: str = CAPTION_SUFFIXES[0]) -> Path | None:
    """The caption an image is trained with: the one with the preferred suffix, else any."""
    found = caption_files(image)
    return next((c for c in found if c.suffix == prefer), found[0] if found else None)


SENTENCE_MODES = ("skip", "overwrite", "merge")


def sentence_lines(data: bytes | str | None, own_file: bool) -> list[str]:
    """The sentence lines of a caption's bytes (or text): lines 2+ (line 1 holds the tags), or
    every line of a sentence file of its own; blank ones left out."""
    if not data:
        return []
    text = (data.decode("utf-8", "replace") if isinstance(data, bytes) else data).lstrip("\ufeff")
    lines = text.split("\n") if own_file else text.split("\n")[1:]
    return [line.strip() for line in lines if line.strip()]


def with_sentence(data: bytes | None, sentence: str, mode: str, own_file: bool) -> bytes:
    """`data` with `sentence` put in, every other byte as it was: `overwrite` replaces line 2 (in
    a sentence file of its own, `own_file`, line 1), `merge` appends it as a last line unless a
    line already holds it. Line 1 and its BOM are never touched; a new line ends as line 1 does
    (CRLF or LF). A caption that does not exist gets an empty line 1 (a sentence file: the
    sentence alone)."""
    new = sentence.encode("utf-8")
    if data is None:
        return new + b"\n" if own_file else b"\n" + new + b"\n"
    _, _, rest = split_caption(data)
    head = data[:len(data) - len(rest)]  # the BOM and line 1, as they are
    eol = b"\r\n" if rest.startswith(b"\r\n") else b"\n"
    if mode == "merge":
        lines = data.split(b"\n") if own_file else rest.split(b"\n")[1:]
        if new.strip() in {line.strip() for line in lines}:
            return data
        return data + (b"" if data.endswith(b"\n") else eol) + new + eol
    if own_file:  # overwrite: line 1 of a sentence file is its sentence
        bom = BOM if data.startswith(BOM) else b""
        return bom + new + (rest or eol)
    body = rest[len(eol):] if rest else b""
    end = body.find(b"\n")
    if end < 0:  # no line 2, or a last line 2 with no line ending
        return head + eol + new + eol
    ending = b"\r\n" if body[:end + 1].endswith(b"\r\n") else b"\n"
    return head + eol + new + ending + body[end + 1:]
