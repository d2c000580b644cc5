"""Running a per-item function over many items: a process pool, a rich progress bar."""

from __future__ import annotations

import multiprocessing
import os
import sys
from typing import Any, Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class RateColumn(ProgressColumn):
    """Items per second (rich only ships a bytes-per-second column)."""

    def __init__(self, unit: str = "img"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"-- {self.unit}/s" if speed is None else f"{speed:.1f} {self.unit}/s", style="cyan")


def make_progress(console: Console, enabled: bool, unit: str = "img") -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        RateColumn(unit), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, disable=not enabled, transient=False,
    )


_WORKER_FN: Callable[[Any], Any] | None = None


def _init_worker(fn: Callable[[Any], Any]) -> None:
    """Each worker process gets one core's worth of work, so native libraries that would
    otherwise start a thread per core (OpenCV, torch, BLAS) are held to one thread."""
    global _WORKER_FN
    _WORKER_FN = fn
    os.environ["OMP_NUM_THREADS"] = "1"
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _call(indexed: tuple[int, Any]) -> tuple[int, Any]:
    index, item = indexed
    return index, _WORKER_FN(item)


def _context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds and shares already-imported modules; elsewhere spawn.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method)


def run_all(fn: Callable[[Any], Any], items: Sequence[Any], jobs: int, label: str,
            console: Console, show_progress: bool) -> list[Any]:
    """`[fn(item) for item in items]`, in order, on `jobs` processes, with a progress bar.
    `fn` must be picklable (a module-level function or a picklable callable object) and must
    not raise: per-item errors are part of its result."""
    results: list[Any] = [None] * len(items)
    jobs = max(1, min(jobs, len(items)))
    # The pool is forked before the progress bar starts its refresh thread: a fork taken while
    # another thread holds a lock would hand the child a lock nobody will release.
    pool = _context().Pool(jobs, initializer=_init_worker, initargs=(fn,)) if jobs > 1 else None
    try:
        with make_progress(console, show_progress) as progress:
            task = progress.add_task(label, total=len(items))
            if pool is None:
                for index, item in enumerate(items):
                    results[index] = fn(item)
                    progress.advance(task)
            else:
                # one item at a time: per-image work takes milliseconds to seconds, far more than
                # a round trip to a worker, and it keeps every worker busy until the very end
                for index, result in pool.imap_unordered(_call, enumerate(items), chunksize=1):
                    results[index] = result
                    progress.advance(task)
    finally:
        if pool is not None:
            pool.terminate()
    return results


def forked_map(fn: Callable[[Any], Any], items: Sequence[Any], jobs: int) -> Iterator[Any]:
    """`fn(item)` for each item, in order, on `jobs` forked processes. Forked workers inherit
    the caller's state, so `fn` may be a closure over anything (only the results are pickled);
    where fork is unavailable (macOS, Windows) it runs in this process. Call it only while no
    other thread runs (a progress bar's refresh, a model's thread pool): a lock one of them
    holds at the fork would stay held in the children."""
    if jobs <= 1 or len(items) <= 1 or _context().get_start_method() != "fork":
        yield from map(fn, items)
        return
    global _WORKER_FN
    _WORKER_FN = fn  # read by the forked children through _call
    try:
        with _context().Pool(min(jobs, len(items))) as pool:
            for _, result in pool.imap(_call, enumerate(items)):
                yield result
    finally:
        _WORKER_FN = None
