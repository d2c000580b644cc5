"""`train plan`'s estimate of a run's peak VRAM, from parameter and activation counts (an
estimate: docs/formats.md, "Precision and memory", says what it leaves out).

The model is built from its config files on PyTorch's meta device, which allocates nothing, so
the counts are the real architecture's, for any model, without reading a weight:

- frozen models on the device: UNet and text encoders in the mixed-precision dtype, the VAE in
  its dtype; the VAE is left out when latents are cached, the text encoders when their outputs
  are (train/offload.py moves them to the CPU);
- what trains: the network's parameters (rank x (in + out) per adapted layer, LoCon's k x k
  convolutions included) x (weight + gradient + the optimizer's moments);
- activations: one forward of the UNet at the batch and resolution, on the meta device, summing
  the outputs of every layer (what backward keeps); with gradient checkpointing, the blocks'
  outputs plus the largest block's inside (recomputed one block at a time);
- a fixed 0.8 GiB for the CUDA context and the libraries' workspaces.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lorakit.train.config import Config
from lorakit.train.data import resolution_pair
from lorakit.train.families import FAMILIES, Family
from lorakit.train.network_kinds import KINDS
from lorakit.train.optimizers import OPTIMIZERS

GIB = 2 ** 30
OVERHEAD = int(0.8 * GIB)
BYTES = {"no": 4, "fp16": 2, "bf16": 2}
LEAVES = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.SiLU, torch.nn.GELU,
          torch.nn.Dropout)


def _configs(config: Config, family: str) -> dict[str, dict] | None:
    from lorakit.train.models import _component_config

    base = config.model.base
    parts = ("unet", "vae", "text_encoder", "text_encoder_2")
    if base.endswith((".safetensors", ".ckpt")):
        from lorakit.train.single_file import config_folder

        folder = Path(config.model.config) if config.model.config else \
            config_folder("sd2-v" if family == "sd2" and config.model.v_parameterization else family)
        found = {p: json.loads((folder / p / "config.json").read_text()) for p in parts
                 if (folder / p / "config.json").is_file()}
    else:
        found = {p: c for p in parts if (c := _component_config(base, f"{p}/config.json")) is not None}
    return found if "unet" in found else None


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _activations(unet, batch: int, width: int, height: int, checkpointing: bool, context: int) -> int:
    """Elements kept for backward by one UNet forward (on the meta device)."""
    outputs: dict[str, int] = {}
    hooks = []
    for name, module in unet.named_modules():
        if isinstance(module, LEAVES):
            hooks.append(module.register_forward_hook(
                lambda m, args, out, name=name: outputs.__setitem__(name, out.numel())))
    config = unet.config
    sample = torch.zeros(batch, config.in_channels, height // 8, width // 8, device="meta")
    text = torch.zeros(batch, 77, context, device="meta")
    added = None
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {"text_embeds": torch.zeros(batch, pooled, device="meta"), "time_ids": torch.zeros(batch, 6, device="meta")}
    try:
        with torch.no_grad():
            unet(sample, torch.zeros(batch, device="meta"), text, added_cond_kwargs=added)
    finally:
        for hook in hooks:
            hook.remove()
    total = sum(outputs.values())
    if not checkpointing:
        return total
    blocks: dict[str, int] = {}
    for name, n in outputs.items():  # down_blocks.1.attentions.0.… -> down_blocks.1
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0].endswith("blocks") else parts[0]
        blocks[key] = blocks.get(key, 0) + n
    boundaries = sample.numel() * 4 * len(blocks)  # roughly: each block's output, kept
    return boundaries + max(blocks.values())


def _network_params(config: Config, unet, encoders: list, family: Family) -> int:
    from lorakit.train.naming import text_encoder_targets, unet_targets

    n = config.network
    kind = KINDS[n.module]
    if kind.builder is None:
        return 0
    locon = kind.convolutions
    targets = unet_targets(unet, locon=locon, sgm=family.sgm_unet) if n.train_unet else []
    if n.train_text_encoder:
        for encoder, prefix in zip(encoders, family.encoders):
            targets += text_encoder_targets(encoder, prefix)
    total = 0
    for t in targets:
        w = t.module.weight
        if w.dim() == 4 and w.shape[2:] != (1, 1):
            total += n.conv_dim * (w.shape[1] * w.shape[2] * w.shape[3] + w.shape[0]) if locon and n.conv_dim else 0
        else:
            total += n.dim * (w.shape[1] + w.shape[0])
    return total


def estimate(config: Config, family: str | None, configs: dict[str, dict] | None = None) -> dict | None:
    """{part: bytes} and the total, or None when the model's configs cannot be read here.
    `configs`: the components' configs when the models are at hand (bench/gpu.py)."""
    if family is None or not (config.model.base or configs):
        return None
    found = configs or _configs(config, family)
    if found is None:
        return None
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(found["unet"])
        vae = AutoencoderKL.from_config(found["vae"]) if "vae" in found else None
        encoders = [kind(CLIPTextConfig.from_dict(found[p])) for p, kind in
                    (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection))
                    if p in found and (p == "text_encoder" or FAMILIES[family].two_encoders)]
    t, d = config.training, config.data
    frozen = BYTES[t.mixed_precision]
    vae_bytes = 4 if t.no_half_vae else frozen
    width, height = resolution_pair(d.resolution)
    batch = max([d.batch_size] + [ds.batch_size or d.batch_size for ds in config.datasets])
    trained = _network_params(config, unet, encoders, FAMILIES[family])
    weight = {"fp32": 4, "bf16": 2, "fp16": 2}[t.weights_dtype]
    context = unet.config.cross_attention_dim
    context = context if isinstance(context, int) else context[0]
    activations = _activations(unet, batch, width, height, t.gradient_checkpointing, context)
    parts = {
        "UNet (frozen)": _count(unet) * frozen,
        "text encoders": 0 if d.cache_text_encoder_outputs else sum(_count(e) for e in encoders) * frozen,
        "VAE": 0 if d.cache_latents else (_count(vae) if vae is not None else 0) * vae_bytes,
        "network: weights, gradients, optimizer": trained * (2 * weight + OPTIMIZERS[config.optimizer.type].state_bytes),
        f"activations (batch {batch}, {width}x{height}"
        f"{', checkpointed' if t.gradient_checkpointing else ''})": activations * frozen,
        "CUDA context and workspaces": OVERHEAD,
    }
    return {"parts": parts, "total": sum(parts.values()), "trained_parameters": trained}
