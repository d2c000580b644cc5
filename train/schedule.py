"""Learning-rate schedules: the configured curve (constant, cosine, restarts, polynomial,
linear, with warmup) as a factor of each group's base rate, and A1111's piecewise syntax
`"0.005:100, 1e-3:1000, 1e-5"` (0.005 until step 100, 1e-3 until step 1000, then 1e-5), which
replaces the curve for the group it is given to."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from lorakit.errors import UserError

if TYPE_CHECKING:
    from lorakit.train.config import Config


def parse_piecewise(text: str) -> list[tuple[float, float]]:
    """[(rate, end step), ...]; the last piece runs forever (end = inf)."""
    pieces = []
    parts = [p.strip() for p in text.split(",") if p.strip()]
    for i, part in enumerate(parts):
        rate, _, end = part.partition(":")
        try:
            value = float(rate)
            until = float(int(end)) if end.strip() else math.inf
        except ValueError:
            raise UserError(f"learning rate {text!r}: write rate:until_step pairs, e.g. "
                            f"\"0.005:100, 1e-3:1000, 1e-5\" ({part!r} is not one)") from None
        if until == math.inf and i != len(parts) - 1:
            raise UserError(f"learning rate {text!r}: only the last rate may have no end step")
        if pieces and until <= pieces[-1][1]:
            raise UserError(f"learning rate {text!r}: the end steps must increase")
        pieces.append((value, until))
    if not pieces:
        raise UserError("learning rate: empty schedule")
    return pieces


def piecewise_rate(pieces: list[tuple[float, float]], step: int) -> float:
    """The rate of optimizer step `step` (0-based: step 0 is the first)."""
    for rate, until in pieces:
        if step < until:
            return rate
    return pieces[-1][0]  # past the last end step: the last rate stays


def base_rate(value: float | str) -> float:
    """The rate a parameter group starts from: a number, or the first piece of a schedule."""
    return parse_piecewise(value)[0][0] if isinstance(value, str) else float(value)


# scheduler.type: the factor of the base rate after warmup, at `progress` (0 to 1) of the rest
SCHEDULES: dict[str, Callable] = {
    "constant": lambda progress, s: 1.0,
    "cosine": lambda progress, s: 0.5 * (1 + math.cos(math.pi * progress)),
    "cosine_with_restarts": lambda progress, s: 0.5 * (1 + math.cos(math.pi * ((progress * s.cycles) % 1.0))),
    "polynomial": lambda progress, s: (1 - progress) ** s.power,
    "linear": lambda progress, s: 1 - progress,
}


def curve(config: Config, total: int):
    """The configured schedule as a factor of the base learning rate at each step."""
    s = config.scheduler
    warmup = s.warmup_steps if s.warmup_steps is not None else int(s.warmup_ratio * total)
    shape = SCHEDULES[s.type]

    def factor(step: int) -> float:
        if step < warmup:  # kohya's (diffusers') warm-up: 0, 1/w, 2/w, ... then the curve at 1
            return step / max(1, warmup)
        return shape((step - warmup) / max(1, total - warmup), s)
    return factor


def group_lambda(config: Config, total: int, value: float | str):
    """The LambdaLR factor for a group whose configured rate is `value`: the curve for a
    number; for a piecewise schedule, the rate itself divided by the group's base rate."""
    if not isinstance(value, str):
        return curve(config, total)
    pieces = parse_piecewise(value)
    first = pieces[0][0]
    if first == 0:
        raise UserError(f"learning rate {value!r}: the first rate must not be 0")
    return lambda step: piecewise_rate(pieces, step) / first
