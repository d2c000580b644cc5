"""Sample images during training, from the models being trained (LoRA attached, embeddings
hooked in): a diffusers pipeline assembled from them with the chosen sampler (euler_a by default:
kohya's ddim default is poor for SDXL).

A prompts file has one prompt per line in kohya's syntax: `a photo of kitchan --n blurry --w 512
--h 768 --d 42 --l 7 --s 28` (negative prompt, width, height, seed, CFG scale, steps). Sizes are
rounded to the bucket step, so samples come at resolutions the run trains at. With
data.max_token_length 150 or 225, prompts are as long as captions may be.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import PngImagePlugin

from lorakit.errors import UserError
from lorakit.fsio import atomic_path
from lorakit.train.data import resolution_pair
from lorakit.train.models import CHUNK, encode_text

if TYPE_CHECKING:
    from lorakit.train.config import Config

SAMPLERS = {  # our name: (diffusers scheduler class, A1111's name for the PNG parameters)
    "euler_a": ("EulerAncestralDiscreteScheduler", "Euler a"),
    "euler": ("EulerDiscreteScheduler", "Euler"),
    "ddim": ("DDIMScheduler", "DDIM"),
    "dpm++_2m": ("DPMSolverMultistepScheduler", "DPM++ 2M"),
}
LIMITS = {"width": (8, 4096), "height": (8, 4096), "steps": (1, 1000), "cfg": (0, 100)}
OPTIONS = {"n": ("negative", str), "w": ("width", int), "h": ("height", int), "d": ("seed", int),
           "l": ("cfg", float), "s": ("steps", int)}


@dataclass
class Prompt:
    text: str
    negative: str = ""
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    cfg: float = 7.0
    steps: int = 20


def parse_prompt(line: str, where: str = "prompt") -> Prompt:
    head, *options = line.split(" --")
    prompt = Prompt(head.strip())
    for option in options:
        key, _, value = option.partition(" ")
        if key not in OPTIONS:
            raise UserError(f"{where}: unknown option --{key} (use {', '.join('--' + k for k in OPTIONS)})")
        field, kind = OPTIONS[key]
        try:
            setattr(prompt, field, kind(value.strip()))
        except ValueError:
            raise UserError(f"{where}: --{key} {value.strip()!r} is not a {kind.__name__}") from None
    for field, (low, high) in LIMITS.items():  # checked when planned: a sample fails hours into a run otherwise
        value = getattr(prompt, field)
        if value is not None and not low <= value <= high:
            raise UserError(f"{where}: {field} {value} is outside {low}..{high}")
    return prompt


def read_prompts(path: str) -> list[Prompt]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"sampling.prompts: cannot read {path} ({exc.strerror})") from None
    prompts = [parse_prompt(line.strip(), f"{path}:{n}") for n, line in enumerate(lines, 1)
               if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"sampling.prompts: {path} has no prompts")
    return prompts


def at_bucket(prompt: Prompt, config: Config, index: int) -> Prompt:
    """Defaults filled in: the training resolution, seed = run seed + index; sizes rounded
    to the bucket step."""
    step = max(8, config.data.bucket_reso_steps)
    default_width, default_height = resolution_pair(config.data.resolution)
    width, height = prompt.width or default_width, prompt.height or default_height
    return replace(prompt, width=max(step, round(width / step) * step), height=max(step, round(height / step) * step),
                   seed=prompt.seed if prompt.seed is not None else config.training.seed + index)


def _pipeline(models, config: Config):
    import diffusers

    name = config.sampling.sampler  # one of SAMPLERS: checked when the config loads
    from transformers.utils import logging

    logging.set_verbosity_error()  # its notes about optional image processors are noise here
    # SD's own sampling config (steps_offset 1); zero-terminal-SNR models sample "trailing"
    scheduler = getattr(diffusers, SAMPLERS[name][0]).from_config(
        models.scheduler.config, steps_offset=1,
        timestep_spacing="trailing" if models.scheduler.config.rescale_betas_zero_snr else "leading")
    parts = dict(vae=models.vae, text_encoder=models.text_encoders[0], tokenizer=models.tokenizers[0],
                 unet=models.unet, scheduler=scheduler)
    if models.sdxl:
        pipe = diffusers.StableDiffusionXLPipeline(text_encoder_2=models.text_encoders[1],
                                                   tokenizer_2=models.tokenizers[1], **parts)
    else:
        pipe = diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(models, config: Config, prompts: list[Prompt], substitute=lambda text: text):
    """[(prompt as filled in, PIL image, A1111 `parameters` text)], sampled without gradients
    and with dropout off; the caller's modules are put back in training mode after."""
    pipe = _pipeline(models, config)
    # kohya's clip_skip 2 (penultimate layer) is diffusers' clip_skip 1; SDXL always uses it
    clip_skip = None if models.sdxl or config.model.clip_skip <= 1 else config.model.clip_skip - 1
    out = []
    training_dtype = models.vae.dtype
    if training_dtype != torch.float32:  # samples decode in float32, whatever the VAE trains in
        models.vae.to(torch.float32)
    try:
        with torch.no_grad():
            for index, raw in enumerate(prompts):
                p = at_bucket(raw, config, index)
                generator = torch.Generator().manual_seed(p.seed)
                if config.data.max_token_length > CHUNK:
                    text = _long_prompt(models, config, substitute(p.text), substitute(p.negative))
                else:
                    text = dict(prompt=substitute(p.text), negative_prompt=substitute(p.negative) or None,
                                clip_skip=clip_skip)
                latents = pipe(**text, width=p.width, height=p.height, num_inference_steps=p.steps,
                               guidance_scale=p.cfg, generator=generator, output_type="latent").images
                image = _decode(pipe, models.vae, latents)
                parameters = (f"{p.text}\nNegative prompt: {p.negative}\nSteps: {p.steps}, Sampler: "
                              f"{SAMPLERS[config.sampling.sampler][1]}, CFG scale: {p.cfg}, Seed: {p.seed}, "
                              f"Size: {p.width}x{p.height}")
                out.append((p, image, parameters))
    finally:
        if training_dtype != torch.float32:
            models.vae.to(training_dtype)
    return out


def _decode(pipe, vae, latents: torch.Tensor):
    """The sample's latents (in the frozen models' dtype under mixed precision) decoded by the
    float32 VAE: the pipelines would hand half-precision latents to a float32 VAE as they are."""
    pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(pixels, output_type="pil")[0]


def _long_prompt(models, config: Config, text: str, negative: str) -> dict:
    """A prompt (and negative) of up to data.max_token_length tokens, encoded the way training
    encodes captions: the pipelines' own encoding stops at 75 tokens."""
    states, pooled = encode_text(models, [text, negative], config.model.clip_skip, config.data.max_token_length)
    out = dict(prompt_embeds=states[:1], negative_prompt_embeds=states[1:])
    if models.sdxl:
        out.update(pooled_prompt_embeds=pooled[:1], negative_pooled_prompt_embeds=pooled[1:])
        if not negative:  # as the SDXL pipeline does for an empty negative prompt
            out.update(negative_prompt_embeds=torch.zeros_like(states[1:]),
                       negative_pooled_prompt_embeds=torch.zeros_like(pooled[1:]))
    return out


def save_sample(image, parameters: str, path: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)  # what A1111's PNG Info tab reads
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def prompts_for(config: Config, fallback: str) -> list[Prompt]:
    """The prompts file, else one prompt: the run's first training caption (as A1111 does)."""
    if config.sampling.prompts:
        return read_prompts(config.sampling.prompts)
    return [Prompt(fallback)]  # a caption: never read as options
