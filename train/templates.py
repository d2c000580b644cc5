"""Textual inversion's prompt templates (A1111): each training prompt is a random line of a
template file, with `[name]` replaced by the placeholder and `[filewords]` by the image's words:
its caption file, else its file name without the extension and the leading digits and dashes
(`000001-1-a man in suit.png` → `a man in suit`), optionally cut into words by a regex and joined
by a string. `style.txt` and `subject.txt` ship with lorakit."""

from __future__ import annotations

import re
from pathlib import Path

from lorakit.errors import UserError

SHIPPED = Path(__file__).parent / "templates"
_LEADING = re.compile(r"^[-\d]+\s*")


def load_template(value: str) -> list[str]:
    path = SHIPPED / f"{value}.txt" if (SHIPPED / f"{value}.txt").is_file() else Path(value)
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.txt")))
        raise UserError(f"data.template = {value!r}: no such file; the shipped templates are {shipped}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise UserError(f"{path}: the template has no lines")
    return lines


def filewords_from_name(path: Path, regex: str | None, join: str) -> str:
    text = _LEADING.sub("", path.stem)
    if regex:
        try:
            text = join.join(re.findall(regex, text))
        except re.error as exc:
            raise UserError(f"data.filewords_regex = {regex!r}: {exc}") from None
    return text


def fill(line: str, name: str, filewords: str) -> str:
    return line.replace("[name]", name).replace("[filewords]", filewords)
