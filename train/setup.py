"""`setup(config) -> Run`: everything a training run holds, loaded and built once: the models (and
the family they are), the network, the embeddings, the data and its latents, the optimizer and
its schedule, the mixed-precision scaler, and, on resume, the saved state. The loop
(train/loop.py) only reads and steps what is here."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from lorakit.errors import UserError
from lorakit.train import optimizers, precision, seeds
from lorakit.train.blocks import BlockSettings
from lorakit.train.blocks import settings as block_settings
from lorakit.train.config import Config
from lorakit.train.data import Item, load_items, steps_per_epoch, subsets
from lorakit.train.distributed import Dist
from lorakit.train.distributed import setup as distributed_setup
from lorakit.train.embeddings import Embeddings, check_encoder_rates
from lorakit.train.families import FAMILIES
from lorakit.train.latents import Latents
from lorakit.train.lycoris_net import LycorisNetwork, check_args, dylora_unit
from lorakit.train.models import Models, encode_text, load_models, sdxl_clip_skip, set_attention
from lorakit.train.naming import text_encoder_targets, unet_targets
from lorakit.train.network import LoRANetwork
from lorakit.train.network_kinds import KINDS
from lorakit.train.offload import Parking
from lorakit.train.outputs import CONFIG, STATE, Record, read_state
from lorakit.train.saving import Saver
from lorakit.train.schedule import base_rate, group_lambda
from lorakit.train.subset_options import prompt_text
from lorakit.train.templates import fill, load_template
from lorakit.train.validate import validate
from lorakit.train.validation import Validation, split


@dataclass
class Run:
    config: Config
    out_dir: Path
    dist: Dist
    device: torch.device
    models: Models
    network: torch.nn.Module
    unet_targets: list
    te_targets: list
    embeddings: Embeddings | None
    templates: list[str] | None
    items: list[Item]
    held_out: list[Item]
    latents: Latents
    validation: Validation | None
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # autocast's dtype; None: float32
    steps_per_epoch: int
    total: int
    saver: Saver
    log: Callable[[str], None]
    step: int = 0  # optimizer steps done (from the saved state on resume)
    text_cache: list | None = None
    parking: Parking | None = None  # frozen models moved off the device (train/offload.py)
    val_losses: dict[int, float] = field(default_factory=dict)  # step -> validation loss

    @property
    def placeholder(self) -> str:
        return self.config.embeddings[0].placeholder if self.config.embeddings else ""

    def state(self, step: int) -> dict:
        """What `train resume` continues from: the trained weights, the optimizer's moments, the
        fp16 loss scale (without it a resumed fp16 run would restart at the initial scale) and the
        step (`_restore` is its inverse)."""
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(), "step": step,
                "embeddings": self.embeddings.state() if self.embeddings else [], "scaler": self.scaler.state_dict()}

    def trained(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]


def prompt(run: Run, item: Item, rng: random.Random, epoch: int) -> str:
    """The caption as kohya prepares it (the line or recipe template chosen for this image and
    epoch, train/caption_lines.py); in a template line with textual inversion; with the
    embeddings' placeholders turned into their tokens."""
    return prompt_text(item, run.config.training.seed, rng, epoch, run.templates, run.placeholder,
                       run.embeddings.substitute if run.embeddings else None)


def setup(config: Config, out_dir: Path | None = None, resume: bool = False, log=print,
          device: torch.device | None = None, models: Models | None = None, state: dict | None = None) -> Run:
    """Load and build a run. `resume`: from the state saved in out_dir (`state`: that state, already
    read). `device`: where it trains (default: this process's GPU, else the CPU; the placement
    check passes "meta"). `models`: already built ones instead of model.base's (bench/gpu.py builds
    random-weight ones on the GPU)."""
    out_dir = Path(out_dir or config.output.dir)
    if resume and state is None:
        state = read_state(out_dir)
    seed = config.training.seed
    validate(config, subsets(config))  # what needs no model is refused before one loads (as train plan does)
    models = models or load_models(config)
    check_encoder_rates(config.embeddings, models.family)
    # what the model is, decided once at load: every later reader of the config sees it
    config = replace(config, model=replace(config.model, v_parameterization=models.v_prediction))
    dist = distributed_setup()
    device = device or dist.device
    if not dist.main:
        log = lambda line: None  # noqa: E731  (only the first process logs)
    amp_dtype = precision.amp_dtype(config.training.mixed_precision)
    frozen = precision.frozen_dtype(config.training.mixed_precision)
    vae_dtype = precision.vae_dtype(config.training.mixed_precision, config.training.no_half_vae)
    for model, dtype in ((models.unet, frozen), *((te, frozen) for te in models.text_encoders), (models.vae, vae_dtype)):
        model.requires_grad_(False)
        if model.dtype == dtype:  # moved only: diffusers warns at every .to(dtype) of a VAE
            model.to(device)
        else:
            model.to(device, dtype)
    set_attention(models.unet, config.training.attention)
    if config.training.gradient_checkpointing:  # recompute activations in backward: less memory
        models.unet.enable_gradient_checkpointing()
        for text_encoder in models.text_encoders:
            text_encoder.gradient_checkpointing_enable()
    torch.manual_seed(seeds.derive(seed, "init"))  # the network's initial weights
    n = config.network
    blocks = block_settings(n.args, models.sdxl, n.alpha, n.conv_alpha) if KINDS[n.module].builder == "ours" else None
    network, unet_t, te_t = _network(config, models, device, log, blocks)
    embeddings = Embeddings.build(config.embeddings, models.tokenizers, models.text_encoders) \
        if config.embeddings else None
    if embeddings:
        embeddings.attach()
    templates = load_template(config.data.template) if config.data.template else None
    items, held_out = split(load_items(config), config.data.validation_split, seed)
    placeholder = config.embeddings[0].placeholder if config.embeddings else ""
    warnings = prompt_warnings(items, models.tokenizers[0], embeddings, templates, placeholder,
                               config.data.max_token_length)
    if not FAMILIES[models.family].clip_skip and config.model.clip_skip > 1:
        warnings.append(sdxl_clip_skip(config.model.clip_skip))
    for warning in warnings:
        log(json.dumps({"warning": warning}))
    latents = Latents(items, models.vae, device, config)
    validation = Validation(held_out, models.vae, device, config, seed) if held_out else None
    per_epoch = steps_per_epoch(items, config.training.gradient_accumulation_steps, dist.world)
    total = config.training.max_steps or config.training.max_epochs * per_epoch
    if embeddings:
        embeddings.resolve_stops(per_epoch)
    optimizer, schedule = make_optimizer(config, network, {t.name for t in unet_t}, embeddings, total, blocks,
                                         models.sdxl)
    out_dir.mkdir(parents=True, exist_ok=True)
    first = items[0]
    saver = Saver(config, out_dir, Record(out_dir, state["step"] if state else None), items, network, embeddings, models, Parking(device),
                  {"steps_per_epoch": per_epoch, "total": total, "started": time.time()},
                  fill(templates[0], placeholder, first.caption) if templates else first.caption)
    run = Run(config, out_dir, dist, device, models, network, unet_t, te_t, embeddings, templates, items, held_out,
              latents, validation, optimizer, schedule, precision.grad_scaler(device, amp_dtype, config.training.weights_dtype), amp_dtype, per_epoch,
              total, saver, log)
    if state is not None:
        try:
            _restore(run, state)
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:  # another network's state
            raise UserError(f"{out_dir / STATE} does not fit the run in {out_dir / CONFIG} ({str(e)[:200]}); "
                            "resume from the state and config.json saved together") from None
    run.text_cache = _text_cache(run)
    run.parking = saver.parking
    if config.data.cache_latents:  # every latent, validation's too, is cached: the VAE's work is done
        run.parking.park(models.vae)
    if run.text_cache is not None:  # and every caption's text-encoder outputs
        run.parking.park(*models.text_encoders)
    return run


def _restore(run: Run, state: dict) -> None:
    """The saved state of a stopped run: network, embeddings, optimizer, the fp16 loss scale,
    and the step (the schedule and every random draw follow from it)."""
    run.network.load_state_dict(state["network"])
    if run.embeddings:
        run.embeddings.load_state(state["embeddings"])
    run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.step = int(state["step"])
    for group, lr_factor in zip(run.optimizer.param_groups, run.schedule.lr_lambdas):
        group["lr"] = group["initial_lr"] * lr_factor(run.step)
    run.schedule.last_epoch = run.step


def embedding_rates(cfg, default: float | str) -> list[float | str]:
    """The rate of each encoder's vectors: SD1/SD2 use the first (clip_l's place)."""
    rate = default if cfg.learning_rate is None else cfg.learning_rate
    return [rate if r is None else r for r in (cfg.clip_l_learning_rate, cfg.clip_g_learning_rate)]


def make_optimizer(config: Config, network, unet_names: set[str], embeddings: Embeddings | None,
                   total: int, blocks: BlockSettings | None = None, sdxl: bool = False):
    """The optimizer with one group per learning rate (UNet, text encoder, each embedding), and
    the schedule: the configured curve, or a group's own A1111 piecewise rate."""
    o, n = config.optimizer, config.network
    groups, rates = [], []
    unet_params = [p for m in network.loras if m.lora_name in unet_names for p in m.parameters()]
    te_params = [p for m in network.loras if m.lora_name not in unet_names for p in m.parameters()]
    unet_rate = n.unet_lr or o.learning_rate
    if unet_params and n.train_unet and blocks is not None and blocks.lr_weight is not None:
        if isinstance(unet_rate, str):
            raise UserError("block learning-rate weights multiply one UNet rate; a piecewise rate "
                            f"({unet_rate!r}) has none to multiply")
        by_weight: dict[float, list] = {}
        for m in network.loras:
            if m.lora_name in unet_names:
                by_weight.setdefault(blocks.weight(m.lora_name, sdxl), []).extend(m.parameters())
        for weight, params in sorted(by_weight.items(), reverse=True):  # kohya: a group per block weight
            groups.append({"params": params})
            rates.append(base_rate(unet_rate) * weight)
    elif unet_params and n.train_unet:
        groups.append({"params": unet_params})
        rates.append(unet_rate)
    if te_params and n.train_text_encoder:
        groups.append({"params": te_params})
        rates.append(n.text_encoder_lr or o.learning_rate)
    for item in embeddings.items if embeddings else []:
        if item.config.train:
            # A group per encoder's vectors (SDXL: clip_l, clip_g), each at its own rate; no
            # weight decay: it would pull the vectors towards zero, away from the vocabulary
            for vectors, rate in zip(item.vectors, embedding_rates(item.config, o.learning_rate)):
                groups.append({"params": [vectors], "weight_decay": 0.0})
                rates.append(rate)
    if not groups:
        raise UserError("nothing to train: the network needs train_unet or train_text_encoder")
    for group, rate in zip(groups, rates):
        group["lr"] = base_rate(rate)
    optimizer = optimizers.build(groups, o)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, [group_lambda(config, total, r) for r in rates])
    return optimizer, schedule


def _network(config: Config, models: Models, device: torch.device, log=print, blocks: BlockSettings | None = None):
    """The network and its UNet and text-encoder targets: our LoRA/LoCon module, or one of
    lycoris-lora's algorithms on the same targets (LoCon's set: attention and ResNet blocks)."""
    n = config.network
    kind = KINDS[n.module]
    unet_t, te_t = [], []
    if kind.builder is not None:
        unet_t = unet_targets(models.unet, locon=kind.convolutions, sgm=models.sdxl) if n.train_unet else []
        te_t = [t for te, prefix in zip(models.text_encoders, FAMILIES[models.family].encoders)
                for t in text_encoder_targets(te, prefix)] if n.train_text_encoder else []
    conv_rank = n.conv_dim if kind.convolutions else 0
    check_args(n.module, n.args, n.dim, conv_rank, n.rank_dropout, n.dropout)
    found = _continued(n.weights) if n.weights else None
    ranks = {name: (m.rank, m.alpha) for name, m in found.items()} if found and n.dim_from_weights else None
    per_block = blocks is not None and (blocks.dims is not None or blocks.conv_dims is not None)
    if ranks and per_block:
        raise UserError("network.dim_from_weights takes every module's rank from the file; block_dims / "
                        "conv_block_dims would be ignored: use one or the other")
    if (ranks or (blocks is not None and blocks.conv_dims is not None)) and n.train_unet and not kind.convolutions:
        unet_t = unet_targets(models.unet, locon=True, sgm=models.sdxl)  # their 3x3 convolutions need targets
    if blocks is not None and ranks is None:  # a rank per block; blocks weighted 0 are not trained
        ranks = {t.name: r for t in unet_t + te_t
                 if (r := blocks.module(t.name, t.is_conv3x3, models.sdxl, n.dim, n.alpha, conv_rank, n.conv_alpha))}
    if kind.builder == "lycoris":
        network = LycorisNetwork(n.module, unet_t + te_t, n.dim, n.alpha, conv_rank, n.conv_alpha, n.dropout,
                                 n.rank_dropout, n.module_dropout, n.args)
    else:
        network = LoRANetwork(unet_t + te_t, n.dim, n.alpha, conv_rank, n.conv_alpha, n.dropout,
                              n.rank_dropout, n.module_dropout, dylora_unit(n.args) if kind.rank_blocks else None,
                              ranks, dora=bool(n.args.get("dora_wd")))
    network.to(device, precision.DTYPES[config.training.weights_dtype])
    if found:
        skipped = network.load_kohya(found, n.weights)
        if skipped:
            log(json.dumps({"warning": f"network.weights: {len(skipped)} of its modules are not trained by this "
                                       f"config (first: {skipped[0]}) and are left out"}))
    network.attach()
    return network, unet_t, te_t


def _continued(path: str) -> dict:
    """kohya's network_weights: the modules of a LoRA / LoCon file to start from."""
    from lorakit.train.lora_files import modules, read_lora

    return modules(read_lora(Path(path))[0], path)


def prompt_warnings(items: list[Item], tokenizer, embeddings: Embeddings | None, templates: list[str] | None,
                    placeholder: str, limit: int) -> list[str]:
    """A placeholder in no caption never trains; a prompt past `limit` tokens (data.max_token_length)
    is cut, and with it the tail of the caption or the embedding."""
    warnings = [f"embedding {item.name}: its placeholder {item.config.placeholder!r} is in none of the captions"
                for item in (embeddings.items if embeddings else []) if not templates or item.config.placeholder != placeholder
                if not any(item.pattern.search(line) for i in items for line in i.lines or (i.caption,))]
    longest_line = max(templates, key=len) if templates else "[filewords]"
    substitute = embeddings.substitute if embeddings else (lambda text: text)
    costs = [max(len(tokenizer(substitute(fill(longest_line, placeholder, line)), add_special_tokens=False).input_ids)
                 for line in item.lines or (item.caption,)) for item in items]  # every line that trains
    over = [(cost, item) for cost, item in zip(costs, items) if cost > limit]
    if over:
        cost, item = max(over, key=lambda pair: pair[0])
        vectors = f" with the embeddings' {sum(e.count for e in embeddings.items)} vectors" if embeddings else ""
        warnings.append(f"{len(over)} prompts are past data.max_token_length = {limit} tokens and get cut off; the "
                        f"longest, {item.image.name}, takes {cost}{vectors}: shorten the captions"
                        + (" or set data.max_token_length = 150 or 225" if limit < 225 else ""))
    return warnings


def _text_cache(run: Run) -> list | None:
    """data.cache_text_encoder_outputs: each caption encoded once (as a step would encode it,
    under the same autocast), which is only right when the encoders do not train and every step
    would give the same prompt."""
    config, d = run.config, run.config.data
    if not d.cache_text_encoder_outputs:
        return None
    varying = [name for name, on in (
        ("a text-encoder LoRA trains", bool(run.te_targets)),
        ("an embedding trains", bool(run.embeddings and run.embeddings.parameters())),
        ("data.template", bool(run.templates))) if on]
    # the caption options of every folder (a subset's own included)
    varying += list(dict.fromkeys(name for item in run.items for name in item.captions.varying()))
    if varying:
        raise UserError("data.cache_text_encoder_outputs needs fixed captions and frozen text encoders; "
                        "this run has: " + ", ".join(varying))
    cache = []
    with torch.no_grad(), precision.autocast(run.device, run.amp_dtype):
        for item in run.items:
            text, pooled = encode_text(run.models, [prompt(run, item, random.Random(0), 0)], config.model.clip_skip,
                                        d.max_token_length)
            cache.append((text[0], pooled[0] if pooled is not None else None))
    return cache
