"""`tag stats`: what a dataset's captions say, and what is wrong with them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lorakit.captions import caption_files, instance_token, parse_tags, sentence_lines
from lorakit.discovery import check_source, discover
from lorakit.report import OK, Outcome, Report, Section
from lorakit.tagging.lists import named
from lorakit.tagging.relations import Relations
from lorakit.tagging.spelling import key

META = frozenset(named("@meta")) | frozenset(named("@quality"))

MAX_TAGS = 20  # the guide's limit per image
PROBLEM = "problem"  # not a failure: `--strict` decides whether problems fail the command


def caption_table(root: Path, further: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """One row per (image, tag); images without tags appear once with tag None. `further`, when
    given, gets each captioned image's lines after line 1 (from the same read)."""
    rows = []
    for rel in discover(root):
        found = caption_files(root / rel)
        text = found[0].read_text(encoding="utf-8-sig", errors="replace") if found else ""
        tags = parse_tags(text)
        if further is not None and found:
            further[rel.as_posix()] = sentence_lines(text, own_file=False)
        folder = rel.parts[0] if len(rel.parts) > 1 else "."
        base = {"image": rel.as_posix(), "folder": folder, "captioned": bool(found),
                "instance": key(token) if (token := instance_token(rel)) else None}
        if not tags:
            rows.append({**base, "position": None, "tag": None, "key": None})
        rows += [{**base, "position": i, "tag": t, "key": key(t)} for i, t in enumerate(tags)]
    return pd.DataFrame(rows, columns=["image", "folder", "captioned", "instance", "position", "tag", "key"])


def stats(root: Path, rel: Relations, class_token: str | None = None, max_tags: int = MAX_TAGS,
          top: int = 25) -> Report:
    root = check_source(root)
    further: dict[str, list[str]] = {}
    df = caption_table(root, further)
    report = Report("stats", str(root))
    if df.empty:
        return report
    tagged = df.dropna(subset=["key"])
    freq = tagged.groupby("key").agg(images=("image", "nunique")).sort_values("images", ascending=False)
    report.sections.append(Section(f"top {top} tags", ["tag", "images"],
                                   [[k, int(n)] for k, n in freq["images"].head(top).items()]))
    per_folder = tagged.groupby(["folder", "key"]).size().rename("n").reset_index()
    report.data["frequency"] = {k: int(v) for k, v in freq["images"].items()}
    report.data["frequency_by_folder"] = {
        folder: dict(zip(g["key"], map(int, g["n"]))) for folder, g in per_folder.groupby("folder")}

    problems: dict[str, list[str]] = {}
    counts = tagged.groupby("image").size()
    for image, group in df.groupby("image", sort=True):
        keys = [k for k in group.sort_values("position")["key"] if isinstance(k, str)]
        found = []
        if not group["captioned"].iloc[0]:
            found.append("no caption file")
        elif not keys:
            found.append("empty caption")
        if len(keys) > max_tags:
            found.append(f"{len(keys)} tags (over {max_tags})")
        instance = group["instance"].iloc[0]
        if keys and instance and instance not in keys:
            found.append(f"no instance token '{instance}'")
        if keys and class_token and key(class_token) not in keys:
            found.append(f"no class token '{class_token}'")
        canon = [rel.canonical(k) for k in keys]
        for k, c in zip(keys, canon):
            if c != k:
                found.append(f"alias spelling '{k}' (use '{c}')")
        implied = set().union(*(rel.implied_by(c) for c in canon)) if canon else set()
        found += [f"'{k}' is implied by another tag" for k, c in zip(keys, canon) if c in implied]
        meta = [k for k in keys if k in META]
        if meta:
            found.append("meta/quality tags: " + ", ".join(meta))
        unknown = [k for k, c in zip(keys, canon) if rel.knows(c) is False and k != instance]
        if unknown:
            found.append("unknown to " + rel.vocab + ": " + ", ".join(unknown))
        problems[image] = found
        report.outcomes.append(Outcome(image, PROBLEM if found else OK, "; ".join(found),
                                       {"tags": len(keys)}))
    report.sections.append(Section("problems", ["image", "problems"],
                                   [[i, "; ".join(p)] for i, p in problems.items() if p]))
    report.data["tags_per_image"] = {"mean": float(counts.mean()) if len(counts) else 0.0,
                                     "max": int(counts.max()) if len(counts) else 0}
    report.notes.append(f"relations: {rel.vocab}, {rel.source}")
    _sentences(further, report)
    return report


def _sentences(further_lines: dict[str, list[str]], report: Report) -> None:
    """Sentence lines (line 2 on, `tag caption`'s) and their CLIP token counts: a sentence past
    75 tokens is cut short by a trainer at data.max_token_length = 75. A further line that reads
    as tags to the trainer (train/caption_lines.is_sentence: it would be shuffled) is counted
    apart."""
    from lorakit.train.caption_lines import is_sentence

    found: dict[str, list[str]] = {}
    tag_lines = 0
    for outcome in report.outcomes:
        further = further_lines.get(outcome.path)
        if further is not None:
            lines = [line for line in further if is_sentence(line)]
            tag_lines += len(further) - len(lines)
            outcome.details["sentences"] = len(lines)
            if lines:
                found[outcome.path] = lines
    if tag_lines:
        report.data["further_tag_lines"] = tag_lines
        report.notes.append(f"{tag_lines} lines after line 1 read as tags, not sentences (no . ! or ? at the end, "
                            "no clause of 5 words): a trainer shuffles them as tags")
    if not found:
        return
    from lorakit.train.clip_tokens import count, shipped_tokenizer

    tokenizer = shipped_tokenizer()
    lengths = sorted(count(tokenizer, line) for lines in found.values() for line in lines)
    over = {limit: sum(1 for n in lengths if n > limit) for limit in (75, 150, 225)}
    report.data["sentences"] = {"images": len(found), "lines": len(lengths), "tokens_min": lengths[0],
                                "tokens_median": lengths[len(lengths) // 2], "tokens_max": lengths[-1],
                                "over_tokens": over}
    report.sections.append(Section("sentence lines", ["images with one", "lines", "tokens (min / median / max)",
                                                      "over 75", "over 150", "over 225"],
                                   [[len(found), len(lengths), f"{lengths[0]} / {lengths[len(lengths) // 2]} / "
                                     f"{lengths[-1]}", over[75], over[150], over[225]]]))
    if over[75]:
        report.notes.append(f"{over[75]} sentence lines are over 75 CLIP tokens: a trainer cuts them at "
                            "data.max_token_length (75 unless set to 150 or 225)")
