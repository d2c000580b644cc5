"""Single-file checkpoints (`model.base = "model.safetensors"`, the format most models are shared
in): the family read from the file's keys, the diffusers components built with configs this
project ships (no hub access, no guessing), and the weights converted by diffusers' own loader.

`.ckpt` files are pickles, which can run code when loaded: they load only with
`model.allow_pickle = true`, and are then converted once to a `.safetensors` copy in lorakit's
cache (keyed by the file's size and time), so later runs read no pickle.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from lorakit.errors import UserError
from lorakit.fsio import atomic_path, cache_dir

MERGES = Path(__file__).parent / "model_configs" / "clip_merges.txt.gz"

# The real architectures (diffusers config names). UNet defaults are SD1.x's.
_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
               projection_dim=768, hidden_act="quick_gelu")
_OPEN_CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                    projection_dim=512, hidden_act="gelu")  # SD2 drops the last of 24 layers
_OPEN_CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                    projection_dim=1280, hidden_act="gelu")
_VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2, sample_size=512,
            scaling_factor=0.18215)
_SD2_UNET = dict(attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True)
_SDXL_UNET = dict(
    sample_size=128, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], block_out_channels=[320, 640, 1280],
    transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816)
_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)

# name -> (pipeline class, {component folder: config}, text-encoder classes, the pad token of each tokenizer)
CONFIGS = {
    "sd1": ("StableDiffusionPipeline", {"unet": dict(cross_attention_dim=768, sample_size=64), "vae": _VAE,
                                        "text_encoder": _CLIP_L}, ["CLIPTextModel"], ["<|endoftext|>"]),
    "sd2": ("StableDiffusionPipeline", {"unet": dict(_SD2_UNET, sample_size=64), "vae": _VAE,
                                        "text_encoder": _OPEN_CLIP_H}, ["CLIPTextModel"], ["!"]),
    "sd2-v": ("StableDiffusionPipeline", {"unet": dict(_SD2_UNET, sample_size=96), "vae": dict(_VAE, sample_size=768),
                                          "text_encoder": _OPEN_CLIP_H}, ["CLIPTextModel"], ["!"]),
    "sdxl": ("StableDiffusionXLPipeline", {"unet": _SDXL_UNET, "vae": dict(_VAE, sample_size=1024, scaling_factor=0.13025,
                                                                           force_upcast=True),
                                           "text_encoder": _CLIP_L, "text_encoder_2": _OPEN_CLIP_G},
             ["CLIPTextModel", "CLIPTextModelWithProjection"], ["<|endoftext|>", "!"]),
}


def family_of(keys) -> str:
    """sd1, sd2 or sdxl from a checkpoint's keys (its text encoders tell them apart)."""
    keys = list(keys)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        raise UserError("the checkpoint has a UNet but no text encoder: lorakit needs a full SD checkpoint")
    raise UserError("not a Stable Diffusion checkpoint (no model.diffusion_model / cond_stage_model / conditioner keys)")


def _vocab(merges: str) -> dict[str, int]:
    """CLIP's vocabulary: the 256 byte symbols, the same ending a word, each merge, then the start
    and end tokens (the order CLIP's tokenizer builds it in)."""
    byte_symbols = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = 0
    symbols = []
    for b in range(256):  # GPT-2's byte-to-unicode table: printable bytes as themselves
        if b in byte_symbols:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    order = byte_symbols + [b for b in range(256) if b not in byte_symbols]
    ordered = [symbols[b] for b in order]
    words = ordered + [s + "</w>" for s in ordered]
    words += ["".join(m.split()) for m in merges.splitlines()[1:] if m]  # after the #version line
    words += ["<|startoftext|>", "<|endoftext|>"]
    return {w: i for i, w in enumerate(words)}


def config_folder(name: str) -> Path:
    """A diffusers-layout folder of configs and tokenizers for `name`, written once to the cache."""
    pipeline, components, encoders, pads = CONFIGS[name]
    packed = MERGES.read_bytes()
    digest = hashlib.sha256(json.dumps(CONFIGS[name], sort_keys=True).encode() + packed).hexdigest()[:12]
    folder = cache_dir("model_configs", f"{name}-{digest}")
    if (folder / "model_index.json").is_file():
        return folder
    merges = gzip.decompress(packed).decode("utf-8")
    vocab = json.dumps(_vocab(merges))
    index = {"_class_name": pipeline, "_diffusers_version": "0.30.0", "scheduler": ["diffusers", "DDIMScheduler"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    if pipeline == "StableDiffusionPipeline":
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    for k, (encoder, pad) in enumerate(zip(encoders, pads)):
        suffix = "" if k == 0 else f"_{k + 1}"
        index[f"text_encoder{suffix}"] = ["transformers", encoder]
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
        tok = folder / f"tokenizer{suffix}"
        tok.mkdir(parents=True, exist_ok=True)
        (tok / "vocab.json").write_text(vocab, encoding="utf-8")
        (tok / "merges.txt").write_text(merges, encoding="utf-8")
        (tok / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad}))
    for part, cfg in components.items():
        (folder / part).mkdir(parents=True, exist_ok=True)
        (folder / part / "config.json").write_text(_full_config(part, cfg, encoders, pads))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(dict(_SCHEDULER, _class_name="DDIMScheduler")))
    with atomic_path(folder / "model_index.json") as tmp:  # last: its presence marks the folder complete
        tmp.write_text(json.dumps(index, indent=1))
    return folder


def _full_config(part: str, cfg: dict, encoders: list[str], pads: list[str]) -> str:
    """The complete config of a component: diffusers' single-file conversion reads every field
    (layers_per_block…), not only the ones that differ from the class defaults."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    if part.startswith("text_encoder"):
        k = 0 if part == "text_encoder" else 1
        return CLIPTextConfig(**cfg, vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                              eos_token_id=49407, pad_token_id=0 if pads[k] == "!" else 49407,
                              architectures=[encoders[k]]).to_json_string()
    with torch.device("meta"):  # shapes only: no memory, no time
        model = (UNet2DConditionModel if part == "unet" else AutoencoderKL).from_config(cfg)
    return model.to_json_string()


def _from_pickle(path: Path, allow: bool) -> Path:
    """A .ckpt's weights as a cached .safetensors (converted once)."""
    if not allow:
        raise UserError(f"{path}: a .ckpt file is a pickle, and loading one can run code hidden in it. "
                        "Prefer a .safetensors copy; to load this one anyway set model.allow_pickle = true")
    import torch
    from safetensors.torch import save_file

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir("checkpoints", f"{path.stem}-{key}.safetensors")
    if not target.is_file():
        state = torch.load(path, map_location="cpu", weights_only=False)  # the user opted in
        while isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp))
    return target


def load_single_file(path: Path, family: str, v_prediction: bool, allow_pickle: bool, configs: str | None = None):
    """(family, tokenizers, text encoders, vae, unet) from one checkpoint file; `configs`: a diffusers-layout
    folder to use instead of the shipped configs (another architecture, e.g. an inpainting UNet)."""
    import diffusers
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.suffix == ".ckpt":
        path = _from_pickle(path, allow_pickle)
    try:
        with safe_open(str(path), "pt") as f:
            found = family_of(f.keys())
    except SafetensorError as exc:
        raise UserError(f"{path}: not a readable .safetensors file ({exc})") from None
    if family not in ("auto", found):
        raise UserError(f"{path} is an {found} checkpoint, but model.family = {family!r}")
    name = "sd2-v" if found == "sd2" and v_prediction else found
    pipeline_class = getattr(diffusers, CONFIGS[name][0])
    extra = {"safety_checker": None, "requires_safety_checker": False} if found != "sdxl" else {}
    folder = configs or str(config_folder(name))
    try:
        pipe = pipeline_class.from_single_file(str(path), config=folder, local_files_only=True, **extra)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:  # shapes or keys that do not fit the configs
        raise UserError(f"{path}: cannot load it as {name} with the configs in {folder}: "
                        f"{str(exc).splitlines()[0][:300]}") from None
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if found == "sdxl" else [])
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if found == "sdxl" else [])
    return found, tokenizers, encoders, pipe.vae, pipe.unet
