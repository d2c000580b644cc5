"""Optimisers by name (docs/architecture.md: a registry, not an `if` chain). Each entry is one
record of everything lorakit knows of that optimiser: how to build it from the parameter groups
and the config (`optimizer.args` is passed through, so `args = { decouple = true }` reaches
Prodigy as kohya's `--optimizer_args` does), its state's size for the memory estimate, whether it
finds its own rate, and whether an eps under fp16 breaks it. Adding one is one entry."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from lorakit.errors import UserError

if TYPE_CHECKING:
    from lorakit.train.config import OptimizerConfig


def _adamw(groups, o: OptimizerConfig):
    return torch.optim.AdamW(groups, betas=tuple(o.betas), weight_decay=o.weight_decay, **o.args)


def _adamw8bit(groups, o: OptimizerConfig):
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserError("adamw8bit needs bitsandbytes (a CUDA GPU): pip install bitsandbytes, or use adamw") from None
    return bnb.optim.AdamW8bit(groups, betas=tuple(o.betas), weight_decay=o.weight_decay, **o.args)


def _prodigy(groups, o: OptimizerConfig):
    from prodigyopt import Prodigy

    return Prodigy(groups, betas=tuple(o.betas), weight_decay=o.weight_decay, **o.args)


def _dadaptadam(groups, o: OptimizerConfig):
    from dadaptation import DAdaptAdam

    return DAdaptAdam(groups, betas=tuple(o.betas), weight_decay=o.weight_decay, **o.args)


def _lion(groups, o: OptimizerConfig):
    from lion_pytorch import Lion

    return Lion(groups, betas=tuple(o.betas), weight_decay=o.weight_decay, **o.args)


def _adafactor(groups, o: OptimizerConfig):
    from transformers.optimization import Adafactor

    # with an explicit learning rate, as kohya: no relative step, no warmup init
    args = {"scale_parameter": False, "relative_step": False, "warmup_init": False, **o.args}
    return Adafactor(groups, weight_decay=o.weight_decay, **args)


@dataclass(frozen=True)
class OptimizerSpec:
    build: Callable
    # bytes of state per trained parameter (moments in float32; 8-bit Adam's in bytes; Adafactor's
    # are factored per row and column: next to nothing for LoRA's matrices)
    state_bytes: int
    # the class's own defaults: what kohya trains with when optimizer_args does not set them
    # (lorakit's optimizer.weight_decay and betas default to the guide's values instead)
    class_defaults: dict = field(default_factory=dict)
    adaptive: bool = False  # finds its own rate: the guide's lr 1 and alpha 1
    eps: bool = False  # divides by sqrt(second moment) + eps, 1e-8 by default: 0 in fp16


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec(_adamw, 8, {"weight_decay": 0.01, "betas": [0.9, 0.999]}, eps=True),
    "adamw8bit": OptimizerSpec(_adamw8bit, 2, {"weight_decay": 0.01, "betas": [0.9, 0.999]}),
    "prodigy": OptimizerSpec(_prodigy, 16, {"weight_decay": 0.0, "betas": [0.9, 0.999]}, adaptive=True, eps=True),
    "dadaptadam": OptimizerSpec(_dadaptadam, 12, {"weight_decay": 0.0, "betas": [0.9, 0.999]}, adaptive=True,
                                eps=True),
    "lion": OptimizerSpec(_lion, 4, {"weight_decay": 0.0, "betas": [0.9, 0.99]}),
    "adafactor": OptimizerSpec(_adafactor, 0, {"weight_decay": 0.0}),
}


def build(groups: list[dict], o: OptimizerConfig) -> torch.optim.Optimizer:
    try:
        # some optimisers print their settings; stdout belongs to the report (--json)
        with contextlib.redirect_stdout(sys.stderr):
            return OPTIMIZERS[o.type].build(groups, o)
    except ImportError as exc:
        raise UserError(f"optimizer {o.type} needs {exc.name}: pip install {exc.name}") from None
    except TypeError as exc:
        raise UserError(f"optimizer.args do not fit {o.type}: {exc}") from None
