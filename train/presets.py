"""`train init --preset NAME`: a complete, commented config with the training guide's values
(its part 4; docs/formats.md, "Optimisers, schedules, run control"), not kohya's alpha 1 / lr 2e-6
trap. The file is rendered from the config dataclasses, so it always lists every key with its
current meaning."""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from typing import Any

from lorakit.train.config import Config

# preset -> {"section.key": value}; everything else keeps the defaults in config.py
PRESETS: dict[str, dict[str, Any]] = {
    "sd15": {
        "model.family": "sd1", "network.dim": 32, "network.alpha": 32.0, "network.dropout": 0.1,
        "network.unet_lr": 1e-4, "network.text_encoder_lr": 5e-5,
        "optimizer.type": "adamw", "optimizer.learning_rate": 1e-4, "optimizer.weight_decay": 0.12,
        "scheduler.type": "cosine_with_restarts", "scheduler.cycles": 3, "scheduler.warmup_ratio": 0.1,
        "loss.min_snr_gamma": 5.0, "data.resolution": 512, "training.max_epochs": 10,
    },
    "sd15-prodigy": {
        "model.family": "sd1", "network.dim": 32, "network.alpha": 1.0, "network.dropout": 0.1,
        "optimizer.type": "prodigy", "optimizer.learning_rate": 1.0, "optimizer.weight_decay": 0.1,
        "optimizer.args": {"decouple": True, "use_bias_correction": True, "safeguard_warmup": True},
        "scheduler.type": "cosine", "loss.min_snr_gamma": 5.0, "data.resolution": 512,
        "training.max_epochs": 10,
    },
    "sd2": {  # SD2.x: 768 px (768-v models predict v: read from the model's scheduler, or set below)
        "model.family": "sd2", "network.dim": 32, "network.alpha": 32.0, "network.dropout": 0.1,
        "network.unet_lr": 1e-4, "network.text_encoder_lr": 5e-5,
        "optimizer.type": "adamw", "optimizer.learning_rate": 1e-4, "optimizer.weight_decay": 0.12,
        "scheduler.type": "cosine_with_restarts", "scheduler.cycles": 3, "scheduler.warmup_ratio": 0.1,
        "loss.min_snr_gamma": 5.0, "data.resolution": 768, "training.max_epochs": 10,
    },
    "sdxl": {
        "model.family": "sdxl", "network.dim": 16, "network.alpha": 16.0, "network.dropout": 0.1,
        "network.unet_lr": 4e-4, "network.text_encoder_lr": 4.5e-4,
        "optimizer.type": "adamw", "optimizer.learning_rate": 4e-4, "optimizer.weight_decay": 0.12,
        "scheduler.type": "cosine_with_restarts", "scheduler.cycles": 3, "scheduler.warmup_ratio": 0.2,
        "loss.min_snr_gamma": 5.0, "data.resolution": 1024, "data.max_bucket_reso": 2048,
        "training.max_epochs": 5, "training.gradient_checkpointing": True,
    },
    "sdxl-prodigy": {
        "model.family": "sdxl", "network.dim": 16, "network.alpha": 1.0, "network.dropout": 0.1,
        "optimizer.type": "prodigy", "optimizer.learning_rate": 1.0, "optimizer.weight_decay": 0.1,
        "optimizer.args": {"decouple": True, "use_bias_correction": True, "safeguard_warmup": True},
        "scheduler.type": "cosine", "scheduler.warmup_ratio": 0.2, "loss.min_snr_gamma": 5.0,
        "data.resolution": 1024, "data.max_bucket_reso": 2048, "training.max_epochs": 5,
        "training.gradient_checkpointing": True,
    },
    "style": {  # the guide, part 8: styles suit LyCORIS; LoCon with conv 16/1
        "model.family": "sd1", "network.module": "locon", "network.dim": 32, "network.alpha": 32.0,
        "network.conv_dim": 16, "network.conv_alpha": 1.0, "network.unet_lr": 1e-4,
        "network.text_encoder_lr": 5e-5, "optimizer.type": "adamw", "optimizer.learning_rate": 1e-4,
        "optimizer.weight_decay": 0.12, "scheduler.type": "cosine_with_restarts", "scheduler.cycles": 3,
        "scheduler.warmup_ratio": 0.1, "loss.min_snr_gamma": 5.0, "data.resolution": 512,
        "training.max_epochs": 10,
    },
    "ti": {  # A1111's textual inversion: only the embedding trains, prompts from a template
        "model.family": "sd1", "network.module": "none", "optimizer.type": "adamw",
        "optimizer.learning_rate": "0.005:500, 1e-3:2000, 5e-4", "scheduler.type": "constant",
        "data.template": "subject", "data.resolution": 512, "training.max_epochs": 10,
    },
}

# presets whose [[embeddings]] table is active (the others show it commented out)
WITH_EMBEDDING = {"ti": {"token_count": 4}}

COMMENTS = {
    "version": "config format version",
    "model.base": "a diffusers folder, a Hugging Face repo id, or a .safetensors checkpoint",
    "model.family": "auto | sd1 | sd2 | sdxl",
    "model.v_parameterization": "unset: as the model's scheduler says (SD2 768-v predicts v); set it for a single file",
    "model.allow_pickle": ".ckpt files run code when loaded: only for files you trust",
    "network.module": "lora | locon | loha | lokr | ia3 | dylora | glora | diag-oft | none",
    "network.alpha": "the guide: alpha = dim for Adam; 1 for adaptive optimisers (Prodigy, DAdapt)",
    "network.dim": "32 is a good start; 8 for concepts the model nearly knows; 16 for SDXL",
    "network.dropout": "kohya's network_dropout: the guide uses 0.1 for LoRA; 0 for LoHa, LoKr, IA3, GLoRA (refused)",
    "optimizer.learning_rate": "with Prodigy/DAdapt: 1.0, they find the rate themselves",
    "scheduler.warmup_ratio": "share of the steps spent warming up (the guide: 10%, SDXL 20%)",
    "loss.min_snr_gamma": "Min-SNR weighting, gamma 5 (Hang et al. 2023)",
    "data.image_root": "folders named N_name below it: N repeats, name = trigger (tag balance sets N)",
    "data.keep_tokens": "tags kept in place when captions are shuffled: the trigger (and class)",
    "training.max_epochs": "the guide aims at ~100 passes per image: epochs x repeats",
    "training.max_steps": "wins over max_epochs when set",
    "data.template": "textual inversion: subject | style | a file of lines with [name] and [filewords]",
    "output.metadata.title": "unset: output.name; these keys are shown by A1111, ComfyUI and Civitai",
    "output.metadata.trigger_words": "the words that call the LoRA up, e.g. [\"kitchan\"]",
    "saving.bundle_embeddings": "false: standalone files in NAME_embeddings/ (diffusers, ComfyUI)",
    "embeddings.placeholder": "the trigger word of the captions (several words allowed)",
    "embeddings.token_count": "vectors: each takes one of the prompt's 75 tokens",
    "embeddings.init_text": "start from these words' vectors (padded with *, cut to token_count)",
    "embeddings.stop_training_after": "then the embedding stays fixed and the LoRA goes on (the pivot)",
    "embeddings.learning_rate": "unset: optimizer.learning_rate; A1111's \"0.005:100, 1e-3\" works too",
    "embeddings.clip_l_learning_rate": "SDXL trains vectors per encoder: clip_l's rate (unset: learning_rate)",
    "embeddings.clip_g_learning_rate": "and clip_g's (SDXL only)",
    "embeddings.preserve_norm": "keep the vectors at the vocabulary's median norm",
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def build(preset: str) -> Config:
    config = Config()
    for dotted, value in PRESETS[preset].items():
        section, key = dotted.split(".")
        setattr(getattr(config, section), key, value)
    return config


def _embedding_table(preset: str, trigger: str) -> list[str]:
    from lorakit.train.config import EmbeddingConfig

    active = preset in WITH_EMBEDDING
    emb = EmbeddingConfig(placeholder=trigger, **WITH_EMBEDDING.get(preset, {}))
    mark = "" if active else "# "
    lines = ["", "# An additional embedding trained with the network (pivotal tuning; any number of these"
                 " tables)." if not active else "# The embedding to train.", f"{mark}[[embeddings]]"]
    for f in fields(emb):
        v = getattr(emb, f.name)
        comment = COMMENTS.get(f"embeddings.{f.name}")
        text = f"# {f.name} =" if v is None else f"{mark}{f.name} = {_toml_value(v)}"
        lines.append(text + (f"  # {comment}" if comment else ""))
    return lines


def _table(name: str, value: Any) -> list[str]:
    """`[name]` with every key; a nested table (output.metadata) follows as `[name.sub]`."""
    lines, nested = ["", f"[{name}]"], []
    for f in fields(value):
        v = getattr(value, f.name)
        if is_dataclass(v):
            nested.append((f"{name}.{f.name}", v))
            continue
        comment = COMMENTS.get(f"{name}.{f.name}")
        text = f"# {f.name} =" if v is None else f"{f.name} = {_toml_value(v)}"
        lines.append(text + (f"  # {comment}" if comment else ""))
    for sub, v in nested:
        lines += _table(sub, v)
    return lines


def render(preset: str, image_root: str = "dataset", base: str = "", trigger: str = "trigger") -> str:
    config = build(preset)
    config.data.image_root = image_root
    config.model.base = base
    lines = [f"# lorakit training config, preset '{preset}' (train init --preset {preset})",
             "# Every key is listed with its value; an unknown or misspelt key is an error.",
             "# `train plan` checks this file and the dataset without loading a model.", "",
             f"version = {config.version}  # {COMMENTS['version']}"]
    for section in fields(config):
        value = getattr(config, section.name)
        if not is_dataclass(value):
            continue
        lines += _table(section.name, value)
    lines += _embedding_table(preset, trigger)
    lines += ["", "# kohya-style datasets can be used instead of data.image_root, e.g. the file",
              "# `tag balance DIR --toml dataset.toml` writes: [[datasets]] / [[datasets.subsets]].", ""]
    return "\n".join(lines)
