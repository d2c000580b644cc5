"""kohya's training options and where each goes in a lorakit config (train/kohya_import.py
reads them): a `To` names the lorakit key and how the value converts; a string starting with
"- " says why a key has no place of its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


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


def truthy(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes")


def falsy(value: Any) -> bool:
    return not truthy(value)


def _rate(value: Any) -> float:
    """A learning rate; sd-scripts' list of one per text encoder only when they agree."""
    if isinstance(value, list):
        if len(set(map(float, value))) != 1:
            raise ValueError(f"a rate per text encoder ({value}) is not supported: lorakit trains them at one rate")
        value = value[0]
    return float(value)


def _attention(value: Any) -> str:
    """kohya_ss's menu ("xformers", "sdpa", "none") or sd-scripts' --xformers flag."""
    if str(value).lower() == "sdpa":
        return "sdpa"
    if value is True or str(value).lower() in ("xformers", "true"):
        return "xformers"
    raise ValueError(f"xformers {value!r}: lorakit's attention is sdpa, xformers or math")


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
    "v2": To("model.family", lambda v: "sd2" if truthy(v) else "auto"),
    "sdxl": To("model.family", lambda v: "sdxl" if truthy(v) else "auto"),  # kohya_ss
    "v_parameterization": To("model.v_parameterization", truthy),
    "clip_skip": To("model.clip_skip", int),
    "network_dim": To("network.dim", int),
    "network_alpha": To("network.alpha", float),
    "network_dropout": To("network.dropout", float),
    "unet_lr": To("network.unet_lr", float),
    "text_encoder_lr": To("network.text_encoder_lr", _rate),
    "network_train_unet_only": To("network.train_text_encoder", falsy),
    "network_train_text_encoder_only": To("network.train_unet", falsy),
    "network_weights": To("network.weights"),
    "lora_network_weights": To("network.weights"),  # kohya_ss's older name for it
    "dim_from_weights": To("network.dim_from_weights", truthy),
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
    "gradient_checkpointing": To("training.gradient_checkpointing", truthy),
    "gradient_accumulation_steps": To("training.gradient_accumulation_steps", int),
    "mixed_precision": To("training.mixed_precision", _choice({"no": "no", "fp16": "fp16", "bf16": "bf16"},
                                                              "mixed_precision")),
    "full_fp16": To("training.weights_dtype", lambda v: "fp16" if truthy(v) else "fp32"),
    "full_bf16": To("training.weights_dtype", lambda v: "bf16" if truthy(v) else "fp32"),
    "no_half_vae": To("training.no_half_vae", truthy),
    "seed": To("training.seed", int),
    "sdpa": To("training.attention", lambda v: "sdpa" if truthy(v) else "math"),
    "xformers": To("training.attention", _attention),
    "sdxl_no_half_vae": To("training.no_half_vae", truthy),  # kohya_ss
    "save_precision": To("saving.precision", _choice(PRECISIONS, "save_precision")),
    "save_every_n_epochs": To("saving.every_n_epochs", int),
    "save_every_n_steps": To("saving.every_n_steps", int),
    "save_last_n_epochs": To("saving.keep_last_n", int),
    "save_state": To("saving.save_state", truthy),
    "no_metadata": To("saving.private_metadata", truthy),
    "output_dir": To("output.dir"),
    "output_name": To("output.name"),
    "training_comment": To("output.comment"),
    # lorakit's output.log_dir is A1111's log directory: it also draws samples at every save
    "logging_dir": "- dropped: lorakit writes its TensorBoard log into output.dir (tensorboard/); its "
                   "output.log_dir would also draw samples at every save, which kohya's logging_dir does not",
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
    "zero_terminal_snr": To("loss.zero_terminal_snr", truthy),
    "debiased_estimation_loss": To("loss.debiased_estimation", truthy),
    "loss_type": To("loss.type", _choice({"l2": "l2", "huber": "huber"}, "loss_type")),
    "huber_c": To("loss.huber_c", float),
    "max_grad_norm": To("loss.max_grad_norm", float),
    "train_data_dir": To("data.image_root"),
    "reg_data_dir": To("data.reg_root"),
    "resolution": To("data.resolution", _resolution),
    "max_resolution": To("data.resolution", _resolution),  # kohya_ss
    "train_batch_size": To("data.batch_size", int),
    "caption_extension": To("data.caption_extension", lambda v: v if str(v).startswith(".") else f".{v}"),
    "shuffle_caption": To("data.shuffle_caption", truthy),
    "keep_tokens": To("data.keep_tokens", int),
    "keep_tokens_separator": To("data.keep_tokens_separator"),
    "caption_prefix": To("data.caption_prefix"),
    "caption_suffix": To("data.caption_suffix"),
    "caption_dropout_rate": To("data.caption_dropout_rate", float),
    "caption_dropout_every_n_epochs": To("data.caption_dropout_every_n_epochs", int),
    "caption_tag_dropout_rate": To("data.caption_tag_dropout_rate", float),
    "max_token_length": To("data.max_token_length", int),
    "flip_aug": To("data.flip_aug", truthy),
    "color_aug": To("data.color_aug", truthy),
    "random_crop": To("data.random_crop", truthy),
    "enable_bucket": To("data.enable_bucket", truthy),
    "min_bucket_reso": To("data.min_bucket_reso", int),
    "max_bucket_reso": To("data.max_bucket_reso", int),
    "bucket_reso_steps": To("data.bucket_reso_steps", int),
    "bucket_no_upscale": To("data.bucket_no_upscale", truthy),
    "prior_loss_weight": To("data.prior_loss_weight", float),
    "cache_latents": To("data.cache_latents", truthy),
    "cache_latents_to_disk": To("data.cache_latents_to_disk", truthy),
    "cache_text_encoder_outputs": To("data.cache_text_encoder_outputs", truthy),
    "sdxl_cache_text_encoder_outputs": To("data.cache_text_encoder_outputs", truthy),  # kohya_ss
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
    "num_cpu_threads_per_process": "- accelerate launch's CPU threads: not a training option",
    "noise_offset_type": "- decides which noise settings apply: Original, noise_offset; Multires, multires_noise_*",
    "model_list": "- kohya_ss's model menu: pretrained_model_name_or_path is the model",
    "lr_scheduler_type": "- not mapped: lorakit has no scheduler by class name; scheduler.type is lr_scheduler's",
    "lr_scheduler_args": "- not mapped: lorakit's schedulers take no other arguments",
    # sd-scripts reads these in network_args only; kohya_ss's own fields are read with LoRA_type
    **{key: "- not mapped: sd-scripts reads it only in network_args" for key in
       ("conv_dim", "conv_alpha", "rank_dropout", "module_dropout")},
}


