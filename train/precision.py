"""Mixed precision (training.mixed_precision) and the dtypes of what trains, what encodes and what
is saved: the same rules on every device, so the path a GPU takes is the path the tests take on
the CPU (torch's CPU autocast runs bf16 and fp16 too, and its GradScaler scales fp16 losses).

- The trained weights (LoRA, embeddings) stay float32, unless `training.weights_dtype` puts the
  network's in bf16 or fp16 (kohya's full_bf16 / full_fp16: half the memory of the weights, their
  gradients and the optimizer's moments, at the cost of updates smaller than the dtype can
  represent being lost; embeddings stay float32); the frozen UNet and text encoders are
  kept in the mixed-precision dtype (kohya's weight_dtype), whatever dtype the model was stored
  in; the forward and backward passes run under autocast in that dtype.
- fp16 has a narrow range, so its losses are scaled up before backward and the gradients
  unscaled before clipping (the GradScaler); its state is part of a run's saved state, so a
  resumed fp16 run continues exactly. bf16 needs no scaling.
- The VAE encodes in float32 unless `training.no_half_vae = false` (then in the mixed-precision
  dtype, as kohya does; SD1.5's and SDXL's VAEs can overflow to NaN in fp16); latents are float32.
"""

from __future__ import annotations

import contextlib

import torch

AMP = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # training.mixed_precision
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}  # saving.precision
AUTOCAST_DEVICES = ("cuda", "cpu", "xpu", "mps")  # other devices (meta: the placement check) run as they are


def amp_dtype(mixed_precision: str) -> torch.dtype | None:
    return AMP[mixed_precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`, or nothing for float32 runs and devices autocast lacks."""
    if dtype is None or device.type not in AUTOCAST_DEVICES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class HalfWeightsGradScaler(torch.amp.GradScaler):
    """The scaler for `training.weights_dtype = "fp16"` (kohya's full_fp16): torch's refuses to
    unscale fp16 gradients, because it expects float32 weights behind fp16 activations; here the
    weights themselves are fp16, so their gradients are fp16 and are unscaled as they are (what
    kohya's patch to accelerate's scaler does)."""

    def _unscale_grads_(self, optimizer, inv_scale, found_inf, allow_fp16):
        return super()._unscale_grads_(optimizer, inv_scale, found_inf, True)


def grad_scaler(device: torch.device, dtype: torch.dtype | None, weights: str = "fp32") -> torch.amp.GradScaler:
    """Loss scaling for fp16 (a disabled scaler, which passes everything through, otherwise)."""
    enabled = dtype == torch.float16 and device.type in AUTOCAST_DEVICES
    kind = HalfWeightsGradScaler if weights == "fp16" else torch.amp.GradScaler
    return kind(device.type if enabled else "cpu", enabled=enabled)


def frozen_dtype(mixed_precision: str) -> torch.dtype:
    """The frozen UNet and text encoders: in the mixed-precision dtype (as kohya keeps them; half
    the memory: SDXL's UNet is 10.4 GB in float32), else float32; whatever the model folder stores."""
    return AMP[mixed_precision] or torch.float32


def vae_dtype(mixed_precision: str, no_half_vae: bool) -> torch.dtype:
    """float32, unless `training.no_half_vae = false` under mixed precision: then its dtype."""
    dtype = AMP[mixed_precision]
    return torch.float32 if no_half_vae or dtype is None else dtype
