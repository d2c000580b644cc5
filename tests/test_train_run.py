"""train run / train resume end to end on a tiny SD1.5-shaped model at 64 px."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import make_demo_model as tiny_sd
from conftest import run, run_json, train, train_config as config, train_json


def weights(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_run_writes_a_kohya_file_and_resume_is_exact(tmp_path, base):
    whole = run_json("train", "run", config(tmp_path, base, "whole"))  # the console script, as a user runs it
    assert whole["step"] == 6 and whole["steps_per_epoch"] == 2
    out = tmp_path / "whole" / "out"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["kit-000002.safetensors", "kit.safetensors"]
    final, meta = weights(out / "kit.safetensors")
    assert meta["ss_network_dim"] == "4" and meta["ss_base_model_version"] == "sd_v1"
    assert json.loads(meta["ss_tag_frequency"])["2_kitchan"]["smile"] == 2
    assert json.loads(meta["ss_dataset_dirs"])["2_kitchan"] == {"n_repeats": 2, "img_count": 2}
    assert all(np.isfinite(l) for l in whole["losses"])
    assert len((out / "log.jsonl").read_text().splitlines()) == 6

    parts = config(tmp_path, base, "parts")
    first = train_json("run", parts, "--stop-at", "2")
    assert first["step"] == 2
    out2 = tmp_path / "parts" / "out"
    assert train_json("resume", out2, "--stop-at", "4")["step"] == 4  # a second resume too
    assert train_json("resume", out2)["step"] == 6
    resumed, _ = weights(out2 / "kit.safetensors")
    for key in final:
        assert torch.equal(final[key], resumed[key]), key


def test_loss_falls_when_overfitting_and_diffusers_loads_the_result(tmp_path, base):
    result = train_json("run", config(tmp_path, base, "fit"), "--set", "training.max_steps=40",
                      "--set", "training.log_every_n_steps=10", "--set", "loss.min_snr_gamma=5.0")
    losses = result["losses"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    before = tiny_sd.sample(pipe)
    pipe.load_lora_weights(str(tmp_path / "fit" / "out" / "kit.safetensors"))
    assert np.abs(tiny_sd.sample(pipe) - before).max() > 1e-3


def test_resume_needs_a_state(tmp_path):
    run("train", "resume", tmp_path, check=2)


def test_settings_not_implemented_yet_are_refused_not_ignored(tmp_path, base):
    proc = train("run", config(tmp_path, base, "x"), "--set", "data.flip_aug=true",
               "--set", "loss.adaptive_noise_scale=0.1", check=2)
    assert "data.flip_aug = True" in proc.stderr and "adaptive_noise_scale" in proc.stderr


def test_sdxl_lora_with_sgm_names_loads_in_diffusers(tmp_path, base_xl):
    result = train_json("run", config(tmp_path, base_xl, "xl"), "--set", "model.family=\"auto\"",
                      "--set", "training.max_steps=2")
    assert result["step"] == 2 and all(np.isfinite(l) for l in result["losses"])
    tensors, meta = weights(tmp_path / "xl" / "out" / "kit.safetensors")
    modules = {k.rsplit(".", 2)[0] for k in tensors}
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in modules
    assert "lora_te2_text_model_encoder_layers_1_mlp_fc2" in modules
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in modules
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k" in modules
    assert not any(m.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_unet_mid_block"))
                   for m in modules)
    from diffusers import StableDiffusionXLPipeline
    pipe = StableDiffusionXLPipeline.from_pretrained(base_xl)
    before = tiny_sd.sample(pipe)
    pipe.load_lora_weights(str(tmp_path / "xl" / "out" / "kit.safetensors"))
    wrapped = sum(1 for model in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
                  for name, _ in model.named_modules() if name.endswith("lora_A"))
    assert wrapped == len(modules)
    assert np.abs(tiny_sd.sample(pipe) - before).max() > 0


def test_gradient_checkpointing_changes_memory_not_results(tmp_path, base_xl):
    plain = train_json("run", config(tmp_path, base_xl, "a"), "--set", "training.max_steps=2")
    checkpointed = train_json("run", config(tmp_path, base_xl, "b"), "--set", "training.max_steps=2",
                            "--set", "training.gradient_checkpointing=true")
    assert plain["losses"] == checkpointed["losses"]
    a, _ = weights(tmp_path / "a" / "out" / "kit.safetensors")
    b, _ = weights(tmp_path / "b" / "out" / "kit.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("optimizer,lr", [("prodigy", 1.0), ("dadaptadam", 1.0), ("lion", 1e-4), ("adafactor", 1e-4)])
def test_optimizers(tmp_path, base, optimizer, lr):
    result = train_json("run", config(tmp_path, base, optimizer), "--set", "training.max_steps=2",
                      "--set", f'optimizer.type="{optimizer}"', "--set", f"optimizer.learning_rate={lr}")
    assert result["step"] == 2 and all(np.isfinite(l) for l in result["losses"])
    tensors, _ = weights(tmp_path / optimizer / "out" / "kit.safetensors")
    assert any(float(t.abs().sum()) > 0 for k, t in tensors.items() if "lora_up" in k)  # it trained


def test_accumulation_resume_and_step_saves(tmp_path, base):
    extra = ["--set", "data.batch_size=1", "--set", "training.gradient_accumulation_steps=2",
             "--set", "saving.every_n_steps=1", "--set", "saving.keep_last_n=2", "--set", "saving.every_n_epochs=0"]
    whole = train_json("run", config(tmp_path, base, "w"), *extra)
    assert whole["steps_per_epoch"] == 2  # 2 images x 2 repeats, batch 1, 2 batches per step
    out = tmp_path / "w" / "out"
    assert sorted(p.name for p in out.glob("kit-*.safetensors")) == ["kit-step00000004.safetensors",
                                                                     "kit-step00000005.safetensors"]
    parts = config(tmp_path, base, "p")
    train_json("run", parts, *extra, "--stop-at", "3")
    train_json("resume", tmp_path / "p" / "out")
    a, _ = weights(out / "kit.safetensors")
    b, _ = weights(tmp_path / "p" / "out" / "kit.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_noise_and_snr_options(tmp_path, base):
    from train import loss as L

    g = torch.Generator().manual_seed(0)
    pyramid = L.multires_noise(torch.randn(2, 4, 16, 16, generator=g), 6, 0.3, g)
    assert pyramid.shape == (2, 4, 16, 16) and abs(float(pyramid.std()) - 1) < 1e-4
    result = train_json("run", config(tmp_path, base, "n"), "--set", "training.max_steps=2",
                      "--set", "loss.zero_terminal_snr=true", "--set", "model.v_parameterization=true",
                      "--set", "loss.min_snr_gamma=5.0", "--set", "loss.multires_noise_iterations=4",
                      "--set", "loss.ip_noise_gamma=0.1", "--set", "loss.noise_offset=0.05")
    assert result["step"] == 2 and all(np.isfinite(l) for l in result["losses"])
    from train.config import load
    from train.loop import load_models
    cfg = load(config(tmp_path, base, "z"), ["loss.zero_terminal_snr=true"])
    assert float(load_models(cfg).scheduler.alphas_cumprod[-1]) < 1e-6  # the last step is pure noise
