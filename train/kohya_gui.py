"""What kohya's settings mean when they are off or belong elsewhere, for `train import kohya`.

kohya_ss's JSON holds every field of its GUI, most at their defaults; the GUI passes to sd-scripts
no 0, false or empty value (its `config_toml_data` filter), and a model family's fields only when
that family's box is ticked. So a 0 there is "off", not a value to refuse, and a Flux.1 field in
an SDXL save is a leftover. A config for a model lorakit does not train (Flux.1, SD3, ...) is
refused whole: converted, it would train an SD LoRA on the wrong model's settings."""

from __future__ import annotations

import re
from typing import Any

from lorakit.train.kohya_keys import truthy

# kohya_ss's model boxes and LoRA types, sd-scripts' network modules, and the keys only that
# family's scripts read (a file from sd-scripts: its `--ae`, `--t5xxl`...)
FAMILIES = {
    "Flux.1": {"box": "flux1_checkbox", "types": ("Flux1", "Flux1 OFT"),
               "modules": ("networks.lora_flux", "networks.oft_flux"),
               "keys": ("ae", "t5xxl", "guidance_scale", "t5xxl_max_token_length", "apply_t5_attn_mask",
                        "model_type", "split_mode"),
               "name": r"(?<![a-z])flux"},
    "SD3": {"box": "sd3_checkbox", "types": (), "modules": ("networks.lora_sd3",), "keys": ("clip_g",),
            "name": r"(?<![a-z0-9])sd3|stable-diffusion-3"},
    "Lumina": {"box": "lumina_checkbox", "types": ("Lumina",), "modules": ("networks.lora_lumina",),
               "keys": ("gemma2",), "name": r"lumina"},
    "Anima": {"box": "anima_checkbox", "types": ("Anima",), "modules": ("networks.lora_anima",),
              "keys": ("qwen3",), "name": None},  # "anima" is in SD names too (animagine-xl)
    "HunyuanImage-2.1": {"box": "hunyuan_image_checkbox", "types": ("HunyuanImage-2.1",),
                         "modules": ("networks.lora_hunyuan_image",), "keys": ("byt5",), "name": r"hunyuan"},
}
# fields of kohya_ss's save for those families: passed only with their box ticked
FAMILY_PREFIXES = ("flux1_", "flux_", "sd3_", "hunyuan_", "anima_", "lumina_")
FAMILY_FIELDS = {
    "ae", "clip_l", "clip_g", "t5xxl", "t5xxl_lr", "discrete_flow_shift", "model_prediction_type",
    "timestep_sampling", "split_mode", "train_blocks", "t5xxl_max_token_length", "enable_all_linear",
    "guidance_scale", "mem_eff_save", "apply_t5_attn_mask", "split_qkv", "train_t5xxl", "cpu_offload_checkpointing",
    "blocks_to_swap", "single_blocks_to_swap", "double_blocks_to_swap", "img_attn_dim", "img_mlp_dim", "img_mod_dim",
    "single_dim", "txt_attn_dim", "txt_mlp_dim", "txt_mod_dim", "single_mod_dim", "in_dims",
    "train_double_block_indices", "train_single_block_indices", "clip_g_dropout_rate", "logit_mean", "logit_std",
    "mode_scale", "pos_emb_random_crop_rate", "save_clip", "save_t5xxl", "t5xxl_device", "t5xxl_dtype",
    "weighting_scheme", "model_type", "fp8_base_unet", "show_timesteps", "show_timesteps_resolution",
}
# the DreamBooth and fine-tuning tabs' fields, saved by the LoRA tab too and not passed by it
OTHER_TABS = {"learning_rate_te", "learning_rate_te1", "learning_rate_te2"}
# 0 (or false) is kohya's "off" and lorakit's unset means the same; set, some would be refused
# (min_snr_gamma = 0) or mean something else (unet_lr = 0: no UNet training, where kohya falls
# back to learning_rate), and the paired flags (v2/sdxl, full_fp16/full_bf16, sdpa/xformers)
# would undo one another
OFF_AT_ZERO = {
    "noise_offset", "adaptive_noise_scale", "min_snr_gamma", "ip_noise_gamma", "multires_noise_iterations",
    "scale_weight_norms", "unet_lr", "text_encoder_lr", "max_train_steps", "max_train_epochs", "epoch", "clip_skip",
    "network_dropout", "rank_dropout", "module_dropout", "conv_dim", "lr_scheduler_num_cycles", "huber_c",
    "save_every_n_steps", "sample_every_n_steps", "sample_every_n_epochs", "save_last_n_epochs", "dim_from_weights",
    "network_train_unet_only", "network_train_text_encoder_only", "full_fp16", "full_bf16", "sdpa", "xformers",
    "v2", "sdxl", "sdxl_no_half_vae", "sdxl_cache_text_encoder_outputs", "lr_warmup_steps", "lr_warmup",
}
# sd-scripts' defaults where kohya_ss's save holds a 0 it does not pass (so the default applies)
SD_SCRIPTS_DEFAULTS = {"max_grad_norm": 1.0, "multires_noise_discount": 0.3, "prior_loss_weight": 1.0,
                       "lr_scheduler_power": 1.0, "min_bucket_reso": 256, "max_bucket_reso": 1024,
                       "bucket_reso_steps": 64, "train_batch_size": 1, "gradient_accumulation_steps": 1}
# options lorakit lacks, at sd-scripts' defaults: nothing to carry over
KOHYA_DEFAULTS: dict[str, Any] = {
    "huber_scale": 1, "huber_schedule": "snr", "max_timestep": 1000, "min_timestep": 0, "dynamo_backend": "no",
    "dynamo_mode": "default", "num_processes": 1, "num_machines": 1, "lr_scheduler_type": "",
}
NOISE = {"Original": ("multires_noise_iterations", "multires_noise_discount"),
         "Multires": ("noise_offset", "adaptive_noise_scale", "noise_offset_random_strength")}


def _named(value: Any, pattern: str) -> bool:
    """Whether any part of a model's path names the family (/models/FLUX.1-dev/transformer/…)."""
    text = str(value or "").strip().lower()
    return any(part and re.search(pattern, part) for part in re.split(r"[\\/]", text))


def family(flat: dict, gui: bool) -> tuple[str, str] | None:
    """(family, what says so) for a config of a model lorakit does not train, else None."""
    for name, f in FAMILIES.items():
        if truthy(flat.get(f["box"], False)):
            return name, f"{f['box']} = true"
        if str(flat.get("LoRA_type", "")).lower() in {t.lower() for t in f["types"]}:
            return name, f"LoRA_type = {flat['LoRA_type']!r}"
        if flat.get("network_module") in f["modules"]:
            return name, f"network_module = {flat['network_module']!r}"
    if truthy(flat.get("sdxl", False)) or truthy(flat.get("v2", False)):
        return None  # an SD model that says so: "flux" in its name is a style (juggernautXL-flux-look)
    for name, f in FAMILIES.items():
        for key in ("pretrained_model_name_or_path", "model_list"):
            if f["name"] and _named(flat.get(key), f["name"]):
                return name, f"{key} = {flat[key]!r}"
    if gui:  # kohya_ss saves every family's fields: only its boxes say which one trains
        return None
    if flat.get("gemma2"):
        return "Lumina", "gemma2 (Lumina's text encoder)"
    if flat.get("clip_g"):
        return "SD3", "clip_g (SD3's text encoder)"
    for name, f in FAMILIES.items():
        for key in f["keys"]:
            if flat.get(key) not in (None, "", False):
                return name, f"{key} (read only by sd-scripts' {name} training)"
    return None


def zero(value: Any) -> bool:
    if isinstance(value, str):
        try:  # a value from additional_parameters' command line is a string
            return float(value) == 0
        except ValueError:
            return value.strip().lower() in ("", "false", "none")
    return value is None or value == [] or (isinstance(value, (bool, int, float)) and not value)


def off(key: str, value: Any, gui: bool) -> str | None:
    """Why a value is off (so nothing is set), or None when it is a setting to map."""
    if value in ("", None, []):
        return "off: empty"
    if gui and (key.startswith(FAMILY_PREFIXES) or key in FAMILY_FIELDS):
        return "off: a Flux.1 / SD3 / other model's field: kohya_ss passes it only with that model's box ticked"
    if gui and key in OTHER_TABS:
        return "off: a field of kohya_ss's DreamBooth tab; its LoRA tab passes text_encoder_lr"
    if key == "xformers" and str(value).lower() in ("none", "false"):
        return "off: kohya's plain attention; lorakit uses sdpa (the same result, less memory)"
    if key in KOHYA_DEFAULTS and str(value).lower() == str(KOHYA_DEFAULTS[key]).lower():
        return "off: sd-scripts' default"
    if not zero(value):
        return None
    from lorakit.train.kohya_keys import KEYS, To

    shown = "false" if value is False else "0" if isinstance(value, (int, float)) else repr(value)
    if gui and key in SD_SCRIPTS_DEFAULTS and lorakit_default(KEYS[key].key) == SD_SCRIPTS_DEFAULTS[key]:
        return f"off: kohya_ss passes no 0, so sd-scripts' default {SD_SCRIPTS_DEFAULTS[key]:g} applies, as lorakit's"
    if gui and key == "seed":
        return "off: kohya_ss passes no 0 (sd-scripts then draws a seed); lorakit's seed 42 applies"
    if key in OFF_AT_ZERO or not isinstance(KEYS.get(key), To):
        return f"off: {shown} is kohya's off"
    return None


def lorakit_default(dotted: str) -> Any:
    from lorakit.train.config import Config

    node: Any = Config()
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def dropped_by_noise_type(key: str, flat: dict) -> str | None:
    """kohya_ss's noise_offset_type picks one kind of noise; the other kind's fields are not passed."""
    kind = str(flat.get("noise_offset_type", ""))
    for chosen, others in NOISE.items():
        if kind == chosen and key in others:
            wanted = "Multires" if chosen == "Original" else "Original"
            return f"dropped: noise_offset_type is {chosen}; kohya_ss passes {key} only with {wanted}"
    return None


def zero_rate(key: str, flat: dict) -> tuple[str, bool, str] | None:
    """kohya_ss trains the UNet only when the text encoder's rate is 0 and the UNet's is not (and
    the other way round): such a 0 is that choice, not a rate."""
    try:
        te, unet = float(flat.get("text_encoder_lr") or 0), float(flat.get("unet_lr") or 0)
    except (TypeError, ValueError):
        return None
    if key == "text_encoder_lr" and te == 0 and unet:
        return "network.train_text_encoder", False, "kohya_ss trains the UNet only when the text encoder's rate is 0"
    if key == "unet_lr" and unet == 0 and te:
        return "network.train_unet", False, "kohya_ss trains the text encoder only when the UNet's rate is 0"
    return None
