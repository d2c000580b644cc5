"""Noise, targets and loss weightings (docs/formats.md, "Training", kohya `custom_train_functions.py`)."""

from __future__ import annotations

import torch


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio of each timestep: alpha_bar / (1 - alpha_bar). Floored at 1e-4:
    with zero-terminal SNR the last step's is 0, and min-SNR weighting divides by it."""
    a = alphas_cumprod[timesteps]
    return torch.clamp(a / (1 - a), min=1e-4)


def min_snr_weight(snr_t: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023, arXiv 2303.09556): min(SNR, gamma) / SNR for epsilon,
    / (SNR + 1) for v-prediction."""
    return torch.clamp(snr_t, max=gamma) / (snr_t + 1 if v_prediction else snr_t)


def debiased_weight(snr_t: torch.Tensor, v_prediction: bool = False) -> torch.Tensor:
    """Debiased estimation (Yu et al. 2023, arXiv 2310.08442, as kohya applies it): 1 / sqrt(SNR)
    for epsilon, 1 / (SNR + 1) for v-prediction; the SNR capped at 1000 (step 0's is over 1000)."""
    capped = torch.clamp(snr_t, max=1000)
    return 1 / (capped + 1) if v_prediction else 1 / torch.sqrt(capped)


def offset_noise(noise: torch.Tensor, offset: float | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise offset (crosslabs 2023): a per-channel constant shift, so the model learns to change
    an image's overall brightness. `offset` may be per sample and channel ([B, C, 1, 1])."""
    shift = torch.randn(noise.shape[0], noise.shape[1], 1, 1, generator=generator)
    return noise + offset * shift.to(noise.device, noise.dtype)


def multires_noise(noise: torch.Tensor, iterations: int, discount: float,
                   generator: torch.Generator) -> torch.Tensor:
    """Multi-resolution ("pyramid") noise (Whitaker 2023, kohya `pyramid_noise_like`): noise at
    ever coarser scales, upsampled and added with weight discount**i, then renormalised."""
    b, c, h, w = noise.shape
    out = noise.clone()
    for i in range(1, iterations + 1):
        scale = 2 ** i
        if h // scale < 1 or w // scale < 1:
            break
        coarse = torch.randn(b, c, h // scale, w // scale, generator=generator).to(noise.device, noise.dtype)
        out += torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear") * discount ** i
    return out / out.std()


def perturb_input(noise: torch.Tensor, gamma: float, generator: torch.Generator) -> torch.Tensor:
    """Input perturbation (Ning et al. 2023, arXiv 2301.11706): the model sees slightly different
    noise than it is asked to predict, which reduces exposure bias."""
    return noise + gamma * torch.randn(noise.shape, generator=generator).to(noise.device, noise.dtype)


def _l2(diff: torch.Tensor, huber_c: float) -> torch.Tensor:
    return diff ** 2


def _huber(diff: torch.Tensor, huber_c: float) -> torch.Tensor:
    """Pseudo-Huber: quadratic near 0, linear for large errors (kohya's loss_type huber)."""
    return 2 * huber_c * (torch.sqrt(diff ** 2 + huber_c ** 2) - huber_c)


LOSSES = {"l2": _l2, "huber": _huber}  # loss.type


def per_sample(pred: torch.Tensor, target: torch.Tensor, kind: str = "l2", huber_c: float = 0.1) -> torch.Tensor:
    """The loss of each sample, averaged over channels and pixels (in float32)."""
    return LOSSES[kind](pred.float() - target.float(), huber_c).mean(dim=[1, 2, 3])
