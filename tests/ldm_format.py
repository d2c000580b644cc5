"""Test helper: a diffusers SD1 pipeline's weights in the original (LDM) single-file layout, the
one A1111 and Civitai files use, so the single-file loader can be tested on a tiny model. The
reverse of the renames diffusers' loader makes (UNet blocks through train.naming's SGM paths)."""
import re
import torch
from train.naming import sgm_path


def _vae_key(key: str, n_up: int) -> str:
    k = key
    k = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}", k)
    k = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.attn_1.", k)
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", r"encoder.down.\1.block.\2", k)
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", k)
    k = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)", lambda m: f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}", k)
    k = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0", lambda m: f"decoder.up.{n_up - 1 - int(m[1])}.upsample", k)
    k = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    k = k.replace("attn_1.group_norm", "attn_1.norm").replace("attn_1.to_q", "attn_1.q").replace("attn_1.to_k", "attn_1.k")
    k = k.replace("attn_1.to_v", "attn_1.v").replace("attn_1.to_out.0", "attn_1.proj_out")
    return "first_stage_model." + k


def _unet_key(key: str, up_has_attention) -> str:
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    module, _, param = key.rpartition(".")
    module = fixed.get(module) or sgm_path(module, up_has_attention)
    return f"model.diffusion_model.{module}.{param}"


def ldm_state_dict(pipe) -> dict:
    out = {}
    up_has_attention = {i: hasattr(b, "attentions") for i, b in enumerate(pipe.unet.up_blocks)}
    for k, v in pipe.unet.state_dict().items():
        out[_unet_key(k, up_has_attention)] = v
    n_up = len(pipe.vae.decoder.up_blocks)
    for k, v in pipe.vae.state_dict().items():
        key = _vae_key(k, n_up)
        if ".mid.attn_1." in key and key.endswith("weight") and v.dim() == 2:
            v = v[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out[key] = v
    for k, v in pipe.text_encoder.state_dict().items():
        out["cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    return {k: v.contiguous() for k, v in out.items()}
