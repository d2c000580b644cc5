"""Several processes (`accelerate launch` or `torchrun`, which set RANK, WORLD_SIZE, LOCAL_RANK):
data parallel, each process on its own GPU (or CPU, with gloo).

An optimizer step takes `gradient_accumulation_steps × world` batches; process r trains the r-th
share of them, and the gradients are summed across processes before clipping. Every random draw is
seeded by the batch's index within the step, not by the process, so a run on N processes trains
exactly what one process does with N times the accumulation (tested). Only the first process
saves, samples, validates and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def share(self, group: list, accumulation: int) -> list[tuple[int, list]]:
        """This process's (index within the step, batch) pairs of a step's batches."""
        start = self.rank * accumulation
        return list(enumerate(group))[start:start + accumulation]

    def sum_gradients(self, params: list[torch.Tensor]) -> None:
        """Sum every trained parameter's gradient over the processes, as one flat all-reduce. A
        parameter with no gradient here (its batches skipped it) takes part as zeros, so every
        process reduces the same tensors."""
        if self.world == 1:
            return
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, value: torch.Tensor | None) -> float:
        """A logged loss: the mean of the processes' last batch losses (a process without a batch
        in the step, at an epoch's end, adds none)."""
        if self.world == 1:
            return float(value.detach())
        pair = torch.stack([value.detach().float(), torch.ones((), device=value.device)]) if value is not None \
            else torch.zeros(2, device=self.device if torch.cuda.is_available() else "cpu")
        torch.distributed.all_reduce(pair)
        return float(pair[0] / pair[1])

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def setup() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    dist = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(dist.local_rank)
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist


def is_main_process() -> bool:
    """For the CLI, before a run starts: only the first process shows and writes its output."""
    return int(os.environ.get("RANK", "0")) == 0
