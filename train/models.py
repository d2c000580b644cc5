"""The models a run trains against: UNet, VAE, text encoder(s) and tokenizer(s) of SD1.x, SD2.x
or SDXL from a diffusers folder or hub repo id, and the text encoding each family uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lorakit.errors import UserError
from lorakit.train.families import FAMILIES

if TYPE_CHECKING:
    from lorakit.train.config import Config


@dataclass
class Models:
    tokenizers: list
    text_encoders: list  # SDXL: [CLIP ViT-L, OpenCLIP bigG with projection]
    vae: object
    unet: object
    scheduler: object
    family: str  # sd1, sd2 or sdxl: decided once, when the model loads; everything else reads it
    v_prediction: bool = False  # likewise (the run's config is given this value: train/setup.py)

    @property
    def sdxl(self) -> bool:  # SDXL's layout: its UNet's blocks, its two text encoders, its size conditioning
        return FAMILIES[self.family].sgm_unet


def family_of_unet(unet_config) -> str:
    """The family a UNet config belongs to: SDXL conditions on sizes and pooled text
    (`text_time`); SD2's UNet is the only other one with linear projections in its transformer
    blocks and with 1024-wide cross-attention (OpenCLIP ViT-H); SD1 otherwise."""
    if unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    if unet_config.get("use_linear_projection") or unet_config.get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd1"


def _component_config(base: str, relative: str) -> dict | None:
    """A JSON config of model.base (`unet/config.json`…) without loading any weights: from a
    diffusers folder, or from the hub cache for a repo id; None when neither has it."""
    import json
    from pathlib import Path

    found = Path(base) / relative
    if not Path(base).exists() and base.count("/") == 1:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(base, relative)
        except ValueError:  # not a valid repo id
            return None
        found = Path(cached) if isinstance(cached, str) else found
    try:
        return json.loads(found.read_text()) if found.is_file() else None
    except (OSError, ValueError):
        return None


def family_on_disk(base: str) -> str | None:
    """The family of model.base read from its config or keys, without loading weights (for
    `train plan`): a single .safetensors file's keys, or the UNet's config. None when it cannot
    be told without loading."""
    if base.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        from lorakit.train.single_file import family_of

        try:
            with safe_open(base, "pt") as f:
                return family_of(f.keys())
        except (OSError, SafetensorError, UserError):
            return None
    unet = _component_config(base, "unet/config.json")
    return family_of_unet(unet) if unet is not None else None


def prediction_on_disk(base: str) -> bool | None:
    """True when model.base's scheduler config predicts v (SD2 768-v, v-prediction SDXL
    fine-tunes), False when it predicts noise, None when there is none to read (a single file,
    a hub id not in the cache)."""
    scheduler_config = _component_config(base, "scheduler/scheduler_config.json")
    return scheduler_config.get("prediction_type") == "v_prediction" if scheduler_config is not None else None


def decide_prediction(config: Config) -> bool:
    """model.v_parameterization when set, else what the model's scheduler says, else noise."""
    wanted = config.model.v_parameterization
    return wanted if wanted is not None else bool(prediction_on_disk(config.model.base))


def decide_family(config: Config, found: str) -> str:
    """model.family must agree with what the model is; "auto" takes what it is."""
    wanted = config.model.family
    if wanted not in ("auto", found):
        raise UserError(f"model.base {config.model.base} is an {found} model, but model.family = {wanted!r}: "
                        f'set model.family = "auto" or "{found}"')
    return found


def load_models(config: Config) -> Models:
    """A diffusers folder (or hub id) with unet, vae, text_encoder(_2), tokenizer(_2) subfolders,
    or a single checkpoint file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    base = config.model.base
    if not base:
        raise UserError("model.base is empty: set it to a diffusers folder or a hub repo id")
    if base.endswith((".safetensors", ".ckpt")):
        from pathlib import Path

        from lorakit.train.single_file import load_single_file

        m = config.model
        v = decide_prediction(config)
        family, tokenizers, text_encoders, vae, unet = load_single_file(Path(base), m.family, v, m.allow_pickle,
                                                                        m.config)
        if m.vae:
            vae = _separate_vae(m.vae, FAMILIES[family].sgm_unet)
        return Models(tokenizers, text_encoders, vae, unet, scheduler(config.loss.zero_terminal_snr, v),
                      decide_family(config, family), v)
    from pathlib import Path

    from lorakit.hub import unreachable

    # a repo id on an unreachable hub: the cache only, at once (the libraries would retry for ~25 s)
    offline = "" if Path(base).exists() else unreachable()
    local = {"local_files_only": True} if offline else {}
    try:
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", **local)
        family = decide_family(config, family_of_unet(unet.config))
        tokenizers = [CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", model_max_length=77, **local)]
        text_encoders = [CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **local)]
        if FAMILIES[family].two_encoders:
            tokenizers.append(CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2", model_max_length=77, **local))
            text_encoders.append(CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2", **local))
        vae = _separate_vae(config.model.vae, FAMILIES[family].sgm_unet) if config.model.vae else \
            AutoencoderKL.from_pretrained(base, subfolder="vae", **local)
    except OSError as exc:
        why = f" (offline: {offline}; only the Hugging Face cache was read)" if offline else ""
        raise UserError(f"cannot load the model {base}: {str(exc).splitlines()[0]}{why}") from None
    v = decide_prediction(config)
    return Models(tokenizers, text_encoders, vae, unet, scheduler(config.loss.zero_terminal_snr, v), family, v)


def _separate_vae(vae: str, sdxl: bool):
    """model.vae: a diffusers VAE folder / hub id, or a single .safetensors VAE file (A1111's
    `*.vae.safetensors`), read with the shipped SD1 or SDXL VAE config (their scaling factors
    differ), as the base model's UNet says."""
    from diffusers import AutoencoderKL

    if vae.endswith(".safetensors"):
        from lorakit.train.single_file import config_folder

        return AutoencoderKL.from_single_file(vae, config=str(config_folder("sdxl" if sdxl else "sd1")), subfolder="vae",
                                              local_files_only=True)
    return AutoencoderKL.from_pretrained(vae)


def scheduler(zero_terminal_snr: bool, v_prediction: bool):
    """The noise schedule training draws from (SD's scaled-linear betas)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False,
                         # Lin et al. 2023 (arXiv 2305.08891): the last step is pure noise
                         rescale_betas_zero_snr=zero_terminal_snr,
                         prediction_type="v_prediction" if v_prediction else "epsilon")


def _sdpa(unet) -> None:
    """torch's fused scaled-dot-product attention (flash or memory-efficient kernels on a GPU)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())


def _math(unet) -> None:
    """The plain matmul-softmax attention: slow, for comparisons."""
    from diffusers.models.attention_processor import AttnProcessor

    unet.set_attn_processor(AttnProcessor())


def _xformers(unet) -> None:
    try:
        import xformers  # noqa: F401  (diffusers' own error would not say what to install)
    except ImportError:
        raise UserError('training.attention = "xformers" needs the xformers package (pip install xformers); '
                        '"sdpa" is as fast on torch 2') from None
    unet.enable_xformers_memory_efficient_attention()


ATTENTION = {"sdpa": _sdpa, "xformers": _xformers, "math": _math}  # training.attention


def set_attention(unet, kind: str) -> None:
    ATTENTION[kind](unet)


CHUNK = 75  # caption tokens per CLIP pass (77 with the start and end tokens)


def _ids(tokenizer, captions: list[str], max_tokens: int = CHUNK) -> torch.Tensor:
    """[batch, chunks, 77] token ids: a caption of up to `max_tokens` (75, 150, 225) tokens cut
    into 75-token chunks, each wrapped in its own start and end token (kohya's layout)."""
    ids = tokenizer(captions, padding="max_length", max_length=max_tokens + 2, truncation=True,
                    return_tensors="pt").input_ids
    if max_tokens == CHUNK:
        return ids[:, None]
    bos, eos, pad = ids[:, :1], tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for start in range(1, max_tokens + 1, CHUNK):
        chunk = torch.cat([bos, ids[:, start:start + CHUNK], ids[:, -1:]], dim=1)
        if pad != eos:  # SD2 / SDXL's second tokenizer pad with "!", not with the end token
            full = (chunk[:, -2] != eos) & (chunk[:, -2] != pad)
            chunk[full, -1] = eos  # a chunk of caption up to its end closes with an end token
            empty = chunk[:, 1] == pad
            chunk[empty, 1] = eos  # a chunk past the caption's end reads <start> <end> <pad>…
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def token_ids(tokenizer, captions: list[str], max_tokens: int, device: torch.device) -> torch.Tensor:
    """[batch·chunks, 77] ids on the text encoder's device: the tokenizer makes them on the CPU,
    and a GPU encoder fed CPU ids fails at its first caption (the placement check catches it)."""
    return _ids(tokenizer, captions, max_tokens).flatten(0, 1).to(device)


def _join(hidden: torch.Tensor, batch: int) -> torch.Tensor:
    """[batch·chunks, 77, D] -> [batch, 2 + 75·chunks, D]: the chunks' states in a row, without the
    start and end states between chunks."""
    hidden = hidden.reshape(batch, -1, *hidden.shape[1:])
    if hidden.shape[1] == 1:
        return hidden[:, 0]
    inner = hidden[:, :, 1:-1].reshape(batch, -1, hidden.shape[-1])
    return torch.cat([hidden[:, 0, :1], inner, hidden[:, -1, -1:]], dim=1)


def _final_norm(text_encoder):
    return text_encoder.text_model.final_layer_norm if hasattr(text_encoder, "text_model") \
        else text_encoder.final_layer_norm


def sdxl_clip_skip(clip_skip: int) -> str:
    """The warning for a clip_skip SDXL ignores (kohya warns the same way)."""
    return (f"model.clip_skip = {clip_skip} does nothing for SDXL: SDXL always uses the penultimate layer of "
            "both text encoders (and the second one's pooled output), as kohya does")


def encode_text(models: Models, captions: list[str], clip_skip: int, max_tokens: int = CHUNK
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states for cross-attention, pooled embedding or None). SD1/2: the last layer, or
    an earlier one through the final layer norm with clip_skip. SDXL ignores clip_skip: both
    encoders' penultimate layers, concatenated, and the second encoder's pooled projection (of
    the first chunk, as kohya does). Captions past 75 tokens: see `_ids` and `_join`."""
    batch = len(captions)

    def ids(k: int) -> torch.Tensor:
        return token_ids(models.tokenizers[k], captions, max_tokens, models.text_encoders[k].device)

    if models.sdxl:
        first = models.text_encoders[0](ids(0), output_hidden_states=True)
        second = models.text_encoders[1](ids(1), output_hidden_states=True)
        pooled = second.text_embeds.reshape(batch, -1, second.text_embeds.shape[-1])[:, 0]
        return torch.cat([_join(first.hidden_states[-2], batch), _join(second.hidden_states[-2], batch)],
                         dim=-1), pooled
    text_encoder = models.text_encoders[0]
    out = text_encoder(ids(0), output_hidden_states=clip_skip > 1)
    if clip_skip > 1:
        return _join(_final_norm(text_encoder)(out.hidden_states[-clip_skip]), batch), None
    return _join(out[0], batch), None
