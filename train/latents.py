"""The latents each step trains on. Cached once per image (kohya's cache_latents; with flip_aug
both orientations), or, when an augmentation changes the pixels every time (random_crop,
color_aug: kohya refuses those with a cache too), encoded again at every step. Either way a
latent is the VAE distribution's mean, so the same pixels always give the same latent."""

from __future__ import annotations

import random

import torch

from lorakit.errors import UserError
from train.config import Config
from train.data import Item, pixels


class Latents:
    def __init__(self, items: list[Item], vae, device: torch.device, config: Config):
        d = config.data
        if d.cache_latents and (d.color_aug or d.random_crop):
            raise UserError("data.random_crop and data.color_aug change the pixels at every step, so their "
                            "latents cannot be cached: set data.cache_latents = false")
        self.items, self.vae, self.device = items, vae, device
        self.random_crop, self.color_aug, self.flip = d.random_crop, d.color_aug, d.flip_aug
        self.cache: dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        if d.cache_latents:
            for i in range(len(items)):
                for flip in (False, True) if self.flip else (False,):
                    self.cache[i, flip] = self.encode(i, flip)

    @torch.no_grad()
    def encode(self, i: int, flip: bool, rng: random.Random | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent, SDXL size conditioning: original h, w, crop top, left, target h, w)."""
        item = self.items[i]
        image, original, (top, left) = pixels(item, rng, self.random_crop, self.color_aug, flip)
        latent = self.vae.encode(image[None].to(self.device)).latent_dist.mean[0] * self.vae.config.scaling_factor
        size = torch.tensor([*original, top, left, item.bucket[1], item.bucket[0]], dtype=torch.float32,
                            device=self.device)
        return latent, size

    def batch(self, indices: list[int], rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's latents and size conditionings; flips and augmentations drawn from rng."""
        pairs = []
        for i in indices:
            flip = self.flip and rng.random() < 0.5
            pairs.append(self.cache[i, flip] if self.cache else self.encode(i, flip, rng))
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
