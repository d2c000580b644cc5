"""A validation loss on held-out images (data.validation_split), with fixed noise and timesteps.

The training loss jumps with each step's random timesteps and noise, so it says little about
over- or under-fitting. Here the held-out images are noised the same way at every evaluation: at
VALIDATION_TIMESTEPS, with noise from a generator seeded by (seed, image) (train/seeds.py), so two evaluations
differ only by what the network learned. The loss is the training loss (same target, loss type
and weighting) on those draws, averaged. Held-out images never train.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch

from lorakit.errors import UserError
from lorakit.train import seeds
from lorakit.train.config import Config
from lorakit.train.data import Item
from lorakit.train.latents import Latents
from lorakit.train.subset_options import Augment

# spread over the schedule: the early, noisy steps weigh as much as the late, detailed ones
VALIDATION_TIMESTEPS = (100, 300, 500, 700, 900)


def held_out(images: list[Path], fraction: float, seed: int) -> set[Path]:
    """The training images (not regularisation) held out: ceil(fraction · count), chosen by the
    seed. `train plan` and `train run` both ask here, so they agree."""
    if not fraction:
        return set()
    if not 0 < fraction < 1:
        raise UserError(f"data.validation_split = {fraction}: use a fraction between 0 and 1, e.g. 0.1")
    candidates = sorted(images, key=str)
    count = math.ceil(fraction * len(candidates))
    if count >= len(candidates):
        raise UserError(f"data.validation_split = {fraction} would hold out all {len(candidates)} training "
                        "images: use a smaller fraction or more images")
    return {candidates[k] for k in seeds.rng(seed, "held out").sample(range(len(candidates)), count)}


def split(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """(training items, held-out items); regularisation images always train."""
    held = held_out([i.image for i in items if not i.is_reg], fraction, seed)
    return [i for i in items if i.image not in held], sorted((i for i in items if i.image in held),
                                                             key=lambda i: str(i.image))


class Validation:
    def __init__(self, items: list[Item], vae, device: torch.device, config: Config, seed: int):
        # the held-out images as they are: centred crop, no flip, no colour change, encoded once
        plain = replace(config, data=replace(config.data, cache_latents=True))
        items = [replace(item, augment=Augment()) for item in items]
        self.items, self.seed, self.device = items, seed, device
        self.latents = Latents(items, vae, device, plain)

    @torch.no_grad()
    def loss(self, encode, step_loss) -> float:
        """`encode(items) -> (text, pooled)`; `step_loss(latents, text, pooled, sizes, generator,
        timesteps) -> loss`: the training step's loss with the given draws."""
        total = 0.0
        timesteps = torch.tensor(VALIDATION_TIMESTEPS, device=self.device)
        n = len(VALIDATION_TIMESTEPS)
        for k, item in enumerate(self.items):
            latent, size = self.latents.batch([k], None)
            text, pooled = encode([item])
            generator = seeds.generator(self.seed, "validation", k)
            repeat = lambda t: t.expand(n, *t.shape[1:]) if t is not None else None  # noqa: E731
            total += float(step_loss(repeat(latent), repeat(text), repeat(pooled), repeat(size), generator, timesteps))
        return total / len(self.items)
