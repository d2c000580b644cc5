"""The models a run trains against: UNet, VAE, text encoder(s) and tokenizer(s) of SD1.x, SD2.x
or SDXL from a diffusers folder or hub repo id, and the text encoding each family uses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorakit.errors import UserError
from train.config import Config


@dataclass
class Models:
    tokenizers: list
    text_encoders: list  # SDXL: [CLIP ViT-L, OpenCLIP bigG with projection]
    vae: object
    unet: object
    scheduler: object

    @property
    def sdxl(self) -> bool:
        return len(self.text_encoders) == 2


def load_models(config: Config) -> Models:
    """A diffusers folder (or hub id) with unet, vae, text_encoder(_2), tokenizer(_2) subfolders."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    base = config.model.base
    if not base:
        raise UserError("model.base is empty: set it to a diffusers folder or a hub repo id")
    if base.endswith((".safetensors", ".ckpt")):
        raise UserError(f"{base}: single-file checkpoints are not supported yet; convert it to a diffusers "
                        "folder (diffusers' convert_original_stable_diffusion_to_diffusers.py)")
    try:
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        tokenizers = [CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", model_max_length=77)]
        text_encoders = [CLIPTextModel.from_pretrained(base, subfolder="text_encoder")]
        if unet.config.get("addition_embed_type") == "text_time":  # SDXL
            tokenizers.append(CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2", model_max_length=77))
            text_encoders.append(CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2"))
        vae = AutoencoderKL.from_pretrained(config.model.vae or base, subfolder=None if config.model.vae else "vae")
    except OSError as exc:
        raise UserError(f"cannot load the model {base}: {str(exc).splitlines()[0]}") from None
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False,
                              # Lin et al. 2023 (arXiv 2305.08891): the last step is pure noise
                              rescale_betas_zero_snr=config.loss.zero_terminal_snr,
                              prediction_type="v_prediction" if config.model.v_parameterization else "epsilon")
    return Models(tokenizers, text_encoders, vae, unet, scheduler)


def _ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _final_norm(text_encoder):
    return text_encoder.text_model.final_layer_norm if hasattr(text_encoder, "text_model") \
        else text_encoder.final_layer_norm


def encode_text(models: Models, captions: list[str], clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states for cross-attention, pooled embedding or None). SD1/2: the last layer, or
    an earlier one through the final layer norm with clip_skip. SDXL ignores clip_skip: both
    encoders' penultimate layers, concatenated, and the second encoder's pooled projection."""
    if models.sdxl:
        first = models.text_encoders[0](_ids(models.tokenizers[0], captions), output_hidden_states=True)
        second = models.text_encoders[1](_ids(models.tokenizers[1], captions), output_hidden_states=True)
        return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds
    text_encoder = models.text_encoders[0]
    out = text_encoder(_ids(models.tokenizers[0], captions), output_hidden_states=clip_skip > 1)
    if clip_skip > 1:
        return _final_norm(text_encoder)(out.hidden_states[-clip_skip]), None
    return out[0], None
