"""Every random draw of a run comes from a seed derived here, from (run seed, stream, indices).

Arithmetic mixes such as `seed * 7919 + step * 64 + micro` collide: seed 64 at step 0 would draw
what seed 0 draws at step 7919. A hash of the whole tuple cannot: two different tuples give
unrelated seeds, and each stream ("noise", "caption", "batches", ...) is independent of the
others. Because a draw depends only on its tuple, a resumed run draws exactly what an
uninterrupted one does, without saving any random state.
"""

from __future__ import annotations

import hashlib
import random


def derive(seed: int, stream: str, *indices: int) -> int:
    """A 63-bit seed for `stream` at `indices` (step, micro-batch, epoch, image...) of run `seed`."""
    text = "|".join([str(int(seed)), stream, *(str(int(i)) for i in indices)])
    # surrogateescape: a stream may hold a file name that is not UTF-8 (its bytes kept as surrogates)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
                          "little") >> 1


def rng(seed: int, stream: str, *indices: int) -> random.Random:
    """Python's generator for `stream` at `indices` (shuffles, caption dropout, flips, crops)."""
    return random.Random(derive(seed, stream, *indices))


def generator(seed: int, stream: str, *indices: int):
    """A torch CPU generator for `stream` at `indices` (noise, timesteps). Drawn on the CPU, so
    every device (and every process) draws the same numbers."""
    import torch

    return torch.Generator().manual_seed(derive(seed, stream, *indices))
