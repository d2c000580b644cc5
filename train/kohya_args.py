"""kohya's argument strings, read as kohya reads them: `--optimizer_args` / `--network_args`
items `key=value` (sd-scripts' `ast.literal_eval`, so `True`, `1e-5`, `0.9,0.99` become a bool,
a float and a tuple), kohya_ss's one string of them (quoted or not), and its
`additional_parameters`, a piece of command line.

Also the message that turns such a string, pasted as lorakit's `optimizer.args`, into the table
lorakit reads."""

from __future__ import annotations

import ast
import shlex
from typing import Any

import tomli_w


def words(text: str) -> list[str]:
    """Shell-style words, quotes removed. Backslashes stay: kohya_ss runs on Windows, where they
    are path separators (C:\\models\\vae.safetensors), not escapes."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.escape = ""
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote: kohya_ss itself drops every double quote and splits
        return text.replace('"', "").split()


def literal(raw: str) -> Any:
    """A value as sd-scripts reads it (a Python literal), else the string. A tuple becomes a list
    (TOML has no tuples); None stays None: the option's default."""
    text = raw.strip()
    if text.lower() in ("true", "false"):  # TOML's spelling, which literal_eval would keep as a string
        return text.lower() == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text.strip("\"'")
    if isinstance(value, tuple):
        value = list(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return value
    return text  # a set, bytes, a dict...: nothing TOML or an optimizer's keyword takes as such


def parse(value: Any, literals: bool = True) -> tuple[dict[str, Any], list[str]]:
    """kohya's `key=value` items (a TOML list, or kohya_ss's one string) as a dict, and the items
    that are not `key=value`. Without `literals` the values stay strings, as sd-scripts hands
    network_args to the network (which reads "1,1,0" block weights itself)."""
    items = [str(v) for v in value] if isinstance(value, list) else words(str(value))
    out: dict[str, Any] = {}
    bad = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            bad.append(item)
            continue
        out[key.strip()] = literal(raw) if literals else raw.strip().strip("\"'")
    return out, bad


def command_line(text: str) -> list[tuple[str, Any]]:
    """kohya_ss's additional_parameters: `--flag` alone is true; `--key value` one value (a
    string, as argparse would hand it to the option's type); `--key a=1 b=2` a list of words."""
    flags: list[tuple[str, list[str]]] = []
    stray: list[str] = []
    for word in words(text):
        if word.startswith("-") and not _number(word):
            name, sep, value = word.lstrip("-").partition("=")  # argparse's --key=value
            flags.append((name, [value] if sep else []))
        elif flags:
            flags[-1][1].append(word)
        else:
            stray.append(word)
    out: list[tuple[str, Any]] = [("", stray)] if stray else []
    for name, values in flags:
        out.append((name, True if not values else values[0] if len(values) == 1 else values))
    return out


def _number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def optimizer_table(args: dict[str, Any]) -> dict[str, Any]:
    """kohya's optimizer args as lorakit's [optimizer] keys: betas and weight_decay have their own."""
    table: dict[str, Any] = {}
    rest = {k: v for k, v in args.items() if v is not None}
    if "weight_decay" in rest:
        table["weight_decay"] = rest.pop("weight_decay")
    if "betas" in rest:
        table["betas"] = rest.pop("betas")
    if rest:
        table["args"] = rest
    return table


def string_args_error(section: str, text: str) -> str:
    """Why `[section] args = "decouple=True ..."` is refused, with the table to write instead."""
    parsed, _ = parse(text)
    table = optimizer_table(parsed) if section == "optimizer" else {"args": parsed}
    try:
        shown = tomli_w.dumps({section: table}).strip()
    except (TypeError, ValueError):  # nothing TOML can write: show only the shape
        shown = f"[{section}.args]\nkey = value"
    return (f"{section}.args is a table of keywords, not kohya's string {text!r}; write it as\n\n{shown}\n\n"
            "(`train import kohya` converts a whole kohya config)")
