"""Test helper: a diffusers pipeline's weights in the original single-file layouts A1111 and
Civitai files use (LDM for SD1 and SD2, SGM for SDXL), so the single-file loader can be tested on
tiny models. The reverse of the renames diffusers' loader makes (UNet blocks through
train.naming's SGM paths, SD2's and SDXL's second text encoder in OpenCLIP's layout)."""
import re

import torch

from lorakit.train.naming import sgm_path


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
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    module, _, param = key.rpartition(".")
    module = fixed.get(module) or sgm_path(module, up_has_attention)
    return f"model.diffusion_model.{module}.{param}"


def ldm_state_dict(pipe, open_clip: bool = False) -> dict:
    """`open_clip`: the text encoder in SD2's layout (cond_stage_model.model)."""
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
    sdxl = hasattr(pipe, "text_encoder_2")
    if sdxl:
        out.update(_hf_clip(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        out.update(_open_clip(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    elif open_clip:
        out.update(_open_clip(pipe.text_encoder, "cond_stage_model.model."))
    else:
        out.update(_hf_clip(pipe.text_encoder, "cond_stage_model.transformer."))
    return {k: v.contiguous() for k, v in out.items()}


def _hf_clip(encoder, prefix: str) -> dict:
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in encoder.state_dict().items()}


_OPEN_CLIP_PARTS = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def _open_clip(encoder, prefix: str) -> dict:
    """A transformers CLIP text encoder in OpenCLIP's layout: q, k and v in one in_proj, the
    projection as a transposed matrix."""
    out, qkv = {}, {}
    for k, v in encoder.state_dict().items():
        k = k.removeprefix("text_model.")
        layer = re.match(r"encoder\.layers\.(\d+)\.(.*)\.(weight|bias)$", k)
        if k == "text_projection.weight":
            out["text_projection"] = v.T
        elif k == "embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k.startswith("final_layer_norm."):
            out["ln_final." + k.rpartition(".")[2]] = v
        elif layer and layer[2] in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((layer[1], layer[3]), {})[layer[2][10]] = v
        elif layer:
            out[f"transformer.resblocks.{layer[1]}.{_OPEN_CLIP_PARTS[layer[2]]}.{layer[3]}"] = v
        elif k != "embeddings.position_ids":
            raise KeyError(f"no OpenCLIP name for {k}")
    for (n, kind), parts in qkv.items():
        out[f"transformer.resblocks.{n}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return {prefix + k: v for k, v in out.items()}
