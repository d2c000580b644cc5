"""The stage engine: one implementation of discovery, tree mirroring, skipping, collisions,
parallelism, caption carrying and reporting, shared by every stage.

A stage is a `Stage` subclass that says how an input name maps to an output name and how one
image is processed (`process`, which calls a pure per-image function and writes the result).
`run_stage(stage, src, dst, options)` does everything else and returns a `Report`.
Read-only stages (scan, inspect, dedupe) use `analyse`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from PIL import Image
from rich.console import Console

from lorakit.captions import caption_files, copy_with_tags, write_new_caption
from lorakit.discovery import check_pair, check_source, discover, mark_output
from lorakit.fsio import copy_file
from lorakit.images import DEFAULT_MAX_PIXELS, ImageError, load_image, natural_format, save_image
from lorakit.parallel import default_jobs, run_all
from lorakit.report import COPIED, FAILED, PLANNED, SKIPPED, WRITTEN, Outcome, Report


@dataclass
class RunOptions:
    """What every stage accepts from the command line."""

    jobs: int = field(default_factory=default_jobs)
    force: bool = False
    dry_run: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True
    console: Console = field(default_factory=lambda: Console(stderr=True))


@dataclass(frozen=True)
class Task:
    """One image to process: where it comes from, where it goes, and stage parameters that
    depend on the whole folder (assigned in the parent, so they are deterministic)."""

    rel: Path
    src: Path
    dst: Path
    captions: tuple[Path, ...] = ()
    params: Any = None


@dataclass(frozen=True)
class Result:
    """What `Stage.process` reports for one image."""

    status: str = WRITTEN  # WRITTEN, or COPIED when the file passed through unchanged
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    caption_tags: tuple[str, ...] = ()  # tags to append to the carried caption files
    captions_written: bool = False  # the stage wrote the captions itself (changed): no copy


class Stage:
    """Base class of folder-to-folder stages. Instances are sent to worker processes, so they
    hold only plain option values."""

    name = "stage"
    parallel = True  # False: run in the main process (the stage parallelises internally)
    max_pixels = DEFAULT_MAX_PIXELS

    def output_name(self, rel: Path) -> Path:
        return rel

    def assign(self, tasks: list[Task]) -> list[Task]:
        """Give tasks folder-dependent parameters before any is processed (default: none)."""
        return tasks

    def process(self, task: Task) -> Result:
        raise NotImplementedError

    def prepare(self) -> None:
        """Load what `process` needs once (a model), in the process that runs it."""

    def finish(self, report: Report) -> None:
        """Add stage-specific tables and notes to the report."""

    def pass_through(self, task: Task, img: Image.Image | None = None, message: str = "") -> Result:
        """The image goes on unchanged: byte for byte when its format stays, else re-encoded."""
        if task.dst.suffix == task.src.suffix:
            copy_file(task.src, task.dst)
        else:
            img = img if img is not None else load_image(task.src, self.max_pixels)
            save_image(img, task.dst, natural_format(task.dst))
        return Result(status=COPIED, message=message)


def _caption_dst(task: Task, caption: Path) -> Path:
    return task.dst.with_suffix(caption.suffix)


def _up_to_date(task: Task) -> bool:
    try:
        if not task.dst.exists() or task.dst.stat().st_mtime_ns < task.src.stat().st_mtime_ns:
            return False
        for caption in task.captions:
            out = _caption_dst(task, caption)
            if not out.exists() or out.stat().st_mtime_ns < caption.stat().st_mtime_ns:
                return False
    except OSError:  # a dangling symlink or a loop: processing it says so, naming the file
        return False
    return True


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _Runner:
    """The picklable per-task function sent to workers: process, carry captions, catch errors."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.prepared = False

    def __call__(self, task: Task) -> Outcome:
        rel = task.rel.as_posix()
        try:
            if not self.prepared:
                self.stage.prepare()
                self.prepared = True
            result = self.stage.process(task)
            for caption in () if result.captions_written else task.captions:
                dst = _caption_dst(task, caption)
                if result.caption_tags:
                    copy_with_tags(caption, dst, list(result.caption_tags))
                else:
                    copy_file(caption, dst)
            if result.caption_tags and not task.captions:
                write_new_caption(task.dst.with_suffix(".txt"), list(result.caption_tags))
        except ImageError as exc:
            return Outcome(rel, FAILED, str(exc))
        except (OSError, ValueError, RuntimeError, MemoryError) as exc:
            return Outcome(rel, FAILED, f"{type(exc).__name__}: {exc}")
        return Outcome(rel, result.status, result.message, result.details)


def plan(stage: Stage, src: Path, dst: Path, rels: list[Path]) -> tuple[list[Task], list[Outcome]]:
    """Tasks for every image, and failures for images whose outputs would collide (`a.png` and
    `a.webp` both becoming `a.png`): neither is written, so nothing is silently overwritten."""
    by_output: dict[str, list[Path]] = {}
    for rel in rels:
        # casefold: on Windows and macOS `A.png` and `a.png` are the same file
        by_output.setdefault(stage.output_name(rel).as_posix().casefold(), []).append(rel)
    tasks: list[Task] = []
    collisions: list[Outcome] = []
    for rel in rels:
        out_rel = stage.output_name(rel)
        sharing = by_output[out_rel.as_posix().casefold()]
        if len(sharing) > 1:
            others = ", ".join(p.as_posix() for p in sharing if p != rel)
            collisions.append(Outcome(
                rel.as_posix(), FAILED,
                f"would write {out_rel.as_posix()}, as would {others}; rename one of them",
            ))
            continue
        image = src / rel
        tasks.append(Task(rel, image, dst / out_rel, tuple(caption_files(image))))
    return stage.assign(tasks), collisions


def run_stage(stage: Stage, src: Path, dst: Path, options: RunOptions) -> Report:
    src_abs, dst_abs = check_pair(src, dst)
    stage.max_pixels = options.max_pixels
    rels = discover(src_abs)
    tasks, outcomes = plan(stage, src_abs, dst_abs, rels)
    report = Report(stage.name, str(src), str(dst))
    todo: list[Task] = []
    for task in tasks:
        if not options.force and _up_to_date(task):
            outcomes.append(Outcome(task.rel.as_posix(), SKIPPED, "up to date"))
        elif options.dry_run:
            outcomes.append(Outcome(task.rel.as_posix(), PLANNED,
                                    f"would write {task.dst.relative_to(dst_abs).as_posix()}"))
        else:
            todo.append(task)
    if todo:
        mark_output(dst_abs, stage.name)
        runner = _Runner(stage)
        jobs = options.jobs if stage.parallel else 1
        # largest files first, so no worker is left with a huge image while the others idle
        todo.sort(key=lambda t: -_size(t.src))
        outcomes += run_all(runner, todo, jobs, f"{stage.name}", options.console, options.progress)
    report.outcomes = sorted(outcomes, key=lambda o: o.path)
    if not options.dry_run:
        stage.finish(report)
    return report


def analyse(src: Path, fn: Callable[[Path], Any], options: RunOptions, label: str,
            ) -> tuple[Path, list[Path], list[Any]]:
    """Run a read-only per-image function over every image under `src`.
    `fn` gets an absolute path and returns a picklable value (errors included)."""
    src_abs = check_source(src)
    rels = discover(src_abs)
    results = run_all(fn, [src_abs / rel for rel in rels], options.jobs, label,
                      options.console, options.progress)
    return src_abs, rels, results


def with_params(task: Task, params: Any) -> Task:
    return replace(task, params=params)
