"""The command-line options every stage shares, and the one way a command ends."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Iterator

import typer
from rich.console import Console
from rich.markup import escape

from lorakit.engine import RunOptions
from lorakit.errors import UserError
from lorakit.images import DEFAULT_MAX_PIXELS
from lorakit.parallel import default_jobs
from lorakit.report import Report, print_report

Jobs = Annotated[int, typer.Option("--jobs", "-j", min=1,
                                   help="Worker processes (default: all cores).")]
Force = Annotated[bool, typer.Option("--force", help="Redo images whose outputs are up to date.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would be written; write nothing.")]
Json = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]
MaxPixels = Annotated[int, typer.Option(
    "--max-pixels", min=1,
    help="Refuse images with more pixels than this (decompression-bomb guard).")]

DEFAULT_JOBS = default_jobs()
DEFAULT_PIXELS = DEFAULT_MAX_PIXELS

out_console = Console()
err_console = Console(stderr=True)


def run_options(jobs: int = DEFAULT_JOBS, force: bool = False, dry_run: bool = False,
                max_pixels: int = DEFAULT_MAX_PIXELS, as_json: bool = False) -> RunOptions:
    return RunOptions(jobs=jobs, force=force, dry_run=dry_run, max_pixels=max_pixels,
                      progress=err_console.is_terminal and not as_json, console=err_console)


def emit(report: Report, as_json: bool) -> None:
    """Print the report and exit: non-zero when any file failed."""
    print_report(report, as_json, out_console, err_console)
    raise typer.Exit(report.exit_code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a `UserError` into one red line and exit code 2."""
    try:
        yield
    except UserError as exc:
        err_console.print(f"[red]error[/red]: {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
