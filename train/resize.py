"""`train resize FILE --dim N`: a LoRA made smaller by SVD, with kohya's resize_lora semantics.

Each module's change W = up @ down (its alpha/rank scale set aside) is factored as U S Vh; the
new module keeps the first r singular values: up = U_r S_r, down = Vh_r, and alpha = r x the old
alpha/rank, so the scale, and so the change, is what the r largest directions of W give. r is
`--dim` (at most the module's rank), or fewer with a dynamic method, as kohya's:

- sv_ratio P:      keep singular values at least max(S) / P;
- sv_fro P:        the smallest rank whose Frobenius norm is at least P of the whole (0..1);
- sv_cumulative P: the smallest rank whose sum of singular values is at least P of the sum.

(Factoring the scaled change and dividing the scale back out of up gives the same modules.)
The report gives the Frobenius norm each module keeps (sqrt(sum S_r^2) / sqrt(sum S^2)): 100%
means the resized file changes the model exactly as the original did.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lorakit.errors import UserError
from lorakit.options import err_console
from lorakit.parallel import make_progress
from lorakit.report import WRITTEN, Outcome, Report, Section
from lorakit.train.lora_files import Module, module_tensors, modules, read_lora, refuse_dora, write_lora
from lorakit.train.precision import DTYPES

Dynamic = Literal["sv_ratio", "sv_fro", "sv_cumulative"]


def _dynamic_rank(s: torch.Tensor, method: str | None, param: float) -> int:
    """How many singular values a dynamic method keeps (all of them without one)."""
    if method is None:
        return len(s)
    if method == "sv_ratio":
        return int((s >= s[0] / param).sum())
    if method == "sv_fro":
        energy = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
    else:  # sv_cumulative
        energy = torch.cumsum(s, 0) / s.sum()
    return int((energy < param - 1e-7).sum()) + 1


@dataclass
class Resized:
    module: Module
    retained: float  # share of the Frobenius norm kept


def factor(weight: torch.Tensor, rank: int, scale: float, method: str | None = None,
           param: float = 0.0) -> Resized:
    """A layer change `weight` (out x in, or out x in x k x k) as a module of at most `rank`
    whose alpha / rank is `scale`: up = U_r S_r / scale, down = Vh_r."""
    flat = weight.float().flatten(1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    rank = max(1, min(rank, len(s), _dynamic_rank(s, method, param)))
    total = float(s.pow(2).sum().sqrt())
    kept = float(s[:rank].pow(2).sum().sqrt())
    tail = (1,) * (weight.dim() - 2)  # a convolution's up is 1x1
    up = (u[:, :rank] * (s[:rank] / scale)).reshape(weight.shape[0], rank, *tail)
    down = vh[:rank].reshape(rank, *weight.shape[1:])
    return Resized(Module(down, up, scale * rank), kept / total if total > 0 else 1.0)


def resize_module(module: Module, dim: int, method: str | None = None, param: float = 0.0) -> Resized:
    """kohya's resize: the same alpha / rank, at most `dim` (and never more than the module had)."""
    return factor(module.delta(), min(dim, module.rank), module.alpha / module.rank, method, param)


def resize(source: Path, dim: int, out: Path, method: str | None = None, param: float | None = None,
           precision: str | None = None, dry_run: bool = False, show_progress: bool = False) -> Report:
    if dim < 1:
        raise UserError(f"--dim {dim}: the new rank is at least 1")
    if method is not None:
        if param is None:
            raise UserError(f"--dynamic {method} needs --dynamic-param (e.g. sv_fro 0.9)")
        if method in ("sv_fro", "sv_cumulative") and not 0 < param <= 1:
            raise UserError(f"--dynamic-param {param}: {method} keeps a share, from 0 to 1")
        if method == "sv_ratio" and param < 1:
            raise UserError(f"--dynamic-param {param}: sv_ratio keeps values within a factor of the largest (>= 1)")
    elif param is not None:
        raise UserError("--dynamic-param without --dynamic: choose sv_ratio, sv_fro or sv_cumulative")
    tensors, meta = read_lora(source)
    found = modules(tensors, source)
    refuse_dora(found, source, "an SVD of up·down")
    if precision is not None and precision not in DTYPES:
        raise UserError(f"--precision {precision}: use one of {', '.join(DTYPES)}")
    first = next(iter(found.values())).down.dtype
    dtype = DTYPES[precision] if precision else first
    result = {k: v for k, v in tensors.items() if not k.startswith(tuple(found))}  # bundled embeddings as they are
    rows, retained, ranks = [], [], []
    with make_progress(err_console, show_progress, unit="module") as bar:
        task = bar.add_task("resizing", total=len(found))
        for name, module in found.items():
            resized = resize_module(module, dim, method, param or 0.0)
            result.update(module_tensors(name, resized.module, dtype))
            retained.append(resized.retained)
            ranks.append(resized.module.rank)
            rows.append([name, module.rank, resized.module.rank, f"{100 * resized.retained:.2f}%"])
            bar.advance(task)
    old_dims = sorted({m.rank for m in found.values()})
    label = f"{method} {param}" if method else f"dim {dim}"
    scales = {m.alpha / m.rank for m in found.values()}
    uniform = not method and len(scales) == 1 and set(ranks) == {dim}
    comment = meta.get("ss_training_comment", "")
    meta = {**meta, "ss_network_dim": str(dim) if uniform else "Dynamic",  # kohya's words for mixed ranks
            "ss_network_alpha": str(scales.pop() * dim) if uniform else "Dynamic",
            "ss_resize": json.dumps({"from": old_dims, "to": label,
                                     "mean_fro_retained": round(sum(retained) / len(retained), 6)}),
            "ss_training_comment": (comment + "; " if comment else "") +
            f"rank resized from {'/'.join(map(str, old_dims))} to {label}"}
    report = Report("resize", str(source), str(out))
    if not dry_run:
        write_lora(out, result, meta, source)
    report.outcomes.append(Outcome(out.name, WRITTEN if not dry_run else "planned"))
    mean = sum(retained) / len(retained)
    report.sections += [
        Section("resize", ["quantity", "value"], [
            ["modules", len(found)], ["rank before", ", ".join(map(str, old_dims))],
            ["rank after", f"{min(ranks)}..{max(ranks)}" if min(ranks) != max(ranks) else str(ranks[0])],
            ["Frobenius norm retained (mean)", f"{100 * mean:.2f}%"],
            ["Frobenius norm retained (min)", f"{100 * min(retained):.2f}%"],
            ["size", f"{_mib(tensors)} -> {_mib(result)} MiB"]]),
        Section("least kept", ["module", "rank", "new rank", "retained"],
                sorted(rows, key=lambda r: float(r[3][:-1]))[:10])]
    report.data.update({"modules": len(found), "mean_fro_retained": mean, "min_fro_retained": min(retained),
                        "ranks": sorted(set(ranks))})
    if math.isclose(mean, 1.0, abs_tol=1e-6) and max(ranks) >= max(old_dims):
        report.notes.append("the rank is not lower: the file changes the model exactly as before")
    return report


def _mib(tensors: dict[str, torch.Tensor]) -> str:
    return f"{sum(t.numel() * t.element_size() for t in tensors.values()) / 2 ** 20:.1f}"
