"""The prompt a captioner is given per image: a template with {tags}, {trigger} and {folder}.

A line of the template whose placeholder has no value for an image (no tags, no trigger) is
left out of that image's prompt, so one template serves captions with and without tags. Other
text in braces is refused, not sent as it is: a typo such as {tag} would otherwise reach every
prompt unfilled. `{{` and `}}` are literal braces (as in the trainer's wildcards).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from lorakit.captions import parse_repeats_folder
from lorakit.errors import UserError
from lorakit.tagging.captioners import PLACEHOLDERS

_FIELD = re.compile(r"\{(\w*)\}")
_OPEN, _CLOSE = "\x00(", "\x00)"  # stand-ins for {{ and }} while fields are found


def _escaped(text: str) -> str:
    return text.replace("{{", _OPEN).replace("}}", _CLOSE)


def _unescaped(text: str) -> str:
    return text.replace(_OPEN, "{").replace(_CLOSE, "}")


def check_template(template: str, captioner, with_tags: bool | None, trigger: str | None = None) -> bool:
    """Whether the tags go into the prompts; refuses what this captioner cannot take."""
    template = _escaped(template)
    stray = _FIELD.sub("", template)
    if "{" in stray or "}" in stray:
        raise UserError("the prompt has a brace that is not a placeholder ({tags}, {trigger}, {folder}); write "
                        "{{ or }} for a literal brace")
    unknown = sorted({f for f in _FIELD.findall(template) if f not in PLACEHOLDERS})
    if unknown:
        raise UserError(f"the prompt names {', '.join('{' + u + '}' for u in unknown)}: the placeholders are "
                        f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    family, name = captioner.family, captioner.name
    if not family.instructed:
        if with_tags:
            raise UserError(f"{name} takes no instructions ({captioner.spec.family}), so it cannot be given the "
                            "tags: use a JoyCaption or Qwen2.5-VL captioner for --with-tags")
        if trigger is not None:
            raise UserError(f"{name} takes no instructions ({captioner.spec.family}), so it cannot be told the "
                            "trigger: --trigger is for JoyCaption and Qwen2.5-VL captioners")
        used = _FIELD.findall(template)
        if used:
            raise UserError(f"{name} takes no instructions: its prompt cannot hold {{{used[0]}}}")
        if family.tasks and _unescaped(template) not in family.tasks:
            raise UserError(f"{name} only takes one of its task tokens as its prompt: {', '.join(family.tasks)}")
        return False
    if not template.strip():
        raise UserError(f"{name} takes an instruction: the prompt is empty")
    if with_tags and "{tags}" not in template:
        raise UserError("--with-tags: the prompt has no {tags} to put them in")
    return with_tags is not False and "{tags}" in template


def fill(template: str, values: dict[str, str]) -> str:
    lines = []
    for line in _escaped(template).splitlines():
        fields = _FIELD.findall(line)
        if any(not values.get(f) for f in fields):
            continue
        # one pass: a value holding "{folder}" (a tag, a folder name) is text, never filled in turn
        out, at = [], 0
        for match in _FIELD.finditer(line):
            out += [_unescaped(line[at:match.start()]), values[match.group(1)]]
            at = match.end()
        lines.append("".join(out) + _unescaped(line[at:]))
    return "\n".join(lines).strip()


def folder_words(image: str) -> str:
    """{folder}: the concept an image's folder names (`10_kit chan` -> "kit chan"), else its name."""
    parent = PurePosixPath(image).parent.name
    parsed = parse_repeats_folder(parent)
    return (parsed[1] if parsed else parent).replace("_", " ")
