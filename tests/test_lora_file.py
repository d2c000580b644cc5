"""Our kohya-format LoRA files on a tiny SD1.5-shaped pipeline: diffusers loads them with every
module wrapped, and its output equals the same LoRA merged into the weights by our own code."""

import make_demo_model as tiny_sd
import numpy as np
import pytest
import torch
from safetensors import safe_open

from lorakit.train.naming import text_encoder_targets, unet_targets
from lorakit.train.network import LoRANetwork, save


def _network(pipe, locon=False):
    targets = unet_targets(pipe.unet, locon=locon) + text_encoder_targets(pipe.text_encoder)
    net = LoRANetwork(targets, rank=4, alpha=2.0, conv_rank=2 if locon else 0, conv_alpha=1.0)
    torch.manual_seed(7)
    for lora in net.loras:  # as if trained: up starts at zero, which would change nothing
        torch.nn.init.normal_(lora.lora_up.weight, std=0.05)
    return net


def test_saved_file_layout(tmp_path):
    pipe = tiny_sd.pipeline(tmp_path)
    net = _network(pipe, locon=True)
    save(net, tmp_path / "kit.safetensors", {"ss_network_module": "networks.lora"})
    with safe_open(str(tmp_path / "kit.safetensors"), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        alpha = f.get_tensor("lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha")
        conv_down = f.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight")
        conv_up = f.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight")
        linear_down = f.get_tensor("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight")
    assert len(keys) == 3 * len(net.loras)
    assert alpha.dtype == torch.float32 and alpha.dim() == 0 and float(alpha) == 2.0
    assert conv_down.shape == (2, 32, 3, 3) and conv_up.shape == (32, 2, 1, 1)  # LoCon: conv rank
    assert linear_down.shape == (4, 32) and linear_down.dtype == torch.float16
    assert len(meta["sshs_model_hash"]) == 64 and len(meta["sshs_legacy_hash"]) == 8


def test_diffusers_loads_it_and_matches_our_merge(tmp_path):
    pytest.importorskip("peft")
    base = tiny_sd.sample(tiny_sd.pipeline(tmp_path))

    ours = tiny_sd.pipeline(tmp_path)
    net = _network(ours)
    save(net, tmp_path / "kit.safetensors", {}, dtype=torch.float32)
    net.merge()
    merged = tiny_sd.sample(ours)

    theirs = tiny_sd.pipeline(tmp_path)
    theirs.load_lora_weights(str(tmp_path / "kit.safetensors"))
    wrapped = sum(1 for name, _ in theirs.unet.named_modules() if name.endswith("lora_A")) + \
        sum(1 for name, _ in theirs.text_encoder.named_modules() if name.endswith("lora_A"))
    assert wrapped == len(net.loras)  # every module in the file was consumed
    loaded = tiny_sd.sample(theirs)

    assert np.abs(merged - base).max() > 0.01  # the LoRA changes the image (measured 0.03)
    assert np.abs(loaded - merged).max() < 1e-4  # diffusers applies it as our merge does (measured 2e-6)
