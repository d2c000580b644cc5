"""Where a run's progress goes: OUTPUT_DIR/log.jsonl always (one JSON object per logged step,
validation or warning); on a terminal a rich display (step, epoch, loss, lr, img/s, ETA) with
the logged lines above it, elsewhere (pipes, CI) the JSON lines on stderr; TensorBoard event
files in OUTPUT_DIR/tensorboard (or output.log_dir/tensorboard) when tensorboard is installed
and output.tensorboard allows it.

The loop only calls `log(json_line)` and `step(step, total, epoch, images)`; the loss shown is
the last logged one, read at the log interval, since reading it every step would stall a GPU.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _tensorboard(folder: Path, wanted: bool | None):
    """A SummaryWriter, or None when not wanted or (for the default, None) not installed."""
    if wanted is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if wanted:
            from lorakit.errors import UserError
            raise UserError("output.tensorboard = true needs the tensorboard package (pip install tensorboard)") from None
        return None
    return SummaryWriter(str(folder))


class RunLog:
    def __init__(self, out_dir: Path, tensorboard_dir: Path, tensorboard: bool | None = None,
                 console: Console | None = None):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(out_dir / "log.jsonl", "a", encoding="utf-8")
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.writer = _tensorboard(tensorboard_dir, tensorboard)
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("epoch {task.fields[epoch]}"),
            TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[rate]} img/s"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, disable=not self.live, transient=False)
        self.task = None
        self.started: tuple[float, int] | None = None  # (time, images) at the first step: img/s from there

    def __call__(self, line: str) -> None:
        self.file.write(line + "\n")
        self.file.flush()
        record = json.loads(line)
        if self.writer is not None:
            self._scalars(record)
        if self.task is not None and "loss" in record:
            self.progress.update(self.task, loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        if not self.live:
            print(line, file=sys.stderr)
        elif "warning" in record:
            self.progress.console.print(f"[yellow]warning:[/] {record['warning']}")
        elif "val_loss" in record:
            self.progress.console.print(f"step {record['step']}: validation loss {record['val_loss']:.4f}")

    def _scalars(self, record: dict) -> None:
        step = record.get("step")
        if step is None:
            return
        for key in ("loss", "val_loss", "lr", "keys_scaled"):
            if key in record:
                self.writer.add_scalar(f"train/{key}" if key != "val_loss" else "validation/loss", record[key], step)
        for k, rate in enumerate(record.get("lrs", [])):
            self.writer.add_scalar(f"lr/group{k}", rate, step)

    def step(self, step: int, total: int, epoch: int, images: int) -> None:
        """After every optimizer step: `images` trained so far in this process."""
        now = time.perf_counter()
        if self.started is None:
            self.started = (now, images)
            if self.live:
                self.progress.start()
                self.task = self.progress.add_task("train", total=total, completed=step, epoch=epoch, loss="-",
                                                   lr="-", rate="-")
            return
        t0, i0 = self.started
        rate = (images - i0) / max(now - t0, 1e-9)
        if self.task is not None:
            self.progress.update(self.task, completed=step, epoch=epoch, rate=f"{rate:.2f}")

    def close(self) -> None:
        if self.live and self.task is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()
        self.file.close()
