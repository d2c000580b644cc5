"""`train export` and `train embedding inspect`.

Bundled embeddings (`bundle_emb.*` in a LoRA) are what A1111 reads, but ComfyUI's LoRA loader
ignores them and diffusers' `load_lora_weights` fails on them. `export` writes, from any saved
LoRA (bundled, or with its `NAME_embeddings/` folder), the set of files each UI wants:

- a1111:     OUT/NAME.safetensors with the embeddings bundled;
- diffusers: OUT/NAME.safetensors without them, and OUT/NAME_embeddings/EMB.safetensors
             (`pipe.load_lora_weights` + `pipe.load_textual_inversion`);
- comfyui:   OUT/loras/NAME.safetensors and OUT/embeddings/EMB.safetensors, ComfyUI's own
             models/ layout (write `embedding:EMB` in a prompt).
"""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.errors import UserError
from lorakit.report import OK, WRITTEN, Outcome, Report, Section
from lorakit.train.embedding_files import BUNDLE, EmbeddingFile, bundle_keys, read_embedding, save_standalone
from lorakit.train.lora_files import PREFIXES, read_lora, write_lora

TARGETS = ("a1111", "diffusers", "comfyui")


def _lora_only(tensors: dict) -> bool:
    """diffusers' load_lora_weights reads LoRA, LoCon and DyLoRA (lora_down/lora_up/alpha) only."""
    return all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in tensors
               if k.startswith(PREFIXES))


def _embeddings(path: Path, tensors: dict) -> list[EmbeddingFile]:
    if any(k.startswith(BUNDLE) for k in tensors):
        return read_embedding(path)
    folder = path.with_name(path.stem + "_embeddings")
    files = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".pt")) if folder.is_dir() else []
    return [found for file in files for found in read_embedding(file)]


def export(source: Path, target: str, out: Path | None = None) -> Report:
    if target not in TARGETS:
        raise UserError(f"--for {target!r}: use one of {', '.join(TARGETS)}")
    tensors, meta = read_lora(source)
    if target == "diffusers" and any(k.endswith(".dora_scale") for k in tensors):
        raise UserError(f"{source}: a DoRA LoRA; diffusers drops its dora_scale keys when it loads SD and SDXL "
                        "LoRAs, so the result would not be this LoRA: use --for comfyui or --for a1111")
    if target == "diffusers" and not _lora_only(tensors):
        algo = json.loads(meta.get("ss_network_args") or "{}").get("algo", "a LyCORIS network")
        raise UserError(f"{source}: diffusers loads LoRA, LoCon and DyLoRA files only, not {algo}; "
                        "use --for comfyui or --for a1111")
    embeddings = _embeddings(source, tensors)
    out = out or source.parent / f"export-{target}"
    clean = {k: v for k, v in tensors.items() if not k.startswith(BUNDLE)}
    written = []
    if target == "a1111":
        bundled = dict(clean)
        for found in embeddings:
            bundled.update(bundle_keys(found.name, list(found.vectors.values())))
        written.append(write_lora(out / source.name, bundled, meta, source))
    else:
        lora_path = out / ("loras" if target == "comfyui" else "") / source.name
        emb_dir = out / "embeddings" if target == "comfyui" else out / f"{source.stem}_embeddings"
        written.append(write_lora(lora_path, clean, meta, source))
        for found in embeddings:
            written.append(save_standalone(emb_dir / f"{found.name}.safetensors", found.name, list(found.vectors.values()),
                                           found.step or 0, found.base_model or meta.get("ss_sd_model_name")))
    report = Report("export", str(source), str(out))
    report.outcomes = [Outcome(str(p.relative_to(out)), WRITTEN) for p in written]
    report.data["embeddings"] = [found.name for found in embeddings]
    if not embeddings:
        report.notes.append("the LoRA has no embeddings: the exported file is the LoRA alone")
    return report


def inspect(path: Path) -> Report:
    found = read_embedding(path)
    report = Report("embedding inspect", str(path))
    rows, items = [], []
    for emb in found:
        for key, vectors in emb.vectors.items():
            norms = vectors.norm(dim=1)
            rows.append([emb.name, key, vectors.shape[0], vectors.shape[1], f"{float(norms.min()):.4f}",
                         f"{float(norms.mean()):.4f}", f"{float(norms.max()):.4f}"])
        items.append({"name": emb.name, "kind": emb.kind, "family": emb.family, "step": emb.step,
                      "base_model": emb.base_model, "vectors": next(iter(emb.vectors.values())).shape[0],
                      "encoders": {k: {"dim": v.shape[1], "norms": [round(float(n), 6) for n in v.norm(dim=1)]}
                                   for k, v in emb.vectors.items()}})
        report.outcomes.append(Outcome(emb.name, OK))
        report.notes.append(f"{emb.name} ({emb.kind}): fits {emb.family}"
                            + (f"; trained {emb.step} steps" if emb.step is not None else "")
                            + (f" on {emb.base_model}" if emb.base_model else ""))
    report.sections.append(Section("vectors", ["embedding", "encoder", "vectors", "dim", "min norm", "mean norm",
                                               "max norm"], rows))
    report.data["embeddings"] = items
    return report
