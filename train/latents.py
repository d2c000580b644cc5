"""The latents each step trains on. Cached once per image (kohya's cache_latents; with flip_aug
both orientations), or, when an augmentation changes the pixels every time (random_crop,
color_aug: kohya refuses those with a cache too), encoded again at every step. Either way a
latent is the VAE distribution's mean, so the same pixels always give the same latent.

data.cache_latents_to_disk keeps them between runs, one file per image and orientation in
data.latent_cache_dir (default: lorakit's user cache), named by a key of everything the latent
depends on: the image's bytes, its bucket, the flip, the VAE's weights (a digest of a few of its
tensors and its config) and the version of the pixel pipeline. A changed image, bucket setting
or VAE gets a new key, so a stale latent is never read; unreadable files are encoded again.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save as save_bytes

from lorakit.errors import UserError
from lorakit.fsio import atomic_path, cache_dir
from train.config import Config
from train.data import Item, pixels

PIPELINE_VERSION = 1  # bump when `pixels` or the encoding changes what a cached latent holds


def vae_digest(vae) -> str:
    """A digest of the VAE's identity: its config and the bytes of its first and last encoder
    convolutions (any retrained or swapped VAE differs there; hashing every weight would take
    seconds)."""
    h = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    h.update(str(vae.dtype).encode())  # a half VAE encodes other latents
    for tensor in (vae.encoder.conv_in.weight, vae.encoder.conv_out.weight):
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def vae_dtype(config: Config, device: torch.device) -> torch.dtype:
    """The VAE runs in float32, unless `training.no_half_vae = false` under mixed precision on
    a GPU: then in the training dtype, as kohya does (faster, less memory; SD1.5's and SDXL's
    VAEs can overflow to NaN in fp16, hence float32 by default). On the CPU, float32 always."""
    t = config.training
    if device.type != "cuda" or t.no_half_vae:
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.mixed_precision, torch.float32)


class DiskCache:
    def __init__(self, folder: Path, vae):
        self.folder = folder
        self.vae_key = vae_digest(vae)
        self._digests: dict[Path, bytes] = {}

    def key(self, item: Item, flip: bool) -> str:
        if item.image not in self._digests:  # read once for both orientations
            self._digests[item.image] = hashlib.sha256(item.image.read_bytes()).digest()
        h = hashlib.sha256(f"{PIPELINE_VERSION}|{self.vae_key}|{item.bucket}|{flip}|".encode())
        h.update(self._digests[item.image])
        return h.hexdigest()

    def get(self, item: Item, flip: bool, encode) -> tuple[torch.Tensor, torch.Tensor]:
        key = self.key(item, flip)
        path = self.folder / key[:2] / f"{key}.safetensors"
        if path.is_file():
            try:
                found = load_file(path)
                return found["latent"], found["size"]
            except (SafetensorError, KeyError, OSError):
                pass  # a truncated or foreign file: encode again and replace it
        latent, size = encode()
        with atomic_path(path) as tmp:
            tmp.write_bytes(save_bytes({"latent": latent.detach().to("cpu", torch.float32).contiguous(),
                                        "size": size.detach().to("cpu").contiguous()}))
        return latent, size


class Latents:
    def __init__(self, items: list[Item], vae, device: torch.device, config: Config):
        d = config.data
        if d.cache_latents and (d.color_aug or d.random_crop):
            raise UserError("data.random_crop and data.color_aug change the pixels at every step, so their "
                            "latents cannot be cached: set data.cache_latents = false")
        self.items, self.vae, self.device = items, vae, device
        self.random_crop, self.color_aug, self.flip = d.random_crop, d.color_aug, d.flip_aug
        self.cache: dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        if d.cache_latents_to_disk and not d.cache_latents:
            raise UserError("data.cache_latents_to_disk keeps the latent cache: it needs data.cache_latents = true")
        self.disk = DiskCache(Path(d.latent_cache_dir) if d.latent_cache_dir else cache_dir("latents"), vae) \
            if d.cache_latents_to_disk else None
        if d.cache_latents:
            for i in range(len(items)):
                for flip in (False, True) if self.flip else (False,):
                    if self.disk:
                        latent, size = self.disk.get(items[i], flip, lambda: self.encode(i, flip))
                        self.cache[i, flip] = latent.to(device), size.to(device)
                    else:
                        self.cache[i, flip] = self.encode(i, flip)

    @torch.no_grad()
    def encode(self, i: int, flip: bool, rng: random.Random | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent, SDXL size conditioning: original h, w, crop top, left, target h, w)."""
        item = self.items[i]
        image, original, (top, left) = pixels(item, rng, self.random_crop, self.color_aug, flip)
        dist = self.vae.encode(image[None].to(self.device, self.vae.dtype)).latent_dist
        latent = dist.mean[0].float() * self.vae.config.scaling_factor  # trained on in float32
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
