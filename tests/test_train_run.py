"""train run / train resume end to end on a tiny SD1.5-shaped model at 64 px."""

import json

import make_demo_model as tiny_sd
import numpy as np
import pytest
import torch
from conftest import run, run_json, train, train_json
from conftest import train_config as config
from PIL import Image
from safetensors import safe_open


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
    assert np.isfinite(whole["losses"]).all()
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


def test_settings_that_would_do_nothing_are_refused_not_ignored(tmp_path, base):
    proc = train("run", config(tmp_path, base, "y"), "--set", "loss.adaptive_noise_scale=0.1", check=2)
    assert "adaptive_noise_scale adds to loss.noise_offset" in proc.stderr


def test_sdxl_lora_with_sgm_names_loads_in_diffusers(tmp_path, base_xl):
    result = train_json("run", config(tmp_path, base_xl, "xl"), "--set", "model.family=\"auto\"",
                      "--set", "training.max_steps=2")
    assert result["step"] == 2 and np.isfinite(result["losses"]).all()
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
    assert result["step"] == 2 and np.isfinite(result["losses"]).all()
    tensors, _ = weights(tmp_path / optimizer / "out" / "kit.safetensors")
    assert any(float(t.abs().sum()) > 0 for k, t in tensors.items() if "lora_up" in k)  # it trained


def test_max_grad_norm_0_turns_clipping_off_as_in_kohya(tmp_path, base):
    runs = {}
    for name, norm in (("off", "0"), ("unreachable", "1e9"), ("tight", "1e-6")):
        train_json("run", config(tmp_path, base, name), "--set", "training.max_steps=2",
                   "--set", f"loss.max_grad_norm={norm}")
        runs[name], _ = weights(tmp_path / name / "out" / "kit.safetensors")
    ups = [k for k in runs["off"] if "lora_up" in k]
    assert all(torch.equal(runs["off"][k], runs["unreachable"][k]) for k in runs["off"])  # 0: not clipped
    assert any(not torch.equal(runs["off"][k], runs["tight"][k]) for k in ups)  # a real norm clips
    assert any(float(runs["off"][k].abs().sum()) > 0 for k in ups)  # and 0 did not zero the step


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
    from lorakit.train import loss as L

    g = torch.Generator().manual_seed(0)
    pyramid = L.multires_noise(torch.randn(2, 4, 16, 16, generator=g), 6, 0.3, g)
    assert pyramid.shape == (2, 4, 16, 16) and abs(float(pyramid.std()) - 1) < 1e-4
    result = train_json("run", config(tmp_path, base, "n"), "--set", "training.max_steps=2",
                      "--set", "loss.zero_terminal_snr=true", "--set", "model.v_parameterization=true",
                      "--set", "loss.min_snr_gamma=5.0", "--set", "loss.multires_noise_iterations=4",
                      "--set", "loss.ip_noise_gamma=0.1", "--set", "loss.noise_offset=0.05",
                      "--set", "loss.adaptive_noise_scale=0.01")
    assert result["step"] == 2 and np.isfinite(result["losses"]).all()
    from lorakit.train.config_toml import load
    from lorakit.train.models import load_models
    cfg = load(config(tmp_path, base, "z"), ["loss.zero_terminal_snr=true"])
    assert float(load_models(cfg).scheduler.alphas_cumprod[-1]) < 1e-6  # the last step is pure noise


def test_rank_and_module_dropout_and_max_norm(tmp_path, base):
    """Dropouts change the result, stay finite and resume exactly (their draws are seeded per
    step); scale_weight_norms keeps every module's change within the norm. The captions have
    several lines under enable_wildcard: the line each epoch trains resumes exactly too."""
    extra = ["--set", "network.rank_dropout=0.3", "--set", "network.module_dropout=0.2", "--set", "network.dropout=0.1",
             "--set", "network.scale_weight_norms=0.05", "--set", "optimizer.learning_rate=1e-2",
             "--set", "data.enable_wildcard=true"]

    def lines(path):  # a sentence line under each caption, and a wildcard
        captions = sorted((path.parent / path.stem / "dataset" / "2_kitchan").glob("*.txt"))
        assert len(captions) == 2
        for caption in captions:
            caption.write_text(caption.read_text() + "a {small|tiny} cat, sitting on a chair.\n")
        return path
    whole = train_json("run", lines(config(tmp_path, base, "d")), *extra)
    assert np.isfinite(whole["losses"]).all()
    out = tmp_path / "d" / "out"
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(line["keys_scaled"] > 0 for line in logged)  # lr 1e-2 pushes past the norm
    tensors, meta = weights(out / "kit.safetensors")
    assert json.loads(meta["ss_network_args"]) == {"rank_dropout": 0.3, "module_dropout": 0.2}
    assert meta["ss_scale_weight_norms"] == "0.05"
    for module in {k.rsplit(".", 2)[0] for k in tensors}:
        down, up = tensors[f"{module}.lora_down.weight"].float(), tensors[f"{module}.lora_up.weight"].float()
        delta = up.flatten(1) @ down.flatten(1) if down.dim() == 2 else up[:, :, 0, 0] @ down.flatten(1)
        assert float(delta.norm()) * float(tensors[f"{module}.alpha"]) / down.shape[0] <= 0.05 * 1.01
    train_json("run", lines(config(tmp_path, base, "e")), *extra, "--stop-at", "3")
    resumed = train_json("resume", tmp_path / "e" / "out")
    assert resumed["losses"] == whole["losses"][3:]
    plain = train_json("run", config(tmp_path, base, "f"), "--set", "optimizer.learning_rate=1e-2")
    assert plain["losses"] != whole["losses"]


def test_augmentations(tmp_path, base):
    """flip_aug caches both orientations; random_crop and color_aug need per-step encoding and
    say so; a run with all three trains."""
    import random

    from diffusers import AutoencoderKL

    from lorakit.train.config_toml import load
    from lorakit.train.data import load_items, pixels
    from lorakit.train.latents import Latents

    cfg = load(config(tmp_path, base, "aug"), ["data.flip_aug=true"])
    items = load_items(cfg)
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    latents = Latents(items, vae, torch.device("cpu"), cfg)
    assert sorted(latents.cache) == [(0, False), (0, True), (1, False), (1, True)]
    image, _, _ = pixels(items[0])
    with torch.no_grad():
        mirrored = vae.encode(image.flip(-1)[None]).latent_dist.mean[0] * vae.config.scaling_factor
    assert torch.allclose(latents.cache[0, True][0], mirrored, atol=1e-5)
    chosen = [latents.batch([0], random.Random(s))[0][0] for s in range(8)]
    assert any(torch.equal(c, latents.cache[0, True][0]) for c in chosen)
    assert any(torch.equal(c, latents.cache[0, False][0]) for c in chosen)

    wide = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 160, 3), dtype=np.uint8)).save(wide)
    item = items[0].__class__(wide, "", (64, 64), 1, False)
    crops = {pixels(item, random.Random(s), random_crop=True)[2] for s in range(6)}
    assert len(crops) > 1 and all(top == 0 and 0 <= left <= 96 for top, left in crops)
    plain = pixels(item)[0]
    shifted = [pixels(item, random.Random(s), color_aug=True)[0] for s in range(12)]
    changed = [float((s - plain).abs().mean()) for s in shifted if not torch.equal(s, plain)]
    assert changed and max(changed) < 0.1  # sometimes, and weakly

    proc = train("run", config(tmp_path, base, "crop"), "--set", "data.random_crop=true", check=2)
    assert "set data.cache_latents = false" in proc.stderr
    result = train_json("run", config(tmp_path, base, "all"), "--set", "data.random_crop=true", "--set",
                        "data.color_aug=true", "--set", "data.flip_aug=true", "--set", "data.cache_latents=false",
                        "--set", "training.max_steps=2")
    assert result["step"] == 2 and np.isfinite(result["losses"]).all()


def test_text_encoder_output_cache(tmp_path, base_xl):
    """Captions encoded once give the run an uncached one gives; refused where they would not."""
    frozen = ["--set", "network.train_text_encoder=false", "--set", "data.shuffle_caption=false",
              "--set", "training.max_steps=2", "--set", 'model.family="auto"']
    plain = train_json("run", config(tmp_path, base_xl, "p"), *frozen)
    cached = train_json("run", config(tmp_path, base_xl, "c"), *frozen, "--set", "data.cache_text_encoder_outputs=true")
    assert np.allclose(plain["losses"], cached["losses"], rtol=1e-5)
    a, _ = weights(tmp_path / "p" / "out" / "kit.safetensors")
    b, _ = weights(tmp_path / "c" / "out" / "kit.safetensors")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)
    proc = train("run", config(tmp_path, base_xl, "r"), "--set", "data.cache_text_encoder_outputs=true", check=2)
    assert "a text-encoder LoRA trains, data.shuffle_caption" in proc.stderr


def test_validation_loss_on_held_out_images(tmp_path, base):
    """data.validation_split holds images out of training; their loss at fixed noise and
    timesteps is logged at each epoch end and falls as the LoRA fits the (identical) data."""
    root = tmp_path / "val"
    cfg = config(tmp_path, base, "val")
    folder = root / "dataset" / "2_kitchan"
    for k in range(2, 4):  # the same two pictures again: what is held out is like what trains
        (folder / f"{k}.png").write_bytes((folder / f"{k - 2}.png").read_bytes())
        (folder / f"{k}.txt").write_text((folder / f"{k - 2}.txt").read_text())
    plan = train_json("plan", cfg, "--set", "data.validation_split=0.25")
    assert len(plan["held_out"]) == 1 and plan["steps_per_epoch"] == 3  # 3 images x 2 repeats / batch 2
    args = ["--set", "data.validation_split=0.25", "--set", "training.max_steps=30", "--set", "optimizer.learning_rate=3e-3",
            "--set", "training.validate_every_n_epochs=3", "--set", "training.log_every_n_steps=10"]
    result = train_json("run", cfg, *args)
    assert result["held_out"] == plan["held_out"] and result["steps_per_epoch"] == 3
    assert len(result["val_losses"]) == 3 and result["val_losses"][-1] < result["val_losses"][0]
    log = [json.loads(line) for line in (root / "out" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log if "val_loss" in line] == [9, 18, 27]
    frozen = train_json("run", cfg, *args, "--set", "optimizer.learning_rate=0", "--set", "training.max_steps=9",
                        "--set", "training.validate_every_n_epochs=1", "--set", 'output.dir="' + str(root / "o2") + '"')
    values = frozen["val_losses"]  # fixed draws: an unchanged network gives the very same loss
    assert len(values) == 3 and values[0] == values[1] == values[2]
    proc = train("run", cfg, "--set", "data.validation_split=0.9", check=2)
    assert "would hold out all" in proc.stderr


def test_accelerate_launch_on_two_processes_trains_what_accumulation_does(tmp_path, base):
    """`accelerate launch` with 2 processes (gloo on this CPU machine): each trains half of every
    step's batches and the gradients are summed, so the LoRA equals a 1-process run with twice
    the gradient accumulation; only the first process writes."""
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    args = ["--set", "data.batch_size=1", "--set", 'saving.precision="fp32"', "--set", "saving.every_n_epochs=0"]
    two = config(tmp_path, base, "two")
    proc = subprocess.run([str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           str(bin_dir / "train"), "run", str(two), *args, "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)  # one report: the second process prints nothing
    assert result["steps_per_epoch"] == 2 and result["step"] == 6  # 4 batches a epoch, 2 per step
    one = train_json("run", config(tmp_path, base, "one"), *args, "--set", "training.gradient_accumulation_steps=2")
    assert one["steps_per_epoch"] == 2
    ours, _ = weights(tmp_path / "two" / "out" / "kit.safetensors")
    single, _ = weights(tmp_path / "one" / "out" / "kit.safetensors")
    for key in single:  # equal up to the order of float sums (measured: 2e-6 at most, weights ~3e-3)
        assert torch.allclose(ours[key], single[key], rtol=1e-3, atol=1e-5), key
    assert any(single[k].abs().max() > 1e-3 for k in single if k.endswith("lora_up.weight"))  # it trained
    assert len((tmp_path / "two" / "out" / "log.jsonl").read_text().splitlines()) == 6  # one process logged
