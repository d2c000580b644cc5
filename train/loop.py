"""`train run` / `train resume`: a compact LoRA / embedding trainer for SD1.x, SD2.x and SDXL.

The training step is one function (`training_step`); the loop around it picks batches, steps
the optimizer, logs, saves and keeps the state for `train resume`. Every random draw comes from a
generator seeded by (seed, step) or (seed, epoch), so a resumed run continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from lorakit.errors import UserError
from train import loss as L, optimizers
from train.config import Config, from_dict
from train.data import Item, caption_for_step, epoch_batches, load_items
from train.distributed import setup
from train.embeddings import Embeddings
from train.latents import Latents, vae_dtype
from train.models import encode_text, load_models, set_attention
from train.naming import text_encoder_targets, unet_targets
from train.lycoris_net import ALGOS, LycorisNetwork, check_args, dylora_unit
from train.network import LoRANetwork
from train.saving import Saver, save_state
from train.schedule import base_rate, group_lambda
from train.templates import fill, load_template
from train.validation import Validation, split

STATE = "state.pt"

def make_optimizer(config: Config, network, unet_names: set[str], embeddings: Embeddings | None,
                   total: int):
    """The optimizer with one group per learning rate (UNet, text encoder, each embedding), and
    the schedule: the configured curve, or a group's own A1111 piecewise rate."""
    o, n = config.optimizer, config.network
    groups, rates = [], []
    unet_params = [p for m in network.loras if m.lora_name in unet_names for p in m.parameters()]
    te_params = [p for m in network.loras if m.lora_name not in unet_names for p in m.parameters()]
    if unet_params and n.train_unet:
        groups.append({"params": unet_params})
        rates.append(n.unet_lr or o.learning_rate)
    if te_params and n.train_text_encoder:
        groups.append({"params": te_params})
        rates.append(n.text_encoder_lr or o.learning_rate)
    for item in embeddings.items if embeddings else []:
        if item.config.train:
            # no weight decay: it would pull the vectors towards zero, away from the vocabulary
            groups.append({"params": list(item.vectors), "weight_decay": 0.0})
            rates.append(item.config.learning_rate or o.learning_rate)
    if not groups:
        raise UserError("nothing to train: the network needs train_unet or train_text_encoder")
    for group, rate in zip(groups, rates):
        group["lr"] = base_rate(rate)
    optimizer = optimizers.build(groups, o)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, [group_lambda(config, total, r) for r in rates])
    return optimizer, schedule


def training_step(latents: torch.Tensor, text: torch.Tensor, weights: torch.Tensor, unet, noise_scheduler,
                  config: Config, generator: torch.Generator, added: dict | None = None,
                  timesteps: torch.Tensor | None = None) -> torch.Tensor:
    """Noise the latents at random timesteps (or the given ones: validation), predict, and weigh
    the loss of each sample."""
    loss_cfg = config.loss
    # drawn on the CPU from a seeded generator, so every device draws the same numbers
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    if loss_cfg.noise_offset:
        offset = loss_cfg.noise_offset
        if loss_cfg.adaptive_noise_scale is not None:  # kohya: more offset where a latent's mean is far from 0
            offset = (offset + loss_cfg.adaptive_noise_scale * latents.float().mean((2, 3), keepdim=True).abs()).clamp_min(0)
        noise = L.offset_noise(noise, offset, generator)
    if loss_cfg.multires_noise_iterations:
        noise = L.multires_noise(noise, loss_cfg.multires_noise_iterations, loss_cfg.multires_noise_discount, generator)
    if timesteps is None:
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(latents.device)
    model_noise = L.perturb_input(noise, loss_cfg.ip_noise_gamma, generator) if loss_cfg.ip_noise_gamma else noise
    noisy = noise_scheduler.add_noise(latents, model_noise, timesteps)
    prediction = unet(noisy, timesteps, text, added_cond_kwargs=added).sample
    v_prediction = config.model.v_parameterization
    target = noise_scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
    loss = L.per_sample(prediction, target, loss_cfg.type, loss_cfg.huber_c) * weights
    if loss_cfg.min_snr_gamma or loss_cfg.debiased_estimation:
        snr_t = L.snr(noise_scheduler.alphas_cumprod.to(timesteps.device), timesteps)
        if loss_cfg.min_snr_gamma:
            loss = loss * L.min_snr_weight(snr_t, loss_cfg.min_snr_gamma, v_prediction)
        if loss_cfg.debiased_estimation:
            loss = loss * L.debiased_weight(snr_t)
    return loss.mean()


def _network(config: Config, models, device):
    """The network and its UNet and text-encoder targets: our LoRA/LoCon module, or one of
    lycoris-lora's algorithms on the same targets (LoCon's set: attention and ResNet blocks)."""
    n = config.network
    unet_t, te_t = [], []
    if n.module != "none":
        locon = n.module != "lora"
        unet_t = unet_targets(models.unet, locon=locon, sgm=models.sdxl) if n.train_unet else []
        prefixes = ["lora_te1", "lora_te2"] if models.sdxl else ["lora_te"]
        te_t = [t for te, prefix in zip(models.text_encoders, prefixes)
                for t in text_encoder_targets(te, prefix)] if n.train_text_encoder else []
    conv_rank = n.conv_dim if n.module != "lora" else 0
    check_args(n.module, n.args, n.dim, conv_rank, n.rank_dropout)
    if n.module in ALGOS:
        network = LycorisNetwork(n.module, unet_t + te_t, n.dim, n.alpha, conv_rank, n.conv_alpha, n.dropout,
                                 n.rank_dropout, n.module_dropout, n.args)
    else:
        network = LoRANetwork(unet_t + te_t, n.dim, n.alpha, conv_rank, n.conv_alpha, n.dropout,
                              n.rank_dropout, n.module_dropout, dylora_unit(n.args) if n.module == "dylora" else None)
    network.to(device)
    network.attach()
    return network, unet_t, te_t


def prompt_warnings(items: list[Item], tokenizer, embeddings: Embeddings | None, templates: list[str] | None,
                    placeholder: str, limit: int) -> list[str]:
    """A placeholder in no caption never trains; a prompt past `limit` tokens (data.max_token_length)
    is cut, and with it the tail of the caption or the embedding."""
    warnings = [f"embedding {item.name}: its placeholder {item.config.placeholder!r} is in none of the captions"
                for item in (embeddings.items if embeddings else []) if not templates or item.config.placeholder != placeholder
                if not any(item.pattern.search(i.caption) for i in items)]
    longest_line = max(templates, key=len) if templates else "[filewords]"
    substitute = embeddings.substitute if embeddings else (lambda text: text)
    costs = [len(tokenizer(substitute(fill(longest_line, placeholder, item.caption)), add_special_tokens=False).input_ids)
             for item in items]
    over = [(cost, item) for cost, item in zip(costs, items) if cost > limit]
    if over:
        cost, item = max(over, key=lambda pair: pair[0])
        vectors = f" with the embeddings' {sum(e.count for e in embeddings.items)} vectors" if embeddings else ""
        warnings.append(f"{len(over)} prompts are past data.max_token_length = {limit} tokens and get cut off; the "
                        f"longest, {item.image.name}, takes {cost}{vectors}: shorten the captions"
                        + (" or set data.max_token_length = 150 or 225" if limit < 225 else ""))
    return warnings


def _text_cache(config: Config, items: list[Item], models, te_t: list, embeddings: Embeddings | None,
                templates, prompt) -> list | None:
    """data.cache_text_encoder_outputs: each caption encoded once, which is only right when the
    encoders do not train and every step would give the same prompt."""
    d = config.data
    if not d.cache_text_encoder_outputs:
        return None
    varying = [name for name, on in (
        ("a text-encoder LoRA trains", bool(te_t)), ("an embedding trains", bool(embeddings and embeddings.parameters())),
        ("data.shuffle_caption", d.shuffle_caption), ("data.caption_dropout_rate", d.caption_dropout_rate),
        ("data.caption_dropout_every_n_epochs", d.caption_dropout_every_n_epochs),
        ("data.caption_tag_dropout_rate", d.caption_tag_dropout_rate), ("data.template", bool(templates))) if on]
    if varying:
        raise UserError("data.cache_text_encoder_outputs needs fixed captions and frozen text encoders; "
                        "this run has: " + ", ".join(varying))
    cache = []
    with torch.no_grad():
        for item in items:
            text, pooled = encode_text(models, [prompt(item, random.Random(0), 0)], config.model.clip_skip,
                                        config.data.max_token_length)
            cache.append((text[0], pooled[0] if pooled is not None else None))
    return cache


def run(config: Config, out_dir: Path | None = None, stop_at: int | None = None, log=print,
        resume_from_state: bool = False, inspect=None, progress=None) -> dict:
    """Train until the configured total (or `stop_at`, as if interrupted: the state is kept).
    `log(json_line)` gets each logged step, validation and warning; `progress(step, total, epoch,
    images)` is called after every optimizer step (train/progress.py shows both).
    `inspect`, for tests: called with (models, network, embeddings) when the run ends."""
    if config.loss.adaptive_noise_scale is not None and not config.loss.noise_offset:
        raise UserError("loss.adaptive_noise_scale adds to loss.noise_offset, which is 0: set noise_offset too")
    if config.network.module == "none" and not any(e.train for e in config.embeddings):
        raise UserError("nothing to train: network.module = \"none\" needs at least one [[embeddings]] table "
                        "with train = true")
    out_dir = Path(out_dir or config.output.dir)
    state_path = out_dir / STATE
    state = torch.load(state_path, weights_only=True) if resume_from_state else None
    templates = load_template(config.data.template) if config.data.template else None
    torch.manual_seed(config.training.seed)
    models = load_models(config)
    dist = setup()
    device = dist.device
    if not dist.main:
        log = lambda line: None  # noqa: E731  (only the first process logs)
    for model in (*models.text_encoders, models.vae, models.unet):
        model.to(device)
        model.requires_grad_(False)
    if (dtype := vae_dtype(config, device)) != torch.float32:  # .to() on a float32 VAE: a diffusers warning
        models.vae.to(dtype=dtype)
    unet, noise_scheduler = models.unet, models.scheduler
    set_attention(unet, config.training.attention)
    if config.training.gradient_checkpointing:  # recompute activations in backward: less memory
        unet.enable_gradient_checkpointing()
        for text_encoder in models.text_encoders:
            text_encoder.gradient_checkpointing_enable()
    network, unet_t, te_t = _network(config, models, device)
    embeddings = Embeddings.build(config.embeddings, models.tokenizers, models.text_encoders) \
        if config.embeddings else None
    if embeddings:
        embeddings.attach()
    placeholder = config.embeddings[0].placeholder if config.embeddings else ""
    items, held_out = split(load_items(config), config.data.validation_split, config.training.seed)
    for warning in prompt_warnings(items, models.tokenizers[0], embeddings, templates, placeholder,
                                   config.data.max_token_length):
        log(json.dumps({"warning": warning}))
    latents = Latents(items, models.vae, device, config)
    validation = Validation(held_out, models.vae, device, config, config.training.seed) if held_out else None
    batch_size = config.data.batch_size
    accumulation = config.training.gradient_accumulation_steps
    per_step = accumulation * dist.world  # batches per optimizer step, over all processes
    steps_per_epoch = math.ceil(len(epoch_batches(items, batch_size, config.training.seed, 0)) / per_step)
    total = config.training.max_steps or config.training.max_epochs * steps_per_epoch
    if embeddings:
        embeddings.resolve_stops(steps_per_epoch)
    optimizer, schedule = make_optimizer(config, network, {t.name for t in unet_t}, embeddings, total)
    step = 0
    if state is not None:
        network.load_state_dict(state["network"])
        if embeddings:
            embeddings.load_state(state["embeddings"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        for group, lr_factor in zip(optimizer.param_groups, schedule.lr_lambdas):
            group["lr"] = group["initial_lr"] * lr_factor(step)
        schedule.last_epoch = step
    started = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    seed = config.training.seed
    # Mixed precision on a GPU (trained weights stay float32); on the CPU everything is float32.
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.training.mixed_precision) \
        if device.type == "cuda" else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def prompt(item: Item, rng: random.Random, epoch: int) -> str:
        """The caption as kohya prepares it; in a template line with textual inversion; with the
        embeddings' placeholders turned into their tokens."""
        text = caption_for_step(item.caption, config, rng, epoch)
        if templates:
            text = fill(rng.choice(templates), placeholder, text)
        return embeddings.substitute(text) if embeddings else text

    first = items[0]
    saver = Saver(config, out_dir, items, network, embeddings, models,
                  {"steps_per_epoch": steps_per_epoch, "total": total, "started": started},
                  fill(templates[0], placeholder, first.caption) if templates else first.caption)

    def batch_loss(batch: list[int], micro: int, epoch: int, text_grad: bool) -> torch.Tensor:
        """One micro-batch. Its random draws are seeded by (step, micro-batch), so a resumed
        run draws the same."""
        generator = torch.Generator().manual_seed(seed * 7919 + step * 64 + micro)
        rng = random.Random(seed * 31 + step * 64 + micro)
        torch.manual_seed(seed * 104729 + step * 64 + micro)  # the network's dropouts: the same on resume
        if text_cache:
            text = torch.stack([text_cache[i][0] for i in batch])
            pooled = torch.stack([text_cache[i][1] for i in batch]) if models.sdxl else None
        else:
            captions = [prompt(items[i], rng, epoch) for i in batch]
            with torch.set_grad_enabled(text_grad):
                text, pooled = encode_text(models, captions, config.model.clip_skip, config.data.max_token_length)
        batch_latents, sizes = latents.batch(batch, random.Random(seed * 53 + step * 64 + micro))
        added = {"text_embeds": pooled, "time_ids": sizes} if models.sdxl else None
        weights = torch.tensor([config.data.prior_loss_weight if items[i].is_reg else 1.0 for i in batch],
                               device=device)
        return training_step(batch_latents, text, weights, unet, noise_scheduler, config, generator, added)

    def validate(step: int, epoch: int) -> None:
        """The loss on the held-out images at fixed draws (train/validation.py), logged."""
        def encode(batch: list[Item]):
            texts = [fill(templates[0], placeholder, i.caption) if templates else i.caption for i in batch]
            texts = [f"{config.data.caption_prefix}{t}{config.data.caption_suffix}" for t in texts]
            return encode_text(models, [embeddings.substitute(t) if embeddings else t for t in texts],
                               config.model.clip_skip, config.data.max_token_length)

        def step_loss(batch_latents, text, pooled, sizes, generator, timesteps):
            added = {"text_embeds": pooled, "time_ids": sizes} if models.sdxl else None
            return training_step(batch_latents, text, torch.ones(len(timesteps), device=device), unet,
                                 noise_scheduler, config, generator, added, timesteps)

        if step in val_losses:
            return  # a step and an epoch trigger at the same step: once
        network.eval()
        try:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                value = validation.loss(encode, step_loss)
        finally:
            network.train()
        val_losses[step] = value
        log(json.dumps({"step": step, "epoch": epoch, "val_loss": value}))

    val_losses: dict[int, float] = {}  # step -> validation loss
    text_cache = _text_cache(config, items, models, te_t, embeddings, templates, prompt)
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    sampling = config.sampling
    images = 0  # trained since this process started, by all processes (for img/s)
    while step < total:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        batches = epoch_batches(items, batch_size, seed, epoch)
        groups = [batches[k:k + per_step] for k in range(0, len(batches), per_step)]
        for group in groups[done_in_epoch:]:
            embeddings_train = embeddings.set_step(step) if embeddings else False
            loss = None
            for micro, batch in dist.share(group, accumulation):  # micro: the batch's index in the step
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = batch_loss(batch, micro, epoch, bool(te_t) or embeddings_train)
                if loss.requires_grad:  # false once every embedding has passed its pivot and no network trains
                    scaler.scale(loss / len(group)).backward()  # gradients of the group's mean loss
            dist.sum_gradients([p for p in trained if p.requires_grad])
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in trained if p.grad is not None], config.loss.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            if embeddings:
                embeddings.after_step(step)
            if config.network.scale_weight_norms:
                scaled = network.scale_weight_norms(config.network.scale_weight_norms)
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            images += sum(len(batch) for batch in group)
            if progress:
                progress(step, total, epoch + 1, images)
            if step % config.training.log_every_n_steps == 0 or step == total:
                value = dist.mean(loss)  # read at the log interval only: each read stalls a GPU
                if not math.isfinite(value):
                    raise UserError(f"loss became {value} at step {step}: stopping; the last saved file is kept")
                losses.append(value)
                rates = schedule.get_last_lr()
                line = {"step": step, "epoch": epoch + 1, "loss": value, "lr": rates[0],
                        "time": round(time.time() - started, 3)}
                if len(rates) > 1:  # UNet, text encoder, embeddings: each group's own rate
                    line["lrs"] = rates
                if config.network.scale_weight_norms:
                    line["keys_scaled"] = scaled
                log(json.dumps(line))
            every = config.saving.every_n_steps
            if every and step % every == 0 and step < total and dist.main:
                saver.checkpoint(step, f"step{step:08d}")
            if sampling.every_n_steps and step % sampling.every_n_steps == 0 and dist.main:
                saver.sample(step)
            if validation and dist.main and config.training.validate_every_n_steps \
                    and step % config.training.validate_every_n_steps == 0:
                validate(step, epoch + 1)
            if step >= total or (stop_at is not None and step >= stop_at):
                break
        epochs_done, rest = divmod(step, steps_per_epoch)
        if rest == 0 and config.saving.every_n_epochs and step < total and dist.main \
                and epochs_done % config.saving.every_n_epochs == 0:
            saver.checkpoint(step, f"{epochs_done:06d}")
        if rest == 0 and sampling.every_n_epochs and epochs_done % sampling.every_n_epochs == 0 and dist.main:
            saver.sample(step)
        every = config.training.validate_every_n_epochs
        if validation and dist.main and rest == 0 and every and epochs_done % every == 0:
            validate(step, epochs_done)
        if stop_at is not None and step >= stop_at:
            break
    if dist.main and (config.saving.save_state or (stop_at is not None and step < total)):
        save_state(network, optimizer, embeddings, step, config, state_path)
    if dist.main and step >= total:
        saver.checkpoint(step)
    dist.close()
    if inspect:
        inspect(models, network, embeddings)
    return {"step": step, "total": total, "losses": losses, "steps_per_epoch": steps_per_epoch,
            "saved": saver.saved, "val_losses": list(val_losses.values()), "held_out": [str(i.image) for i in held_out]}


def saved_config(out_dir: Path) -> Config:
    """The config of a run that kept its state (written beside state.pt)."""
    config_path = out_dir / "config.json"
    if not (out_dir / STATE).is_file() or not config_path.is_file():
        raise UserError(f"{out_dir} holds no saved state: train with saving.save_state = true first")
    return from_dict(Config, json.loads(config_path.read_text()))

