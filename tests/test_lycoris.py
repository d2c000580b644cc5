"""LyCORIS networks (lycoris-lora's modules on our kohya-named targets) and our DyLoRA, trained end
to end on the tiny SD1.5-shaped model: the file has the keys A1111 and ComfyUI read, reloads to
the same model output, and for LoHa, LoKr and DyLoRA the file's tensors, merged with the formulas
the UIs use (written out here independently of lycoris), give that output too."""

import json

import numpy as np
import pytest
import torch
from conftest import train, train_config, train_json
from safetensors import safe_open

from lorakit.train.config_toml import load
from lorakit.train.lycoris_net import LycorisNetwork
from lorakit.train.models import encode_text, load_models
from lorakit.train.naming import text_encoder_targets, unet_targets
from lorakit.train.network import LoRANetwork

# the tensors each algorithm's modules hold in the file (A1111's and ComfyUI's key suffixes)
SUFFIXES = {
    "loha": {"alpha", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"},
    "lokr": {"alpha", "lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b"},
    "ia3": {"weight", "on_input"},
    "dylora": {"alpha", "lora_down.weight", "lora_up.weight"},
    "glora": {"alpha", "a1.weight", "a2.weight", "b1.weight", "b2.weight"},
    "diag-oft": {"alpha", "oft_blocks"},
}


def _targets(models):
    return unet_targets(models.unet, locon=True) + text_encoder_targets(models.text_encoders[0], "lora_te")


def _output(models, seed=0):
    """The UNet's prediction for fixed latents, timesteps and prompts: what a LoRA changes."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        text, _ = encode_text(models, ["kitchan, red, smile", "a blue thing"], 1)
        return models.unet(latents, torch.tensor([100, 700]), text).sample


def _tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _delta(algo: str, t: dict, shape) -> torch.Tensor:
    """ΔW of one module from its file tensors, as ComfyUI's and A1111's loaders compute it."""
    t = {k: v.float() for k, v in t.items()}
    if algo == "loha":
        dim = t["hada_w1_b"].shape[0]
        delta = (t["hada_w1_a"] @ t["hada_w1_b"].flatten(1)) * (t["hada_w2_a"] @ t["hada_w2_b"].flatten(1))
        return delta.reshape(shape) * float(t["alpha"]) / dim
    if algo == "lokr":
        scale, w2 = 1.0, t.get("lokr_w2")
        if w2 is None:  # decomposed: alpha / rank applies
            w2 = t["lokr_w2_a"] @ t["lokr_w2_b"].flatten(1)
            scale = float(t["alpha"]) / t["lokr_w2_b"].shape[0]
        w1 = t["lokr_w1"]
        if len(shape) == 4:
            w2 = w2.reshape(w2.shape[0], -1, *shape[2:]) if w2.dim() == 2 else w2
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2).reshape(shape) * scale
    # dylora: a plain LoRA in the file
    up, down = t["lora_up.weight"].flatten(1), t["lora_down.weight"].flatten(1)
    return (up @ down).reshape(shape) * float(t["alpha"]) / down.shape[0]


@pytest.mark.parametrize("algo", sorted(SUFFIXES))
def test_lycoris_trains_saves_and_reloads(tmp_path, base, algo):
    from lorakit.train.loop import train
    from lorakit.train.setup import setup

    cfg = load(train_config(tmp_path, base, "ly"), [
        f'network.module="{algo}"', "network.conv_dim=4", *(["network.args={unit = 2}"] if algo == "dylora" else []), "network.conv_alpha=2.0", "training.max_steps=4",
        "optimizer.learning_rate=0.01", 'saving.precision="fp32"', "saving.every_n_epochs=0"])
    seen = {}

    def inspect(models, network, embeddings):
        network.eval()
        seen["trained"] = _output(models)
        network.detach()
        seen["base"] = _output(models)
        seen["modules"] = len(network.loras)

    run = setup(cfg, log=lambda line: None)
    result = train(run)
    inspect(run.models, run.network, run.embeddings)
    assert all(np.isfinite(result["losses"]))
    tensors, meta = _tensors(tmp_path / "ly" / "out" / "kit.safetensors")
    if algo == "dylora":
        assert meta["ss_network_module"] == "networks.dylora" and json.loads(meta["ss_network_args"])["unit"] == 2
    else:
        assert meta["ss_network_module"] == "lycoris.kohya" and json.loads(meta["ss_network_args"])["algo"] == algo
    names = {k.split(".", 1)[0] for k in tensors}
    fresh = load_models(cfg)
    targets = {t.name: t for t in _targets(fresh)}
    assert len(names) == seen["modules"] and names <= set(targets)  # every module under a kohya name
    assert any(n.startswith("lora_unet_down_blocks_0_resnets_0_conv1") for n in names)  # 3x3: conv rank
    assert {k.split(".", 1)[1] for k in tensors} <= SUFFIXES[algo]
    assert (seen["trained"] - seen["base"]).abs().max() > 1e-4  # the network changes the output

    # reloaded into the same modules on a fresh model: the same output
    network = LoRANetwork(list(targets.values()), 4, 4.0, 4, 2.0, unit=2) if algo == "dylora" else \
        LycorisNetwork(algo, list(targets.values()), 4, 4.0, 4, 2.0)
    for module in network.loras:
        module.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items()
                                if k.split(".", 1)[0] == module.lora_name})
    network.attach()
    network.eval()
    assert torch.allclose(_output(fresh), seen["trained"], atol=1e-5)

    if algo in ("loha", "lokr", "dylora"):  # merged by the UIs' formulas, without lycoris
        network.detach()
        with torch.no_grad():
            for name in names:
                weight = targets[name].module.weight
                weight += _delta(algo, {k.split(".", 1)[1]: v for k, v in tensors.items()
                                        if k.split(".", 1)[0] == name}, weight.shape)
        assert torch.allclose(_output(fresh), seen["trained"], atol=1e-4)


def test_lycoris_settings_are_checked_before_a_run(tmp_path, base):
    cfg = train_config(tmp_path, base, "bad")
    proc = train("plan", cfg, "--set", 'network.module="loha"', "--set", "network.args={use_tuker = true}", check=2)
    assert "unknown setting(s) use_tuker for loha" in proc.stderr
    proc = train("plan", cfg, "--set", "network.args={factor = 4}", check=2)  # lokr's, on a plain LoRA
    assert "unknown setting(s) factor for lora" in proc.stderr
    for command in ("plan", "run"):
        proc = train(command, cfg, "--set", 'network.module="dylora"', "--set", "network.args={unit = 3}", check=2)
        assert "multiples of it" in proc.stderr


def test_dylora_trains_one_block_per_step_and_diffusers_loads_it(tmp_path, base):
    """Each training forward uses a prefix of the ranks and trains only its last block."""
    import make_demo_model as tiny_sd

    pipe = tiny_sd.pipeline(tmp_path)
    targets = unet_targets(pipe.unet)[:1]
    net = LoRANetwork(targets, 4, 4.0, unit=1)
    net.attach()
    lora = net.loras[0]
    torch.nn.init.normal_(lora.lora_up.weight)
    x = torch.randn(1, lora.lora_down.in_channels if hasattr(lora.lora_down, "in_channels")
                    else lora.lora_down.in_features, *((4, 4) if isinstance(lora.lora_down, torch.nn.Conv2d) else ()))
    trained_rows = set()
    for seed in range(12):
        torch.manual_seed(seed)
        lora.zero_grad()
        targets[0].module(x).sum().backward()
        rows = lora.lora_down.weight.grad.flatten(1).abs().sum(1).nonzero().flatten().tolist()
        assert len(rows) == 1  # one block of one rank
        assert lora.lora_up.weight.grad.flatten(1)[:, rows[0] + 1:].abs().sum() == 0  # later ranks unused
        trained_rows.update(rows)
    assert trained_rows == {0, 1, 2, 3}

    result = train_json("run", train_config(tmp_path, base, "dy"), "--set", 'network.module="dylora"',
                        "--set", "training.max_steps=2")
    assert result["step"] == 2
    before = tiny_sd.sample(pipe)
    pipe.load_lora_weights(str(tmp_path / "dy" / "out" / "kit.safetensors"))  # a plain LoRA file
    assert np.abs(tiny_sd.sample(pipe) - before).max() > 0


def test_export_refuses_lycoris_for_diffusers(tmp_path, base):
    train_json("run", train_config(tmp_path, base, "ex"), "--set", 'network.module="loha"',
               "--set", "training.max_steps=2")
    out = tmp_path / "ex" / "out"
    proc = train("export", out / "kit.safetensors", "--for", "diffusers", check=2)
    assert "not loha" in proc.stderr
    train_json("export", out / "kit.safetensors", "--for", "comfyui")
    assert (out / "export-comfyui" / "loras" / "kit.safetensors").is_file()


def test_sdxl_lokr_uses_sgm_names(tmp_path, base_xl):
    result = train_json("run", train_config(tmp_path, base_xl, "xl"), "--set", 'model.family="auto"',
                        "--set", 'network.module="lokr"', "--set", "network.conv_dim=4", "--set", "training.max_steps=2")
    assert all(np.isfinite(result["losses"]))
    tensors, meta = _tensors(tmp_path / "xl" / "out" / "kit.safetensors")
    names = {k.split(".", 1)[0] for k in tensors}
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_input_blocks_3_0_op" in names  # a downsampler, with the conv rank
    assert any(n.startswith("lora_te1_text_model_encoder_layers_0") for n in names)
    assert any(n.startswith("lora_te2_text_model_encoder_layers_0") for n in names)
    assert not any(n.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks")) for n in names)
