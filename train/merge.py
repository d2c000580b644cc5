"""`train merge`: LoRA files into one LoRA, or into a base model's single-file checkpoint.

LoRA + LoRA (each with its ratio r_i), kohya's two ways:
- concat: the modules side by side (ranks add up). up = [r_1 s_1 up_1 | r_2 s_2 up_2], down =
  [down_1; down_2], alpha = rank (scale 1): the merged change is exactly sum r_i s_i up_i down_i,
  whatever each file's rank and alpha (s_i = alpha_i / rank_i);
- svd: the summed change factored again at `--dim` (kohya's svd_merge_lora): a smaller file that
  keeps what the report says of the Frobenius norm.

LoRA into a checkpoint (`--into BASE.safetensors`): every module's change is added to the base
weight it adapts, and the file is written in the base's own layout and dtypes. Which tensor of
the file a module adapts is found by content: the base loads into diffusers as `train run` loads
it, each adapted layer's weight is hashed and looked up among the file's tensors (and the thirds
of OpenCLIP's fused q/k/v projections, which SD2 and SDXL's second encoder store as one tensor).
That needs no table of the three layouts' key names, and a layer found in no place, or in two,
is refused rather than guessed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from lorakit.errors import UserError
from lorakit.fsio import atomic_path
from lorakit.report import WRITTEN, Outcome, Report, Section
from lorakit.train.families import FAMILIES
from lorakit.train.lora_files import Module, module_tensors, modules, read_lora, refuse_dora, write_lora
from lorakit.train.precision import DTYPES
from lorakit.train.resize import factor

MODES = ("concat", "svd")


def _ratios(ratios: list[float] | None, n: int) -> list[float]:
    ratios = list(ratios) if ratios else [1.0] * n
    if len(ratios) != n:
        raise UserError(f"--ratios has {len(ratios)} values for {n} files: give one per file")
    return ratios


def _family(meta: dict) -> str | None:
    arch = meta.get("modelspec.architecture", "")
    return arch.split("/")[0] or meta.get("ss_base_model_version") or None


def _read_all(sources: list[Path]) -> list[tuple[Path, dict, dict, dict[str, Module]]]:
    read = []
    for path in sources:
        tensors, meta = read_lora(path)
        found = modules(tensors, path)
        refuse_dora(found, path, "a merge")
        read.append((path, tensors, meta, found))
    families = {_family(meta) for _, _, meta, _ in read} - {None}
    if len(families) > 1:
        raise UserError(f"these LoRAs were trained for different models ({', '.join(sorted(families))}); "
                        "a merge of them would fit none")
    return read


def merge_loras(sources: list[Path], out: Path, ratios: list[float] | None = None, mode: str = "concat",
                dim: int | None = None, precision: str = "fp16") -> Report:
    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: use concat or svd")
    if mode == "svd" and not dim:
        raise UserError("--mode svd needs --dim (the merged rank)")
    if mode == "concat" and dim:
        raise UserError("--dim is for --mode svd; concat keeps every rank (ranks add up)")
    if precision not in DTYPES:
        raise UserError(f"--precision {precision}: use one of {', '.join(DTYPES)}")
    ratios = _ratios(ratios, len(sources))
    read = _read_all(sources)
    names = list(dict.fromkeys(name for _, _, _, found in read for name in found))
    result: dict[str, torch.Tensor] = {}
    retained = []
    for name in names:
        parts = [(r, found[name]) for r, (_, _, _, found) in zip(ratios, read) if name in found]
        shapes = {(m.up.shape[0], *m.down.shape[1:]) for _, m in parts}
        if len(shapes) > 1:
            raise UserError(f"{name}: the files adapt it with different shapes {sorted(shapes)}; "
                            "they are not LoRAs of the same model")
        if mode == "concat":
            up = torch.cat([m.up.float() * (r * m.alpha / m.rank) for r, m in parts], 1)
            down = torch.cat([m.down.float() for _, m in parts], 0)
            merged = Module(down, up, float(down.shape[0]))
        else:
            resized = factor(sum(r * m.delta() for r, m in parts), dim, 1.0)
            merged = resized.module
            retained.append(resized.retained)
        result.update(module_tensors(name, merged, DTYPES[precision]))
    embeddings, notes = _embeddings(read)
    result.update(embeddings)
    meta = dict(read[0][2])
    for key in [k for k in meta if k in ("ss_tag_frequency", "ss_dataset_dirs")]:
        meta[key] = json.dumps(_merged_json([m.get(key) for _, _, m, _ in read]))
    ranks = {int(result[f"{n}.lora_down.weight"].shape[0]) for n in names}
    meta.update({"ss_network_dim": str(ranks.pop()) if len(ranks) == 1 else "Dynamic",
                 "ss_network_alpha": "Dynamic" if mode == "concat" else str(float(dim)),
                 "ss_merged_from": json.dumps([{"file": p.name, "ratio": r, "hash": m.get("sshs_model_hash")}
                                               for r, (p, _, m, _) in zip(ratios, read)]),
                 "modelspec.title": out.stem,
                 "modelspec.merged_from": ", ".join(m.get("modelspec.title") or p.stem for p, _, m, _ in read)})
    write_lora(out, result, meta, *sources)
    report = Report("merge", ", ".join(str(p) for p in sources), str(out))
    report.outcomes.append(Outcome(out.name, WRITTEN))
    rows = [[p.name, r, len(found), "/".join(map(str, sorted({m.rank for m in found.values()})))]
            for r, (p, _, _, found) in zip(ratios, read)]
    report.sections.append(Section("merged", ["file", "ratio", "modules", "rank"], rows))
    report.data.update({"modules": len(names), "mode": mode})
    if retained:
        mean = sum(retained) / len(retained)
        report.data.update({"mean_fro_retained": mean, "min_fro_retained": min(retained)})
        report.notes.append(f"svd at rank {dim}: Frobenius norm retained {100 * mean:.2f}% on average, "
                            f"{100 * min(retained):.2f}% at least")
    report.notes += notes
    return report


def _merged_json(values: list[str | None]) -> dict:
    merged: dict = {}
    for value in values:
        try:
            merged.update(json.loads(value or "{}"))
        except json.JSONDecodeError:
            continue
    return merged


def _embeddings(read) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Bundled embeddings travel with the merge; one name in two files keeps the first's."""
    out: dict[str, torch.Tensor] = {}
    owner: dict[str, str] = {}
    notes = []
    for path, tensors, _, _ in read:
        for key, tensor in tensors.items():
            if not key.startswith("bundle_emb."):
                continue
            name = key.split(".")[1]
            if owner.setdefault(name, path.name) != path.name:
                notes.append(f"embedding {name} is in {owner[name]} and {path.name}: kept {owner[name]}'s")
                continue
            out[key] = tensor
    return out, sorted(set(notes))


def _digest(tensor: torch.Tensor) -> bytes:
    return hashlib.blake2b(tensor.detach().float().contiguous().numpy().tobytes(), digest_size=16).digest()


def _locations(state: dict[str, torch.Tensor], sizes: set[int]) -> dict[bytes, list[tuple[str, int | None]]]:
    """Each checkpoint tensor (and each third of a fused in_proj_weight) by its content."""
    index: dict[bytes, list[tuple[str, int | None]]] = {}
    for key, tensor in state.items():
        if tensor.dim() < 2 or not tensor.is_floating_point():
            continue
        if tensor.numel() in sizes:
            index.setdefault(_digest(tensor), []).append((key, None))
        if key.endswith("in_proj_weight") and tensor.shape[0] % 3 == 0 and tensor.numel() // 3 in sizes:
            for i, third in enumerate(tensor.chunk(3)):
                index.setdefault(_digest(third), []).append((key, i))
    return index


def merge_into(base: Path, sources: list[Path], out: Path, ratios: list[float] | None = None,
               configs: Path | None = None) -> Report:
    """`configs`: a diffusers-layout config folder for a base of another architecture (as
    model.config); the shipped SD1/SD2/SDXL configs otherwise."""
    from safetensors import safe_open

    from lorakit.train.naming import text_encoder_targets, unet_targets
    from lorakit.train.single_file import load_single_file

    if base.suffix != ".safetensors":
        raise UserError(f"--into {base}: a single-file .safetensors checkpoint (convert a .ckpt by training "
                        "on it once with model.allow_pickle, or with your UI)")
    ratios = _ratios(ratios, len(sources))
    read = _read_all(sources)
    family, _, encoders, _, unet = load_single_file(base, "auto", False, False,
                                                       str(configs) if configs else None)
    facts = FAMILIES[family]
    targets = {t.name: t.module for t in unet_targets(unet, locon=True, sgm=facts.sgm_unet)}
    for encoder, prefix in zip(encoders, facts.encoders):
        targets.update({t.name: t.module for t in text_encoder_targets(encoder, prefix)})
    wanted = {name for _, _, _, found in read for name in found}
    missing = sorted(wanted - set(targets))
    if missing:
        raise UserError(f"{len(missing)} modules of the LoRA have no layer in this {family} model "
                        f"(first: {missing[0]}): it was trained for another model family")
    with safe_open(str(base), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata() or {}
    index = _locations(state, {targets[n].weight.numel() for n in wanted})
    changed = 0
    for name in sorted(wanted):
        places = index.get(_digest(targets[name].weight), [])
        if len(places) != 1:
            raise UserError(f"{name}: its layer's weight is found {len(places)} times in {base.name}; "
                            "refusing to guess where the change goes")
        key, third = places[0]
        delta = sum(r * found[name].delta() for r, (_, _, _, found) in zip(ratios, read) if name in found)
        tensor = state[key] if third is None else state[key].chunk(3)[third]
        updated = (tensor.float() + delta.reshape(tensor.shape)).to(tensor.dtype)
        if third is None:
            state[key] = updated
        else:
            state[key] = state[key].clone()
            rows = tensor.shape[0]
            state[key][third * rows:(third + 1) * rows] = updated
        changed += 1
    if any(out.resolve() == p.resolve() for p in [base, *sources]):
        raise UserError(f"{out}: the output would replace its own source; choose another name")
    from safetensors.torch import save_file

    meta["lorakit_merged_loras"] = json.dumps([{"file": p.name, "ratio": r, "hash": m.get("sshs_model_hash")}
                                               for r, (p, _, m, _) in zip(ratios, read)])
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    report = Report("merge", ", ".join(str(p) for p in sources), str(out))
    report.outcomes.append(Outcome(out.name, WRITTEN))
    report.sections.append(Section("merged into the checkpoint", ["quantity", "value"],
                                   [["base", base.name], ["family", family], ["layers changed", changed],
                                    ["LoRAs", ", ".join(f"{p.name} x {r}" for r, (p, _, _, _) in zip(ratios, read))]]))
    report.data.update({"family": family, "layers_changed": changed})
    return report
