"""`train import kohya CONFIG [--dataset DATASET]`: a kohya sd-scripts training config (the TOML
of `--config_file`, its sections flattened as kohya does, or the JSON kohya_ss saves) as a
lorakit config, with a report of every key: where it went, or why it went nowhere.

Each kohya key is a row of KEYS: the lorakit key it sets and how its value converts, or the
reason it has none (an option lorakit lacks is said, never dropped silently). The dataset config
(`--dataset`, or the config's own `dataset_config`) is copied as it is: lorakit reads kohya's
dataset TOML, `[general]` included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import tomllib

from lorakit.errors import UserError
from lorakit.report import WRITTEN, Outcome, Report, Section


@dataclass(frozen=True)
class To:
    key: str  # section.name (output.metadata.author: three parts)
    convert: Callable[[Any], Any] = lambda v: v


def _choice(table: dict[str, str], what: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        found = table.get(str(value).lower())
        if found is None:
            raise ValueError(f"{what} {value!r} has no lorakit equivalent (lorakit has {', '.join(sorted(set(table.values())))})")
        return found
    return convert


def _resolution(value: Any) -> int | list[int]:
    parts = [int(float(p)) for p in str(value).replace("x", ",").split(",") if p.strip()]
    return parts[0] if len(parts) == 1 or parts[0] == parts[1] else parts[:2]


def _tags(value: Any) -> list[str]:
    return [t.strip() for t in str(value).split(",") if t.strip()] if not isinstance(value, list) else value


def _true(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes")


def _not(value: Any) -> bool:
    return not _true(value)


OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "prodigy": "prodigy", "dadaptadam": "dadaptadam",
              "dadaptation": "dadaptadam", "lion": "lion", "adafactor": "adafactor"}
SCHEDULERS = {"constant": "constant", "constant_with_warmup": "constant", "cosine": "cosine",
              "cosine_with_restarts": "cosine_with_restarts", "polynomial": "polynomial", "linear": "linear"}
SAMPLERS = {"euler_a": "euler_a", "k_euler_a": "euler_a", "euler": "euler", "k_euler": "euler", "ddim": "ddim",
            "dpmsolver++": "dpm++_2m", "k_dpm_2m": "dpm++_2m", "dpm++_2m": "dpm++_2m"}
PRECISIONS = {"fp16": "fp16", "bf16": "bf16", "float": "fp32", "fp32": "fp32"}

KEYS: dict[str, To | str] = {
    "pretrained_model_name_or_path": To("model.base"),
    "vae": To("model.vae"),
    "v2": To("model.family", lambda v: "sd2" if _true(v) else "auto"),
    "sdxl": To("model.family", lambda v: "sdxl" if _true(v) else "auto"),  # kohya_ss
    "v_parameterization": To("model.v_parameterization", _true),
    "clip_skip": To("model.clip_skip", int),
    "network_dim": To("network.dim", int),
    "network_alpha": To("network.alpha", float),
    "network_dropout": To("network.dropout", float),
    "conv_dim": To("network.conv_dim", int),  # kohya_ss
    "conv_alpha": To("network.conv_alpha", float),
    "rank_dropout": To("network.rank_dropout", float),
    "module_dropout": To("network.module_dropout", float),
    "unet_lr": To("network.unet_lr", float),
    "text_encoder_lr": To("network.text_encoder_lr", float),
    "network_train_unet_only": To("network.train_text_encoder", _not),
    "network_train_text_encoder_only": To("network.train_unet", _not),
    "network_weights": To("network.weights"),
    "dim_from_weights": To("network.dim_from_weights", _true),
    "scale_weight_norms": To("network.scale_weight_norms", float),
    "optimizer_type": To("optimizer.type", _choice(OPTIMIZERS, "optimizer_type")),
    "optimizer": To("optimizer.type", _choice(OPTIMIZERS, "optimizer")),  # kohya_ss
    "learning_rate": To("optimizer.learning_rate", float),
    "lr_scheduler": To("scheduler.type", _choice(SCHEDULERS, "lr_scheduler")),
    "lr_warmup_steps": "- read below: steps, or a ratio when under 1 (as kohya reads it)",
    "lr_warmup": "- read below: kohya_ss's percentage",
    "lr_scheduler_num_cycles": To("scheduler.cycles", int),
    "lr_scheduler_power": To("scheduler.power", float),
    "max_train_epochs": To("training.max_epochs", int),
    "epoch": To("training.max_epochs", int),  # kohya_ss
    "max_train_steps": To("training.max_steps", int),
    "gradient_checkpointing": To("training.gradient_checkpointing", _true),
    "gradient_accumulation_steps": To("training.gradient_accumulation_steps", int),
    "mixed_precision": To("training.mixed_precision", _choice({"no": "no", "fp16": "fp16", "bf16": "bf16"},
                                                              "mixed_precision")),
    "full_fp16": To("training.weights_dtype", lambda v: "fp16" if _true(v) else "fp32"),
    "full_bf16": To("training.weights_dtype", lambda v: "bf16" if _true(v) else "fp32"),
    "no_half_vae": To("training.no_half_vae", _true),
    "seed": To("training.seed", int),
    "sdpa": To("training.attention", lambda v: "sdpa" if _true(v) else "math"),
    "xformers": To("training.attention", lambda v: "xformers" if _true(v) else "sdpa"),
    "save_precision": To("saving.precision", _choice(PRECISIONS, "save_precision")),
    "save_every_n_epochs": To("saving.every_n_epochs", int),
    "save_every_n_steps": To("saving.every_n_steps", int),
    "save_last_n_epochs": To("saving.keep_last_n", int),
    "save_state": To("saving.save_state", _true),
    "no_metadata": To("saving.private_metadata", _true),
    "output_dir": To("output.dir"),
    "output_name": To("output.name"),
    "training_comment": To("output.comment"),
    "logging_dir": To("output.log_dir"),
    "metadata_title": To("output.metadata.title"),
    "metadata_author": To("output.metadata.author"),
    "metadata_description": To("output.metadata.description"),
    "metadata_license": To("output.metadata.license"),
    "metadata_tags": To("output.metadata.tags", _tags),
    "min_snr_gamma": To("loss.min_snr_gamma", float),
    "noise_offset": To("loss.noise_offset", float),
    "adaptive_noise_scale": To("loss.adaptive_noise_scale", float),
    "multires_noise_iterations": To("loss.multires_noise_iterations", int),
    "multires_noise_discount": To("loss.multires_noise_discount", float),
    "ip_noise_gamma": To("loss.ip_noise_gamma", float),
    "zero_terminal_snr": To("loss.zero_terminal_snr", _true),
    "debiased_estimation_loss": To("loss.debiased_estimation", _true),
    "loss_type": To("loss.type", _choice({"l2": "l2", "huber": "huber"}, "loss_type")),
    "huber_c": To("loss.huber_c", float),
    "max_grad_norm": To("loss.max_grad_norm", float),
    "train_data_dir": To("data.image_root"),
    "reg_data_dir": To("data.reg_root"),
    "resolution": To("data.resolution", _resolution),
    "max_resolution": To("data.resolution", _resolution),  # kohya_ss
    "train_batch_size": To("data.batch_size", int),
    "caption_extension": To("data.caption_extension", lambda v: v if str(v).startswith(".") else f".{v}"),
    "shuffle_caption": To("data.shuffle_caption", _true),
    "keep_tokens": To("data.keep_tokens", int),
    "keep_tokens_separator": To("data.keep_tokens_separator"),
    "caption_prefix": To("data.caption_prefix"),
    "caption_suffix": To("data.caption_suffix"),
    "caption_dropout_rate": To("data.caption_dropout_rate", float),
    "caption_dropout_every_n_epochs": To("data.caption_dropout_every_n_epochs", int),
    "caption_tag_dropout_rate": To("data.caption_tag_dropout_rate", float),
    "max_token_length": To("data.max_token_length", int),
    "flip_aug": To("data.flip_aug", _true),
    "color_aug": To("data.color_aug", _true),
    "random_crop": To("data.random_crop", _true),
    "enable_bucket": To("data.enable_bucket", _true),
    "min_bucket_reso": To("data.min_bucket_reso", int),
    "max_bucket_reso": To("data.max_bucket_reso", int),
    "bucket_reso_steps": To("data.bucket_reso_steps", int),
    "bucket_no_upscale": To("data.bucket_no_upscale", _true),
    "prior_loss_weight": To("data.prior_loss_weight", float),
    "cache_latents": To("data.cache_latents", _true),
    "cache_latents_to_disk": To("data.cache_latents_to_disk", _true),
    "cache_text_encoder_outputs": To("data.cache_text_encoder_outputs", _true),
    "max_data_loader_n_workers": To("data.num_workers", int),
    "sample_every_n_steps": To("sampling.every_n_steps", int),
    "sample_every_n_epochs": To("sampling.every_n_epochs", int),
    "sample_prompts": To("sampling.prompts"),
    "sample_sampler": To("sampling.sampler", _choice(SAMPLERS, "sample_sampler")),
    # what lorakit does anyway, or has no use for: said, not mapped
    "persistent_data_loader_workers": "- lorakit's decode threads live for the whole run",
    "save_model_as": "- lorakit writes .safetensors",
    "network_module": "- read with network_args: networks.lora (LoCon with conv_dim), networks.dylora, lycoris.kohya",
    "network_args": "- read key by key (conv_dim, algo, unit, dropouts...)",
    "optimizer_args": "- read key by key into optimizer.args (betas and weight_decay into their keys)",
    "dataset_config": "- copied below as the dataset tables",
    "lowram": "- no effect in lorakit", "highvram": "- no effect in lorakit", "mem_eff_attn": "- use sdpa",
    "log_with": "- lorakit logs to log.jsonl and TensorBoard", "log_prefix": "- lorakit logs to log.jsonl",
    "wandb_api_key": "- Weights & Biases is not supported", "wandb_run_name": "- Weights & Biases is not supported",
    "LoRA_type": "- read with the network keys (Standard, LoCon, LyCORIS/…)",
}


# read together with others below, each with its own report rows
HANDLED = {"lr_warmup_steps", "lr_warmup", "network_module", "LoRA_type", "network_args", "optimizer_args"}


def _flatten(data: dict) -> dict[str, Any]:
    """kohya's config sections ([model_arguments], [training_arguments]…) are only grouping."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("network_args", "optimizer_args"):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _args(value: Any) -> dict[str, Any]:
    """kohya's `key=value` list (or kohya_ss's one space-separated string) into a dict."""
    items = value if isinstance(value, list) else str(value).split()
    out = {}
    for item in items:
        if "=" not in str(item):
            continue
        key, raw = str(item).split("=", 1)
        try:
            parsed: Any = json.loads(raw.lower() if raw.lower() in ("true", "false") else raw)
        except json.JSONDecodeError:
            parsed = raw.strip("\"'")
        out[key.strip()] = parsed
    return out


def _set(tree: dict, dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    node = tree
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


MODULES = {"networks.lora": "lora", "networks.dylora": "dylora"}
LORA_TYPES = {"standard": "lora", "locon": "locon", "kohya locon": "locon", "lycoris/locon": "locon",
              "lycoris/loha": "loha", "lycoris/lokr": "lokr", "lycoris/ia3": "ia3", "lycoris/glora": "glora",
              "lycoris/diag-oft": "diag-oft", "kohya dylora": "dylora"}
LYCORIS_ALGOS = {"lora": "locon", "locon": "locon", "loha": "loha", "lokr": "lokr", "ia3": "ia3", "glora": "glora",
                 "diag-oft": "diag-oft"}
NETWORK_ARGS = {"conv_dim": ("network.conv_dim", int), "conv_alpha": ("network.conv_alpha", float),
                "rank_dropout": ("network.rank_dropout", float), "module_dropout": ("network.module_dropout", float),
                "dropout": ("network.dropout", float), "unit": ("network.args.unit", int)}
BLOCKWISE = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
             "block_alphas", "conv_block_dims", "conv_block_alphas")


def _network(flat: dict, tree: dict, rows: list) -> None:
    args = _args(flat.get("network_args") or [])
    module = MODULES.get(str(flat.get("network_module", "networks.lora")))
    if flat.get("LoRA_type"):
        module = LORA_TYPES.get(str(flat["LoRA_type"]).lower())
    if flat.get("network_module") == "lycoris.kohya" or "algo" in args:
        module = LYCORIS_ALGOS.get(str(args.pop("algo", "lora")).lower())
    if module is None:
        rows.append(["network_module", str(flat.get("network_module") or flat.get("LoRA_type")),
                     "not mapped: lorakit trains LoRA, LoCon, DyLoRA and lycoris's LoHa, LoKr, IA3, GLoRA, Diag-OFT"])
        return
    conv = args.get("conv_dim", flat.get("conv_dim"))
    if module == "lora" and conv not in (None, "", 0, "0"):
        module = "locon"  # kohya's LoRA with conv_dim in its args is what lorakit calls LoCon
    _set(tree, "network.module", module)
    rows.append(["network_module", str(flat.get("LoRA_type") or flat.get("network_module") or "networks.lora"),
                 f'network.module = "{module}"'])
    for key, value in args.items():
        if key in NETWORK_ARGS:
            target, convert = NETWORK_ARGS[key]
            _set(tree, target, convert(value))
            rows.append([f"network_args {key}", str(value), target])
        elif key in BLOCKWISE and module in ("lora", "locon"):
            _set(tree, f"network.args.{key}", value)
            rows.append([f"network_args {key}", str(value), f"network.args.{key} (kohya's block indexing)"])
        elif key in BLOCKWISE:
            rows.append([f"network_args {key}", str(value), f"not mapped: block-wise settings are for LoRA and LoCon, "
                                                            f"not {module}"])
        elif key == "dora_wd" and module in ("lora", "locon"):
            _set(tree, "network.args.dora_wd", _true(value))
            rows.append([f"network_args {key}", str(value), "network.args.dora_wd (DoRA)"])
        elif module not in ("lora", "locon", "dylora"):
            _set(tree, f"network.args.{key}", value)
            rows.append([f"network_args {key}", str(value), f"network.args.{key} (for lycoris)"])
        else:
            rows.append([f"network_args {key}", str(value), "not mapped: no such LoRA option in lorakit"])


def _optimizer(flat: dict, tree: dict, rows: list) -> None:
    for key, value in _args(flat.get("optimizer_args") or []).items():
        if key == "betas":
            betas = [float(b) for b in (value if isinstance(value, list) else str(value).strip("()[]").split(","))]
            _set(tree, "optimizer.betas", betas)
            rows.append(["optimizer_args betas", str(value), "optimizer.betas"])
        elif key == "weight_decay":
            _set(tree, "optimizer.weight_decay", float(value))
            rows.append(["optimizer_args weight_decay", str(value), "optimizer.weight_decay"])
        else:
            _set(tree, f"optimizer.args.{key}", value)
            rows.append([f"optimizer_args {key}", str(value), f"optimizer.args.{key}"])


def _warmup(flat: dict, tree: dict, rows: list) -> None:
    steps, percent = flat.get("lr_warmup_steps"), flat.get("lr_warmup")
    if isinstance(steps, (int, float)) and steps:
        if steps < 1:  # kohya reads a fraction as a share of the steps
            _set(tree, "scheduler.warmup_ratio", float(steps))
            rows.append(["lr_warmup_steps", str(steps), "scheduler.warmup_ratio (under 1: a ratio)"])
        else:
            _set(tree, "scheduler.warmup_steps", int(steps))
            rows.append(["lr_warmup_steps", str(steps), "scheduler.warmup_steps"])
    if percent not in (None, "", 0) and not (isinstance(steps, (int, float)) and steps):
        _set(tree, "scheduler.warmup_ratio", float(percent) / 100)
        rows.append(["lr_warmup", str(percent), "scheduler.warmup_ratio (percent / 100)"])


def read_kohya(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a table of options")
    return _flatten(data)


def convert(config: Path, dataset: Path | None = None) -> tuple[dict, dict | None, list[list[str]]]:
    """(lorakit config tree, the dataset tables, report rows [kohya key, value, where it went])."""
    flat = read_kohya(config)
    tree: dict = {}
    rows: list[list[str]] = []
    for key, value in flat.items():
        shown = json.dumps(value) if not isinstance(value, str) else value
        if key in HANDLED:
            continue
        if value in ("", None, []):
            rows.append([key, shown, "empty: skipped"])
            continue
        rule = KEYS.get(key)
        if isinstance(rule, To):
            try:
                _set(tree, rule.key, rule.convert(value))
                rows.append([key, shown, rule.key])
            except (ValueError, TypeError) as exc:
                rows.append([key, shown, f"not mapped: {exc}"])
        elif isinstance(rule, str):
            rows.append([key, shown, rule[2:]])
        else:
            rows.append([key, shown, "not mapped: lorakit has no such option"])
    _warmup(flat, tree, rows)
    training = tree.get("training", {})
    if "max_epochs" in training and "max_steps" in training:
        training.pop("max_steps")  # kohya: max_train_epochs wins
        rows.append(["max_train_steps", str(flat.get("max_train_steps")), "dropped: max_train_epochs wins, as in kohya"])
    _network(flat, tree, rows)
    _optimizer(flat, tree, rows)
    source = dataset or (Path(flat["dataset_config"]) if flat.get("dataset_config") else None)
    tables = _dataset(source) if source else None
    return tree, tables, rows


def _dataset(path: Path) -> dict:
    """kohya's dataset TOML, its relative image_dir made absolute (relative to that file)."""
    if not path.is_file():
        raise UserError(f"{path}: no such dataset config")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    for table in data.get("datasets", []):
        for subset in table.get("subsets", []):
            if subset.get("image_dir") and not Path(subset["image_dir"]).is_absolute():
                subset["image_dir"] = str((path.parent / subset["image_dir"]).resolve())
    return data


def render(tree: dict, tables: dict | None, source: Path) -> str:
    """The lorakit config as TOML: its sections in the config's order, then the dataset tables."""
    from lorakit.train.config import Config
    from lorakit.train.presets import _toml_value

    lines = [f"# imported from {source.name} by `train import kohya`; `train plan` checks it", "", "version = 1"]
    order = [f.name for f in Config.__dataclass_fields__.values()]

    def table(name: str, values: dict) -> None:
        lines.extend(["", f"[{name}]"])
        nested = {k: v for k, v in values.items() if isinstance(v, dict) and k not in ("args",)}
        for key, value in values.items():
            if key not in nested:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, value in nested.items():
            table(f"{name}.{key}", value)

    for section in sorted(tree, key=order.index):
        table(section, tree[section])
    if tables:
        if tables.get("general"):
            table("general", tables["general"])
        for dataset in tables.get("datasets", []):
            lines.extend(["", "[[datasets]]"])
            lines += [f"{k} = {_toml_value(v)}" for k, v in dataset.items() if k != "subsets"]
            for subset in dataset.get("subsets", []):
                lines.extend(["", "  [[datasets.subsets]]"])
                lines += [f"  {k} = {_toml_value(v)}" for k, v in subset.items()]
    return "\n".join(lines) + "\n"


def import_kohya(config: Path, out: Path, dataset: Path | None = None, force: bool = False) -> Report:
    """Write the lorakit config to `out` (never over a file unless `force`), checked by loading it."""
    from lorakit.fsio import write_text
    from lorakit.train.config_toml import load

    if out.exists() and not force:
        raise UserError(f"{out} exists: choose another --out, or pass --force to replace it")
    tree, tables, rows = convert(config, dataset)
    text = render(tree, tables, config)
    write_text(out, text)
    try:
        load(out)
    except UserError as exc:
        out.unlink()
        raise UserError(f"the imported config does not load, so it was not kept: {exc}") from None
    report = Report("import kohya", str(config), str(out))
    report.outcomes.append(Outcome(out.name, WRITTEN))
    mapped = [r for r in rows if not r[2].startswith(("not mapped", "empty"))]
    unmapped = [r for r in rows if r[2].startswith("not mapped")]
    report.sections += [Section("mapped", ["kohya key", "value", "lorakit"], mapped),
                        Section("not mapped", ["kohya key", "value", "why"], unmapped)]
    report.data.update({"mapped": {r[0]: r[2] for r in mapped}, "not_mapped": {r[0]: r[2] for r in unmapped},
                        "datasets": len(tables.get("datasets", [])) if tables else 0})
    report.notes.append(f"{len(mapped)} keys mapped, {len(unmapped)} not; check it with `train plan {out}`")
    return report
