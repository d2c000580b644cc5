"""What a stage returns: one outcome per file, plus stage-specific tables, rendered for people
(rich tables on stdout, one-line errors on stderr) or for machines (`--json`)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Outcome statuses. "failed" is the only one that makes a stage exit non-zero.
WRITTEN, COPIED, SKIPPED, FAILED, PLANNED, OK = (
    "written", "copied", "skipped", "failed", "planned", "ok",
)


@dataclass
class Outcome:
    path: str  # relative to the source folder, POSIX separators
    status: str
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "status": self.status}
        if self.message:
            out["message"] = self.message
        out.update(self.details)
        return out


@dataclass
class Section:
    """An extra table in the summary (format counts, duplicate groups, suspicious images...)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    whole: bool = False  # a reference table (the glossary): every row on the terminal too


@dataclass
class Report:
    stage: str
    src: str
    dst: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # extra machine-readable results
    about_files: bool = True  # false: a report on no files (train glossary), shown without the file summary

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(o.status for o in self.outcomes))

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == FAILED]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "src": self.src,
            "dst": self.dst,
            "counts": self.counts,
            "items": [o.to_dict() for o in self.outcomes],
            "sections": {
                s.title: [dict(zip(s.columns, row)) for row in s.rows] for s in self.sections
            },
            "notes": self.notes,
            **self.data,
        }


SHOWN_ROWS = 50  # a table on the terminal shows this many rows; --json has them all


def print_report(report: Report, as_json: bool, out: Console, err: Console) -> None:
    if as_json:
        # plain json: rich's highlighting takes minutes on a 100,000-item report
        json.dump(report.to_dict(), sys.stdout, default=str, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    # user text (paths, captions, messages) is escaped: rich would read `[[embeddings]]` as markup
    for failure in report.failed:
        err.print(f"[red]error[/red]: {escape(failure.path)}: {escape(failure.message)}", highlight=False,
                  markup=True, soft_wrap=True)
    for section in report.sections:
        if not section.rows:
            continue
        table = Table(title=section.title, title_justify="left")
        for column in section.columns:
            table.add_column(column)
        shown = len(section.rows) if section.whole else SHOWN_ROWS
        for row in section.rows[:shown]:
            table.add_row(*(escape(str(v)) for v in row))
        if len(section.rows) > shown:
            table.add_row(f"… and {len(section.rows) - SHOWN_ROWS} more (--json lists all)")
        out.print(table)
    out.print(f"[bold]{report.stage}[/bold] {escape(report.src)}" + (f" → {escape(report.dst)}" if report.dst else ""),
              highlight=False, soft_wrap=True)
    if not report.about_files:
        for note in report.notes:
            out.print(_note(note), highlight=False, soft_wrap=True)
        return
    summary = Table()
    summary.add_column("status")
    summary.add_column("files", justify="right")
    for status, count in sorted(report.counts.items()):
        style = "red" if status == FAILED else ""
        summary.add_row(f"[{style}]{status}[/{style}]" if style else status, str(count))
    if not report.outcomes:
        summary.add_row("no images found", "0")
    out.print(summary)
    for note in report.notes:
        out.print(_note(note), highlight=False, soft_wrap=True)


def _note(note: str) -> str:
    """A report's note as a line: a warning is a `warning:` line of its own (README), the rest notes."""
    if note.startswith("warning: "):
        return f"[yellow]warning[/yellow]: {escape(note[len('warning: '):])}"
    return f"note: {escape(note)}"
