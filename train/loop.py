"""`train run` / `train resume`: the training loop, top to bottom:

    run = setup(config)                  # train/setup.py: models, network, data, optimizer, state
    while steps remain:
        for each optimizer step of the epoch:
            optimizer_step(run, ...)     # its micro-batches: batch_loss, backward; then clip, step
            log; what is due at this step (save, sample, validate)
        what is due at the epoch's end
    keep the state; save the final files

Ctrl-C or SIGTERM stops it after the step under way, with a checkpoint and the state saved
(train/interrupt.py).

Every random draw comes from a seed derived from (seed, stream, step, micro-batch)
(train/seeds.py), so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from pathlib import Path

import torch

from lorakit.errors import UserError
from lorakit.train import loss as L
from lorakit.train import precision, seeds
from lorakit.train.caption_lines import resolve_wildcards
from lorakit.train.config import Config
from lorakit.train.data import epoch_batches
from lorakit.train.interrupt import Interrupt
from lorakit.train.models import encode_text
from lorakit.train.setup import Run, prompt, setup
from lorakit.train.subset_options import with_affixes
from lorakit.train.templates import fill


def run(config: Config, out_dir: Path | None = None, stop_at: int | None = None, log=print,
        resume_from_state: bool = False, progress=None, state: dict | None = None) -> dict:
    """Train until the configured total (or `stop_at`, as if interrupted: the state is kept).
    `log(json_line)` gets each logged step, validation and warning; `progress(step, total, epoch,
    images)` is called after every optimizer step (train/progress.py shows both). `state`: the
    saved state to resume from, already read (else read from out_dir when resuming)."""
    return train(setup(config, out_dir, resume_from_state, log, state=state), stop_at, progress)


def train(run: Run, stop_at: int | None = None, progress=None) -> dict:
    """The result's "interrupted": the signal that stopped the run early (train/interrupt.py), or None."""
    config = run.config
    losses: list[float] = []
    images = 0  # trained since this process started, by all processes (for img/s)
    step = run.step
    stopped = None
    if step >= run.total and run.dist.main and run.saver.record.has_final(run.saver.final_files()):
        return finish(run, step, losses, None, rewrite=False)  # a resume of a finished run: nothing to do
    with Interrupt() as interrupt:
        while step < run.total and (stop_at is None or step < stop_at) and not stopped:
            epoch, done_in_epoch = divmod(step, run.steps_per_epoch)
            for group in step_groups(run, epoch)[done_in_epoch:]:
                loss, scaled = optimizer_step(run, group, step, epoch)
                step += 1
                images += sum(len(batch) for batch in group)
                if progress:
                    progress(step, run.total, epoch + 1, images)
                if step % config.training.log_every_n_steps == 0 or step == run.total:
                    losses.append(log_step(run, step, epoch + 1, loss, scaled))
                act(run, due(config, step, run.total), step, epoch + 1, f"step{step:08d}")
                stopped = signalled(run, interrupt)
                if step >= run.total or (stop_at is not None and step >= stop_at) or stopped:
                    break
            epochs_done, rest = divmod(step, run.steps_per_epoch)
            if rest == 0:
                act(run, due(config, step, run.total, epochs_done), step, epochs_done, f"{epochs_done:06d}")
        if stopped and step < run.total and run.dist.main and run.saver.record.label_at(step) is None:
            run.saver.checkpoint(step, f"step{step:08d}")  # the state follows in finish
        return finish(run, step, losses, stopped if step < run.total else None)


def signalled(run: Run, interrupt: Interrupt) -> int | None:
    """The signal that stops the run after this step. Every process stops at the same step, though
    a signal reaches each at its own moment (the others would wait for it in the next all-reduce)."""
    if run.dist.world == 1:
        return interrupt.signum
    anyone = run.dist.mean(torch.tensor(float(interrupt.signum or 0), device=run.device)) > 0
    return (interrupt.signum or signal.SIGTERM) if anyone else None


def step_groups(run: Run, epoch: int) -> list[list[list[int]]]:
    """The epoch's batches, a group of them per optimizer step (accumulation x processes)."""
    batches = epoch_batches(run.items, run.config.training.seed, epoch)
    per_step = run.config.training.gradient_accumulation_steps * run.dist.world
    return [batches[k:k + per_step] for k in range(0, len(batches), per_step)]


def optimizer_step(run: Run, group: list[list[int]], step: int, epoch: int):
    """One optimizer step over this process's share of `group`: each micro-batch's loss (under
    autocast) scaled and backpropagated, the gradients summed over processes, unscaled, clipped,
    stepped. Returns (the last micro-batch's loss, modules rescaled by scale_weight_norms)."""
    config = run.config
    embeddings_train = run.embeddings.set_step(step) if run.embeddings else False
    loss = None
    for micro, batch in run.dist.share(group, config.training.gradient_accumulation_steps):
        with precision.autocast(run.device, run.amp_dtype):
            loss = batch_loss(run, batch, step, micro, epoch, bool(run.te_targets) or embeddings_train)
        if loss.requires_grad:  # false once every embedding has passed its pivot and no network trains
            run.scaler.scale(loss / len(group)).backward()  # gradients of the group's mean loss
    trained = run.trained()
    run.dist.sum_gradients([p for p in trained if p.requires_grad])
    with_grad = [p for p in trained if p.grad is not None]
    if with_grad:  # the scaler refuses a step it saw no gradient for
        run.scaler.unscale_(run.optimizer)  # before clipping: the norm of the true gradients
        if config.loss.max_grad_norm > 0:  # 0 turns clipping off, as in kohya (clipping to 0 zeroes the step)
            torch.nn.utils.clip_grad_norm_(with_grad, config.loss.max_grad_norm)
        run.scaler.step(run.optimizer)  # skipped when fp16 gradients overflowed
        run.scaler.update()
    if run.embeddings:
        run.embeddings.after_step(step)
    scaled = run.network.scale_weight_norms(config.network.scale_weight_norms) \
        if config.network.scale_weight_norms else None
    run.schedule.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss, scaled


def batch_loss(run: Run, batch: list[int], step: int, micro: int, epoch: int, text_grad: bool) -> torch.Tensor:
    """The loss of one micro-batch: its captions encoded (or read from the cache), its latents,
    noised and predicted. Its draws are seeded by (step, micro-batch): a resumed run draws the same."""
    config, models, seed = run.config, run.models, run.config.training.seed
    torch.manual_seed(seeds.derive(seed, "dropout", step, micro))  # the network's dropouts
    if run.text_cache:
        text = torch.stack([run.text_cache[i][0] for i in batch])
        pooled = torch.stack([run.text_cache[i][1] for i in batch]) if models.sdxl else None
    else:
        rng = seeds.rng(seed, "caption", step, micro)
        captions = [prompt(run, run.items[i], rng, epoch) for i in batch]
        with torch.set_grad_enabled(text_grad):
            text, pooled = encode_text(models, captions, config.model.clip_skip, config.data.max_token_length)
    latents, sizes = run.latents.batch(batch, seeds.rng(seed, "pixels", step, micro))
    added = {"text_embeds": pooled, "time_ids": sizes} if models.sdxl else None
    weights = torch.tensor([config.data.prior_loss_weight if run.items[i].is_reg else 1.0 for i in batch],
                           device=run.device)
    return training_step(latents, text, weights, models.unet, models.scheduler, config,
                         seeds.generator(seed, "noise", step, micro), added)


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
    v_prediction = bool(config.model.v_parameterization)  # resolved at load (train/setup.py)
    target = noise_scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
    loss = L.per_sample(prediction, target, loss_cfg.type, loss_cfg.huber_c) * weights
    if loss_cfg.min_snr_gamma or loss_cfg.debiased_estimation:
        snr_t = L.snr(noise_scheduler.alphas_cumprod.to(timesteps.device), timesteps)
        if loss_cfg.min_snr_gamma:
            loss = loss * L.min_snr_weight(snr_t, loss_cfg.min_snr_gamma, v_prediction)
        if loss_cfg.debiased_estimation:
            loss = loss * L.debiased_weight(snr_t, v_prediction)
    return loss.mean()


def log_step(run: Run, step: int, epoch: int, loss: torch.Tensor, scaled: int | None) -> float:
    """The loss (read at the log interval only: each read stalls a GPU), the learning rates."""
    value = run.dist.mean(loss)
    if not math.isfinite(value):
        raise UserError(f"loss became {value} at step {step}: stopping; the last saved file is kept")
    # the rates this step trained at: get_last_lr() is already the next step's (the schedule has
    # stepped), which at a warm restart or the end of a curve reads as a jump
    rates = [base * rate(step - 1) for base, rate in zip(run.schedule.base_lrs, run.schedule.lr_lambdas)]
    line = {"step": step, "epoch": epoch, "loss": value, "lr": rates[0],
            "time": round(time.time() - run.saver.plan["started"], 3)}
    if len(rates) > 1:  # UNet, text encoder, embeddings: each group's own rate
        line["lrs"] = rates
    if scaled is not None:
        line["keys_scaled"] = scaled
    run.log(json.dumps(line))
    return value


def due(config: Config, step: int, total: int, epoch: int | None = None) -> list[str]:
    """What is due after optimizer step `step`: at that step (epoch None), or at the end of
    epoch `epoch`. A save before the end only: the end saves the final files."""
    count = step if epoch is None else epoch
    every = (config.saving.every_n_steps, config.sampling.every_n_steps, config.training.validate_every_n_steps) \
        if epoch is None else \
        (config.saving.every_n_epochs, config.sampling.every_n_epochs, config.training.validate_every_n_epochs)
    return [action for action, n in zip(("save", "sample", "validate"), every)
            if n and count % n == 0 and (action != "save" or step < total)]


def validate(run: Run, step: int, epoch: int) -> None:
    """The loss on the held-out images at fixed draws (train/validation.py), logged once per step."""
    if run.validation is None or step in run.val_losses:
        return
    config, models = run.config, run.models

    def encode(batch):
        texts = [fill(run.templates[0], run.placeholder, i.caption) if run.templates else i.caption for i in batch]
        texts = [with_affixes(t, i.captions.prefix, i.captions.suffix) for i, t in zip(batch, texts)]
        # fixed texts, as the draws are: a wildcard's first option, never its braces
        texts = [resolve_wildcards(t, random.Random(0)) if i.captions.wildcard else t for i, t in zip(batch, texts)]
        return encode_text(models, [run.embeddings.substitute(t) if run.embeddings else t for t in texts],
                           config.model.clip_skip, config.data.max_token_length)

    def step_loss(batch_latents, text, pooled, sizes, generator, timesteps):
        added = {"text_embeds": pooled, "time_ids": sizes} if models.sdxl else None
        return training_step(batch_latents, text, torch.ones(len(timesteps), device=run.device), models.unet,
                             models.scheduler, config, generator, added, timesteps)

    run.network.eval()
    try:
        with precision.autocast(run.device, run.amp_dtype):
            with run.parking.borrowed():  # the text encoders, when their outputs are cached
                value = run.validation.loss(encode, step_loss)
    finally:
        run.network.train()
    run.val_losses[step] = value
    run.log(json.dumps({"step": step, "epoch": epoch, "val_loss": value}))


def save(run: Run, step: int, label: str) -> None:
    """An intermediate save; with saving.save_state the state to resume from goes with it."""
    run.saver.checkpoint(step, label)
    if run.config.saving.save_state:
        run.saver.keep_state(run.state(step), label)


ACTIONS = {  # what `due` can return, done by the first process only
    "save": lambda run, step, epoch, label: save(run, step, label),
    "sample": lambda run, step, epoch, label: run.saver.sample(step),
    "validate": lambda run, step, epoch, label: validate(run, step, epoch),
}


def act(run: Run, actions: list[str], step: int, epoch: int, label: str) -> None:
    if run.dist.main:
        for action in actions:
            ACTIONS[action](run, step, epoch, label)


def finish(run: Run, step: int, losses: list[float], interrupted: int | None = None, rewrite: bool = True) -> dict:
    """Keep the state (always when stopped early), save the final files, release the workers.
    `rewrite` False: the run had finished before this resume; its files stay as they are."""
    if rewrite and run.dist.main and (run.config.saving.save_state or step < run.total):
        run.saver.keep_state(run.state(step), f"step{step:08d}")
    if rewrite and run.dist.main and step >= run.total:
        run.saver.checkpoint(step)
    run.latents.close()
    run.dist.close()
    return {"step": step, "total": run.total, "losses": losses, "steps_per_epoch": run.steps_per_epoch,
            "saved": run.saver.saved, "val_losses": list(run.val_losses.values()),
            "held_out": [str(i.image) for i in run.held_out], "interrupted": interrupted}
