"""Reading and writing LoRA files as files (no model loaded): what `train inspect`, `train
resize`, `train merge` and `train export` share.

A kohya LoRA file holds, per adapted layer, `PREFIX.lora_down.weight` (rank x in, or
rank x in x k x k for a LoCon convolution), `PREFIX.lora_up.weight` (out x rank) and a float
`PREFIX.alpha`; the layer's change is up @ down x alpha / rank (docs/formats.md, "Training").
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as save_bytes

from lorakit.errors import UserError
from lorakit.fsio import atomic_path
from lorakit.report import OK, Outcome, Report, Section
from lorakit.train.embedding_files import BUNDLE
from lorakit.train.network import compose, model_hashes
from lorakit.train.tensor_files import read_safetensors

PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
PARTS = (".lora_down.weight", ".lora_up.weight", ".alpha", ".dora_scale")


@dataclass
class Module:
    """One adapted layer of a LoRA / LoCon file."""
    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    dora_scale: torch.Tensor | None = None  # DoRA's magnitude ([1, in]): not a plain low-rank change

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self) -> torch.Tensor:
        """The change to the layer's weight, float32, in the layer's own shape."""
        return compose(self.up.float(), self.down.float()) * (self.alpha / self.rank)


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: LoRA files are read as .safetensors (the format train run writes)")
    tensors, meta = read_safetensors(path)
    if not any(k.startswith(PREFIXES) for k in tensors):
        raise UserError(f"{path}: not a LoRA (no lora_unet_/lora_te keys)")
    return tensors, meta


# what a LyCORIS file's keys hold where a LoRA's hold lora_down / lora_up: named, so the refusal says what the file is
LYCORIS_MARKERS = {".hada_w1_a": "LoHa", ".lokr_w1": "LoKr", ".oft_blocks": "Diag-OFT", ".a1.weight": "GLoRA",
                   ".on_input": "IA3"}


def modules(tensors: dict[str, torch.Tensor], path: Path | str = "") -> dict[str, Module]:
    """The LoRA / LoCon modules by key prefix. Any other network key (LyCORIS LoHa, LoKr, …)
    is refused: their factors are not a product of two matrices that these tools can rewrite."""
    found: dict[str, Module] = {}
    for key in tensors:
        kind = next((k for marker, k in LYCORIS_MARKERS.items() if marker in key), None)
        if kind is not None:
            raise UserError(f"{path}: a {kind} file; {kind} files are not supported here (resize, merge and "
                            "network.weights read LoRA, LoCon and DyLoRA files)")
    for key in tensors:
        if not key.startswith(PREFIXES):
            continue
        if not key.endswith(PARTS):
            raise UserError(f"{path}: {key} is not a LoRA/LoCon key (lora_down, lora_up, alpha); "
                            "resize and merge read LoRA, LoCon and DyLoRA files")
        name = key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
        if name in found:
            continue
        down, up = tensors.get(f"{name}.lora_down.weight"), tensors.get(f"{name}.lora_up.weight")
        if down is None or up is None:
            raise UserError(f"{path}: {name} lacks its lora_down or lora_up weight")
        alpha = tensors.get(f"{name}.alpha")
        found[name] = Module(down, up, float(alpha) if alpha is not None else float(down.shape[0]),
                             tensors.get(f"{name}.dora_scale"))
    return found


def refuse_dora(found: dict[str, Module], path: Path | str, what: str) -> None:
    if any(m.dora_scale is not None for m in found.values()):
        raise UserError(f"{path}: a DoRA file (dora_scale): its change is not a low-rank product, so {what} "
                        "would not keep what it does")


def module_tensors(name: str, module: Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {f"{name}.lora_down.weight": module.down.to(dtype).contiguous(),
            f"{name}.lora_up.weight": module.up.to(dtype).contiguous(),
            f"{name}.alpha": torch.tensor(float(module.alpha), dtype=torch.float32)}


def write_lora(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str], *sources: Path) -> Path:
    """Atomically, with the `sshs_*` hashes of the new tensors; never over a file it reads."""
    if any(path.resolve() == source.resolve() for source in sources):
        raise UserError(f"{path}: the output would replace its own source; choose another name")
    meta = {k: v for k, v in meta.items() if not k.startswith("sshs_")}
    meta.update(model_hashes(tensors, meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(save_bytes(tensors, meta))
    return path


CARD = ("title", "author", "description", "license", "tags", "trigger_phrase", "usage_hint", "date",
        "architecture", "prediction_type", "resolution")
TRAINING = (("base model", "ss_base_model_version"), ("trained on", "ss_sd_model_name"),
            ("network", "ss_network_module"), ("dim", "ss_network_dim"), ("alpha", "ss_network_alpha"),
            ("network args", "ss_network_args"), ("steps", "ss_steps"), ("epochs", "ss_epoch"),
            ("optimizer", "ss_optimizer"), ("learning rate", "ss_learning_rate"), ("scheduler", "ss_lr_scheduler"),
            ("images", "ss_num_train_images"), ("comment", "ss_training_comment"),
            ("resized", "ss_resize"), ("merged from", "ss_merged_from"))


def inspect_lora(path: Path) -> Report:
    """What a LoRA file says about itself: its model card (modelspec.*), how it was trained
    (ss_*), and what it holds (modules per part, ranks, bundled embeddings, top tags)."""
    tensors, meta = read_lora(path)
    report = Report("inspect", str(path), about_files=False)
    card = [[k, meta[f"modelspec.{k}"]] for k in CARD if meta.get(f"modelspec.{k}")]
    training = [[label, meta[k]] for label, k in TRAINING if meta.get(k) not in (None, "", "None")]
    parts: Counter = Counter()
    ranks: Counter = Counter()
    for key, tensor in tensors.items():
        if key.endswith(".lora_down.weight"):
            parts[key.split("_", 2)[1] if not key.startswith("lora_unet_") else "unet"] += 1
            ranks[tensor.shape[0]] += 1
    embeddings = sorted({k[len(BUNDLE):].split(".")[0] for k in tensors if k.startswith(BUNDLE)})
    contents = [[f"modules ({part})", n] for part, n in sorted(parts.items())]
    contents.append(["ranks", ", ".join(f"{r} ({n})" for r, n in sorted(ranks.items()))])
    dora = sum(1 for k in tensors if k.endswith(".dora_scale"))
    if dora:
        contents.append(["DoRA modules (dora_scale)", dora])
    if embeddings:
        contents.append(["bundled embeddings", ", ".join(embeddings)])
    report.sections += [Section("model card", ["key", "value"], card),
                        Section("training", ["key", "value"], training),
                        Section("contents", ["key", "value"], contents)]
    try:
        frequency = json.loads(meta.get("ss_tag_frequency") or "{}")
    except json.JSONDecodeError:
        frequency = {}
    tags: Counter = Counter()
    for counts in frequency.values():
        tags.update(counts)
    if tags:
        report.sections.append(Section("top tags", ["tag", "images"], [[t, n] for t, n in tags.most_common(15)]))
    report.outcomes.append(Outcome(path.name, OK))
    report.data.update({"metadata": meta, "modules": dict(parts), "ranks": {str(r): n for r, n in ranks.items()},
                        "embeddings": embeddings})
    if not any(meta.get(f"modelspec.{k}") for k in ("author", "description", "license", "trigger_phrase")):
        report.notes.append("no model card: set [output.metadata] (title, author, license, trigger_words, …) "
                            "in the config before training")
    return report
