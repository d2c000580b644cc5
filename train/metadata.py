"""The `ss_*` and `modelspec.*` metadata kohya's files carry (docs/formats.md, "Training"): what A1111's
and the civitai tooling's info panels show. All values are strings; nested ones are JSON."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from lorakit.train.caption_lines import is_sentence
from lorakit.train.config import Config
from lorakit.train.data import Item, resolution_pair
from lorakit.train.families import FAMILIES
from lorakit.train.network_kinds import KINDS, dylora_unit

# kept with saving.private_metadata: what loaders need, and nothing about the dataset or paths
PUBLIC = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
          "ss_base_model_version", "ss_v2", "modelspec.architecture", "modelspec.prediction_type")


def base_model_version(family: str, v_prediction: bool) -> str:
    """kohya's ss_base_model_version: sd_v1 / sd_v2, with _v for v-prediction; SDXL's one name."""
    return FAMILIES[family].kohya(v_prediction)



def metadata(config: Config, items: list[Item], step: int, steps_per_epoch: int, total: int,
             started: float, family: str) -> dict[str, str]:
    """`family`: the model family the run found when it loaded the model (sd1, sd2, sdxl)."""
    n, o, d = config.network, config.optimizer, config.data
    v_prediction = bool(config.model.v_parameterization)  # resolved at load (train/setup.py)
    architecture = FAMILIES[family].modelspec(v_prediction)
    frequency: dict[str, Counter] = {}
    dirs: dict[str, dict] = {}
    for item in items:
        folder = item.image.parent.name
        # tags only: a sentence line split at its commas would count its clauses as tags
        tags = [t.strip() for line in (item.lines or (item.caption,)) if not is_sentence(line)
                for t in line.split(",") if t.strip()]
        frequency.setdefault(folder, Counter()).update(tags)
        entry = dirs.setdefault(folder, {"n_repeats": item.repeats, "img_count": 0})
        entry["img_count"] += 1
    # what kohya writes: LyCORIS runs as `lycoris.kohya` with the algorithm among the args
    kind = KINDS[n.module]
    module = kind.file_module
    network_args = {"algo": n.module, **n.args} if kind.builder == "lycoris" else \
        {"unit": dylora_unit(n.args)} if kind.rank_blocks else dict(n.args)  # lora/locon: dora_wd, blocks
    if kind.convolutions:
        network_args.update({"conv_dim": n.conv_dim, "conv_alpha": n.conv_alpha})
    network_args.update({k: getattr(n, k) for k in ("rank_dropout", "module_dropout") if getattr(n, k)})
    resolution = resolution_pair(d.resolution)
    meta = {
        "ss_network_module": module,
        "ss_network_dim": str(n.dim), "ss_network_alpha": str(n.alpha),
        "ss_network_args": json.dumps(network_args), "ss_network_dropout": str(n.dropout),
        "ss_scale_weight_norms": str(n.scale_weight_norms),
        "ss_base_model_version": base_model_version(family, v_prediction), "ss_v2": str(family == "sd2"),
        "ss_resolution": f"({resolution[0]}, {resolution[1]})", "ss_clip_skip": str(config.model.clip_skip),
        "ss_learning_rate": str(o.learning_rate), "ss_unet_lr": str(n.unet_lr or o.learning_rate),
        "ss_text_encoder_lr": str(n.text_encoder_lr or o.learning_rate), "ss_optimizer": o.type,
        "ss_lr_scheduler": config.scheduler.type, "ss_steps": str(step),
        "ss_epoch": str(step // max(1, steps_per_epoch)), "ss_num_epochs": str(-(-total // max(1, steps_per_epoch))),
        "ss_seed": str(config.training.seed), "ss_min_snr_gamma": str(config.loss.min_snr_gamma),
        "ss_noise_offset": str(config.loss.noise_offset), "ss_zero_terminal_snr": str(config.loss.zero_terminal_snr),
        "ss_tag_frequency": json.dumps({k: dict(v) for k, v in frequency.items()}),
        "ss_dataset_dirs": json.dumps(dirs),
        "ss_num_train_images": str(sum(i.repeats for i in items if not i.is_reg)),
        "ss_num_reg_images": str(sum(1 for i in items if i.is_reg)),
        "ss_training_started_at": str(started), "ss_training_finished_at": str(time.time()),
        "ss_output_name": config.output.name, "ss_sd_model_name": Path(config.model.base).name, "ss_training_comment": config.output.comment,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{architecture}/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.prediction_type": "v" if v_prediction else "epsilon",
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.date": time.strftime("%Y-%m-%d"),
    }
    if config.saving.private_metadata:
        meta = {k: v for k, v in meta.items() if k in PUBLIC}
    return {**meta, **model_card(config)}  # what the user wrote to be shown stays, private or not


def model_card(config: Config) -> dict[str, str]:
    """output.metadata as modelspec.* keys; unset ones are left out (as kohya does)."""
    card = config.output.metadata
    values = {"title": card.title or config.output.name, "author": card.author, "description": card.description,
              "license": card.license, "tags": ", ".join(card.tags), "trigger_phrase": ", ".join(card.trigger_words),
              "usage_hint": card.usage_hint}
    return {f"modelspec.{k}": v for k, v in values.items() if v}
