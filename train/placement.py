"""Device placement, checked without a GPU: every tensor a training step makes must follow the
model's device. On a GPU a tensor left on the CPU (token ids, noise, loss weights) meeting the
model's tensors is an error at the first step; on the CPU it is invisible, since everything is
there. Here the run is set up on PyTorch's "meta" device (shapes and dtypes, no data), and one
optimizer step runs under `DevicePlacement`, a torch function mode that refuses any call whose
tensor arguments sit on two kinds of device. PyTorch itself lets some such mixes through on
meta (an embedding looked up with CPU ids, a CPU matrix times a meta one), which is why the mode
checks every call, not only what PyTorch would refuse.

The step runs in float32 there (meta has no autocast); the dtypes are the CPU tests' concern.

Zero-dimensional CPU tensors are allowed with any device (CUDA takes them as scalars), and so are
copies between devices (`copy_`, `__setitem__`): moving data is what they are for.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from lorakit.errors import UserError
from lorakit.train.config import Config

CROSS_DEVICE = {torch.Tensor.copy_, torch.Tensor.__setitem__}


class DevicePlacementError(AssertionError):
    pass


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


class DevicePlacement(TorchFunctionMode):
    """Refuse a torch call that mixes devices (see the module's text)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in CROSS_DEVICE:
            devices = {leaf.device.type for leaf in pytree.tree_leaves((args, kwargs))
                       if isinstance(leaf, torch.Tensor) and leaf.dim() > 0}
            if len(devices) > 1:
                shapes = [f"{tuple(leaf.shape)} on {leaf.device}" for leaf in pytree.tree_leaves((args, kwargs))
                          if isinstance(leaf, torch.Tensor) and leaf.dim() > 0]
                raise DevicePlacementError(f"{_name(func)} mixes devices: {', '.join(shapes)}")
        return func(*args, **kwargs)


def check_step(config: Config, device: str = "meta") -> dict:
    """Set a run up on `device` and run one optimizer step (every micro-batch of the first
    step: captions, text encoders, latents, noise, the UNet, the loss, backward, the scaler,
    clipping, the optimizer) under DevicePlacement. Returns what ran; raises
    DevicePlacementError naming the call that mixed devices."""
    from lorakit.train.loop import optimizer_step, step_groups
    from lorakit.train.setup import setup

    if config.network.scale_weight_norms or any(e.preserve_norm for e in config.embeddings):
        raise UserError("the placement check reads no values: run it without scale_weight_norms and preserve_norm")
    # meta has no autocast: the models stay float32 there, so no dtype mix hides a device mix
    config = replace(config, training=replace(config.training, mixed_precision="no", weights_dtype="fp32"))
    run = setup(config, log=lambda line: None, device=torch.device(device))
    try:
        group = step_groups(run, 0)[0]
        with DevicePlacement():
            loss, _ = optimizer_step(run, group, 0, 0)
    finally:
        run.latents.close()
    trained = run.trained()
    return {"device": str(loss.device), "batches": len(group), "trained": len(trained),
            "on_device": all(p.device.type == device for p in trained),
            "parked": [type(m).__name__ for m in run.parking.parked]}
