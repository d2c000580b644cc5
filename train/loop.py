"""`train run` / `train resume`: a compact LoRA trainer for SD1.x and SD2.x diffusers models.

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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lorakit.errors import UserError
from lorakit.fsio import atomic_path, write_text
from train import loss as L, optimizers
from train.config import Config, from_dict
from train.data import Item, caption_for_step, epoch_batches, load_items, pixels
from train.metadata import metadata
from train.naming import text_encoder_targets, unet_targets
from train.network import LoRANetwork, save

STATE = "state.pt"

# Config keys `train run` does not implement yet: a run refuses to start when one differs from
# its default, rather than train for hours without a setting the user asked for.
NOT_YET = ("network.rank_dropout", "network.module_dropout", "network.scale_weight_norms",
           "data.flip_aug", "data.color_aug", "data.random_crop", "data.cache_latents",
           "data.cache_latents_to_disk",
           "data.cache_text_encoder_outputs", "data.max_token_length", "data.validation_split",
           "loss.adaptive_noise_scale",
           "sampling.every_n_epochs", "sampling.every_n_steps", "sampling.prompts")


def not_yet_supported(config: Config) -> list[str]:
    defaults = Config()
    found = []
    for dotted in NOT_YET:
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value != getattr(getattr(defaults, section), key):
            found.append(f"{dotted} = {value!r}")
    return found


@dataclass
class Models:
    tokenizers: list
    text_encoders: list  # SDXL: [CLIP ViT-L, OpenCLIP bigG with projection]
    vae: object
    unet: object
    scheduler: object

    @property
    def sdxl(self) -> bool:
        return len(self.text_encoders) == 2


def load_models(config: Config) -> Models:
    """A diffusers folder (or hub id) with unet, vae, text_encoder(_2), tokenizer(_2) subfolders."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    base = config.model.base
    if not base:
        raise UserError("model.base is empty: set it to a diffusers folder or a hub repo id")
    if base.endswith((".safetensors", ".ckpt")):
        raise UserError(f"{base}: single-file checkpoints are not supported yet; convert it to a diffusers "
                        "folder (diffusers' convert_original_stable_diffusion_to_diffusers.py)")
    try:
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        tokenizers = [CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", model_max_length=77)]
        text_encoders = [CLIPTextModel.from_pretrained(base, subfolder="text_encoder")]
        if unet.config.get("addition_embed_type") == "text_time":  # SDXL
            tokenizers.append(CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2", model_max_length=77))
            text_encoders.append(CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2"))
        vae = AutoencoderKL.from_pretrained(config.model.vae or base, subfolder=None if config.model.vae else "vae")
    except OSError as exc:
        raise UserError(f"cannot load the model {base}: {str(exc).splitlines()[0]}") from None
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False,
                              # Lin et al. 2023 (arXiv 2305.08891): the last step is pure noise
                              rescale_betas_zero_snr=config.loss.zero_terminal_snr,
                              prediction_type="v_prediction" if config.model.v_parameterization else "epsilon")
    return Models(tokenizers, text_encoders, vae, unet, scheduler)


def lr_lambda(config: Config, total: int):
    """The schedule as a factor of the base learning rate at each step."""
    s = config.scheduler
    warmup = s.warmup_steps if s.warmup_steps is not None else int(s.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        if s.type == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if s.type == "cosine_with_restarts":
            return 0.5 * (1 + math.cos(math.pi * ((progress * s.cycles) % 1.0)))
        if s.type == "polynomial":
            return (1 - progress) ** s.power
        if s.type == "linear":
            return 1 - progress
        return 1.0
    return factor


def make_optimizer(config: Config, network: LoRANetwork, unet_names: set[str]) -> torch.optim.Optimizer:
    o, n = config.optimizer, config.network
    groups = []
    unet_params = [p for m in network.loras if m.lora_name in unet_names for p in m.parameters()]
    te_params = [p for m in network.loras if m.lora_name not in unet_names for p in m.parameters()]
    if unet_params and n.train_unet:
        groups.append({"params": unet_params, "lr": n.unet_lr or o.learning_rate})
    if te_params and n.train_text_encoder:
        groups.append({"params": te_params, "lr": n.text_encoder_lr or o.learning_rate})
    return optimizers.build(groups, o)


def _ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _final_norm(text_encoder):
    return text_encoder.text_model.final_layer_norm if hasattr(text_encoder, "text_model") \
        else text_encoder.final_layer_norm


def encode_text(models: Models, captions: list[str], clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states for cross-attention, pooled embedding or None). SD1/2: the last layer, or
    an earlier one through the final layer norm with clip_skip. SDXL ignores clip_skip: both
    encoders' penultimate layers, concatenated, and the second encoder's pooled projection."""
    if models.sdxl:
        first = models.text_encoders[0](_ids(models.tokenizers[0], captions), output_hidden_states=True)
        second = models.text_encoders[1](_ids(models.tokenizers[1], captions), output_hidden_states=True)
        return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds
    text_encoder = models.text_encoders[0]
    out = text_encoder(_ids(models.tokenizers[0], captions), output_hidden_states=clip_skip > 1)
    if clip_skip > 1:
        return _final_norm(text_encoder)(out.hidden_states[-clip_skip]), None
    return out[0], None


def training_step(latents: torch.Tensor, text: torch.Tensor, weights: torch.Tensor, unet, noise_scheduler,
                  config: Config, generator: torch.Generator, added: dict | None = None) -> torch.Tensor:
    """Noise the latents at random timesteps, predict, and weigh the loss of each sample."""
    loss_cfg = config.loss
    # drawn on the CPU from a seeded generator, so every device draws the same numbers
    noise = torch.randn(latents.shape, generator=generator)
    if loss_cfg.noise_offset:
        noise = L.offset_noise(noise, loss_cfg.noise_offset, generator)
    if loss_cfg.multires_noise_iterations:
        noise = L.multires_noise(noise, loss_cfg.multires_noise_iterations, loss_cfg.multires_noise_discount, generator)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    noise, timesteps = noise.to(latents.device), timesteps.to(latents.device)
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


def _cache_latents(items: list[Item], vae, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each image encoded once (the distribution's mean, so the cache is deterministic), with
    SDXL's size conditioning: original size, crop corner, target size, as (h, w) pairs."""
    scale = vae.config.scaling_factor
    latents, sizes = [], []
    with torch.no_grad():
        for item in items:
            image, original, crop = pixels(item)
            latents.append(vae.encode(image[None].to(device)).latent_dist.mean[0] * scale)
            sizes.append(torch.tensor([*original, *crop, item.bucket[1], item.bucket[0]],
                                      dtype=torch.float32, device=device))
    return latents, sizes


def run(config: Config, out_dir: Path | None = None, stop_at: int | None = None, log=print,
        resume_from_state: bool = False) -> dict:
    """Train until the configured total (or `stop_at`, as if interrupted: the state is kept)."""
    unsupported = not_yet_supported(config)
    if unsupported:
        raise UserError("train run does not support these settings yet; set them back to their "
                        "defaults or remove them: " + ", ".join(unsupported))
    out_dir = Path(out_dir or config.output.dir)
    state_path = out_dir / STATE
    state = torch.load(state_path, weights_only=True) if resume_from_state else None
    torch.manual_seed(config.training.seed)
    models = load_models(config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for model in (*models.text_encoders, models.vae, models.unet):
        model.to(device)
    unet, noise_scheduler = models.unet, models.scheduler
    for model in (*models.text_encoders, models.vae, unet):
        model.requires_grad_(False)
    if config.training.gradient_checkpointing:  # recompute activations in backward: less memory
        unet.enable_gradient_checkpointing()
        for text_encoder in models.text_encoders:
            text_encoder.gradient_checkpointing_enable()
    n = config.network
    unet_t = unet_targets(unet, locon=n.module == "locon", sgm=models.sdxl) if n.train_unet else []
    prefixes = ["lora_te1", "lora_te2"] if models.sdxl else ["lora_te"]
    te_t = [t for te, prefix in zip(models.text_encoders, prefixes)
            for t in text_encoder_targets(te, prefix)] if n.train_text_encoder else []
    if n.module not in ("lora", "locon"):
        raise UserError(f"network.module = {n.module!r} is not supported yet by train run; use lora or locon")
    network = LoRANetwork(unet_t + te_t, n.dim, n.alpha, n.conv_dim if n.module == "locon" else 0,
                          n.conv_alpha, n.dropout)
    network.to(device)
    network.attach()
    network.saved = []  # the files this run writes, for the report
    items = load_items(config)
    latents, sizes = _cache_latents(items, models.vae, device)
    batch_size = config.data.batch_size
    accumulation = config.training.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(epoch_batches(items, batch_size, config.training.seed, 0)) / accumulation)
    total = config.training.max_steps or config.training.max_epochs * steps_per_epoch
    optimizer = make_optimizer(config, network, {t.name for t in unet_t})
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total))
    step = 0
    if state is not None:
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total), last_epoch=step - 1)
    started = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    seed = config.training.seed
    # Mixed precision on a GPU (the LoRA weights stay float32); on the CPU everything is float32.
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.training.mixed_precision) \
        if device.type == "cuda" else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def batch_loss(batch: list[int], micro: int, epoch: int) -> torch.Tensor:
        """One micro-batch: captions as kohya prepares them, text encoding, the training step.
        Its random draws are seeded by (step, micro-batch), so a resumed run draws the same."""
        generator = torch.Generator().manual_seed(seed * 7919 + step * 64 + micro)
        rng = random.Random(seed * 31 + step * 64 + micro)
        captions = [caption_for_step(items[i].caption, config, rng, epoch) for i in batch]
        with torch.set_grad_enabled(bool(te_t)):
            text, pooled = encode_text(models, captions, config.model.clip_skip)
        added = {"text_embeds": pooled, "time_ids": torch.stack([sizes[i] for i in batch])} if models.sdxl else None
        weights = torch.tensor([config.data.prior_loss_weight if items[i].is_reg else 1.0 for i in batch],
                               device=device)
        return training_step(torch.stack([latents[i] for i in batch]), text, weights, unet, noise_scheduler,
                             config, generator, added)

    def save_intermediate(name: str) -> None:
        _save(network, config, out_dir / f"{config.output.name}-{name}.safetensors", items, step,
              steps_per_epoch, total, started, models.sdxl)
        keep = config.saving.keep_last_n
        if keep:
            older = sorted(out_dir.glob(f"{config.output.name}-*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
            for path in older[:-keep]:
                path.unlink()

    while step < total:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        batches = epoch_batches(items, batch_size, seed, epoch)
        groups = [batches[k:k + accumulation] for k in range(0, len(batches), accumulation)]
        for group in groups[done_in_epoch:]:
            for micro, batch in enumerate(group):
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = batch_loss(batch, micro, epoch)
                scaler.scale(loss / len(group)).backward()  # gradients of the group's mean loss
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), config.loss.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % config.training.log_every_n_steps == 0 or step == total:
                value = float(loss.detach())  # read at the log interval only: each read stalls a GPU
                if not math.isfinite(value):
                    raise UserError(f"loss became {value} at step {step}: stopping; the last saved file is kept")
                losses.append(value)
                log(json.dumps({"step": step, "epoch": epoch + 1, "loss": value, "lr": schedule.get_last_lr()[0]}))
            every = config.saving.every_n_steps
            if every and step % every == 0 and step < total:
                save_intermediate(f"step{step:08d}")
            if step >= total or (stop_at is not None and step >= stop_at):
                break
        epochs_done, rest = divmod(step, steps_per_epoch)
        if rest == 0 and config.saving.every_n_epochs and step < total \
                and epochs_done % config.saving.every_n_epochs == 0:
            save_intermediate(f"{epochs_done:06d}")
        if stop_at is not None and step >= stop_at:
            break
    if config.saving.save_state or (stop_at is not None and step < total):
        _save_state(network, optimizer, step, config, state_path)
    if step >= total:
        _save(network, config, out_dir / f"{config.output.name}.safetensors", items, step, steps_per_epoch,
              total, started, models.sdxl)
    return {"step": step, "total": total, "losses": losses, "steps_per_epoch": steps_per_epoch,
            "saved": network.saved}


def _save(network, config, path, items, step, steps_per_epoch, total, started, sdxl: bool) -> None:
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[config.saving.precision]
    family = "sdxl" if sdxl else (config.model.family if config.model.family != "auto" else "sd1")
    save(network, path, metadata(config, items, step, steps_per_epoch, total, started, family), dtype)
    network.saved.append(str(path))


def _save_state(network, optimizer, step, config, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
    write_text(path.with_name("config.json"), json.dumps(asdict(config)))


def resume(out_dir: Path, stop_at: int | None = None, log=print) -> dict:
    config_path = out_dir / "config.json"
    if not (out_dir / STATE).is_file() or not config_path.is_file():
        raise UserError(f"{out_dir} holds no saved state: train with saving.save_state = true first")
    config = from_dict(Config, json.loads(config_path.read_text()))
    return run(config, out_dir, stop_at, log, resume_from_state=True)
