"""Every check of a config that needs no model, in one place: `train plan` and `train run` both
call `validate` before any model loads, so what plan accepts, run does not refuse minutes later.
The code that builds each part (setup, the optimizer, the text cache, the latents) keeps its own
check as well, as an assertion of what reached it."""

from __future__ import annotations

from pathlib import Path

import torch

from lorakit.errors import UserError
from lorakit.train.blocks import DIM_KEYS, LR_KEYS
from lorakit.train.config import Config
from lorakit.train.data import Subset
from lorakit.train.network_kinds import KINDS, check_args


def validate(config: Config, found: list[Subset]) -> None:
    """`found`: the config's folders (train/data.subsets), whose own options count too."""
    n, o, d = config.network, config.optimizer, config.data
    kind = KINDS[n.module].builder
    check_args(n.module, n.args, n.dim, n.conv_dim if KINDS[n.module].convolutions else 0, n.rank_dropout, n.dropout)
    trains_te = kind is not None and n.train_text_encoder
    embeddings_train = any(e.train for e in config.embeddings)
    if not ((kind is not None and (n.train_unet or n.train_text_encoder)) or embeddings_train):
        raise UserError("nothing to train: the network needs train_unet or train_text_encoder")
    if kind == "ours":
        if n.dim_from_weights and any(k in n.args for k in DIM_KEYS[::2]):
            raise UserError("network.dim_from_weights takes every module's rank from the file; block_dims / "
                            "conv_block_dims would be ignored: use one or the other")
        unet_rate = n.unet_lr or o.learning_rate
        if n.train_unet and any(k in n.args for k in LR_KEYS[:3]) and isinstance(unet_rate, str):
            raise UserError("block learning-rate weights multiply one UNet rate; a piecewise rate "
                            f"({unet_rate!r}) has none to multiply")
    if d.cache_text_encoder_outputs:
        varying = [name for name, on in (("a text-encoder LoRA trains", trains_te),
                                         ("an embedding trains", embeddings_train),
                                         ("data.template", bool(d.template))) if on]
        varying += list(dict.fromkeys(name for s in found for name in s.captions.varying()))
        if varying:
            raise UserError("data.cache_text_encoder_outputs needs fixed captions and frozen text encoders; "
                            "this run has: " + ", ".join(varying))
    if d.cache_latents and any(s.augment.per_step() for s in found):
        raise UserError("random_crop and color_aug (in [data] or a subset) change the pixels at every step, "
                        "so their latents cannot be cached: set data.cache_latents = false")
    if d.cache_latents_to_disk and not d.cache_latents:
        raise UserError("data.cache_latents_to_disk keeps the latent cache: it needs data.cache_latents = true")
    _optimizer_args(config)
    for key in ("dir", "log_dir"):  # a file where a folder goes fails the run at its first write
        value = getattr(config.output, key)
        if value and Path(value).exists() and not Path(value).is_dir():
            raise UserError(f"output.{key} = {value} is a file, not a folder")


def _optimizer_args(config: Config) -> None:
    """optimizer.args the optimizer does not take: found by building it over one number (its
    package missing is said by the run, on the machine that trains)."""
    from lorakit.train import optimizers

    try:
        optimizers.build([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-4}], config.optimizer)
    except UserError as exc:
        if "do not fit" in str(exc):
            raise
