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
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from lorakit.errors import UserError
from lorakit.fsio import atomic_path, cache_dir
from lorakit.train.config import Config
from lorakit.train.data import Item, pixels

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

    def path(self, item: Item, flip: bool) -> Path:
        key = self.key(item, flip)
        return self.folder / key[:2] / f"{key}.safetensors"

    @staticmethod
    def load(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached pair, or None when absent, truncated or foreign (then it is encoded again)."""
        if not path.is_file():
            return None
        try:
            found = load_file(path)
            return found["latent"], found["size"]
        except (SafetensorError, KeyError, OSError):
            return None

    @staticmethod
    def store(path: Path, latent: torch.Tensor, size: torch.Tensor) -> None:
        with atomic_path(path) as tmp:
            tmp.write_bytes(save_bytes({"latent": latent.detach().to("cpu", torch.float32).contiguous(),
                                        "size": size.detach().to("cpu").contiguous()}))


class Latents:
    """data.num_workers threads decode images (PIL and OpenCV release the GIL while they decode,
    resize and convert) ahead of the VAE: while the cache is built, and at every step when the
    latents are encoded per step. The threads live for the whole run (data.persistent_workers);
    0 decodes in the training thread. Which image gets which random draw never depends on the
    number of workers."""

    def __init__(self, items: list[Item], vae, device: torch.device, config: Config):
        d = config.data
        if d.cache_latents and any(item.augment.per_step() for item in items):
            raise UserError("random_crop and color_aug (in [data] or a subset) change the pixels at every step, "
                            "so their latents cannot be cached: set data.cache_latents = false")
        self.items, self.vae, self.device = items, vae, device
        self.cache: dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        if d.cache_latents_to_disk and not d.cache_latents:
            raise UserError("data.cache_latents_to_disk keeps the latent cache: it needs data.cache_latents = true")
        self.disk = DiskCache(Path(d.latent_cache_dir) if d.latent_cache_dir else cache_dir("latents"), vae) \
            if d.cache_latents_to_disk else None
        self.pool = ThreadPoolExecutor(d.num_workers, thread_name_prefix="lorakit-decode") if d.num_workers else None
        self.workers = d.num_workers
        if d.cache_latents:
            self._fill()
            self.close()  # every latent is cached: nothing is decoded again

    def _fill(self) -> None:
        jobs = [(i, flip) for i, item in enumerate(self.items) for flip in ((False, True) if item.augment.flip else (False,))]
        paths = {}
        if self.disk:
            for job in jobs:
                paths[job] = self.disk.path(self.items[job[0]], job[1])
                found = self.disk.load(paths[job])
                if found is not None:
                    self.cache[job] = found[0].to(self.device), found[1].to(self.device)
        missing = [job for job in jobs if job not in self.cache]
        for job, decoded in self._decoded([(i, flip, None) for i, flip in missing]):
            self.cache[job[:2]] = self._encode(job[0], decoded)
            if self.disk:
                self.disk.store(paths[job[:2]], *self.cache[job[:2]])

    def _pixels(self, i: int, flip: bool, rng: random.Random | None):
        a = self.items[i].augment
        return pixels(self.items[i], rng, a.random_crop, a.color, flip)

    def _decoded(self, jobs: list[tuple[int, bool, random.Random | None]]):
        """(job, decoded pixels) in the jobs' order; with workers, decoded up to 2 per worker ahead."""
        if self.pool is None:
            for job in jobs:
                yield job, self._pixels(*job)
            return
        pending = deque()
        upcoming = iter(jobs)
        for job in upcoming:
            pending.append((job, self.pool.submit(self._pixels, *job)))
            if len(pending) >= 2 * self.workers:
                break
        while pending:
            job, future = pending.popleft()
            following = next(upcoming, None)
            if following is not None:
                pending.append((following, self.pool.submit(self._pixels, *following)))
            yield job, future.result()

    @torch.no_grad()
    def _encode(self, i: int, decoded) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent, SDXL size conditioning: original h, w, crop top, left, target h, w)."""
        item = self.items[i]
        image, original, (top, left) = decoded
        dist = self.vae.encode(image[None].to(self.device, self.vae.dtype)).latent_dist
        latent = dist.mean[0].float() * self.vae.config.scaling_factor  # trained on in float32
        size = torch.tensor([*original, top, left, item.bucket[1], item.bucket[0]], dtype=torch.float32,
                            device=self.device)
        return latent, size

    def batch(self, indices: list[int], rng: random.Random | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's latents and size conditionings. Flips, and the seed of each image's crop
        and colour draws, come from rng in the batch's order (here, never in a worker)."""
        flips = [self.items[i].augment.flip and rng.random() < 0.5 for i in indices]
        if self.cache:
            pairs = [self.cache[i, flip] for i, flip in zip(indices, flips)]
        else:
            jobs = [(i, flip, random.Random(rng.getrandbits(64)) if rng is not None else None)
                    for i, flip in zip(indices, flips)]
            pairs = [self._encode(job[0], decoded) for job, decoded in self._decoded(jobs)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
