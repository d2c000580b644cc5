"""The trainer as one consistent program: plan and run count alike, the family is decided once,
fp16 resumes exactly, every closed choice is refused at load, seeds never collide, decode
workers act, and what is due at a step is decided in one place."""

import random
import threading
from pathlib import Path
from typing import get_args, get_type_hints

import make_demo_model as tiny_sd
import pytest
import torch
from conftest import train, train_json
from conftest import train_config as config
from PIL import Image
from safetensors import safe_open

from lorakit.train.config_toml import load


def _meta(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _folders(root: Path, names=("1_a", "1_b"), count=3, size=64) -> Path:
    for n, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        for k in range(count):
            Image.new("RGB", (size, size), (40 * k, 80 * n, 120)).save(folder / f"{k}.png")
            (folder / f"{k}.txt").write_text(f"{name[2:]}, picture {k}\n")
    return root


def test_plan_and_run_count_the_same_steps_when_folders_share_a_bucket(tmp_path, base):
    """Two 1_x folders of three 64 px images at batch 2: one bucket of six images, three batches
    (kohya pools a dataset's folders by bucket). The plan said four."""
    root = _folders(tmp_path / "data")
    args = ["--set", f'data.image_root="{root}"', "--set", "training.max_steps=3", "--set", "saving.every_n_epochs=0"]
    cfg = config(tmp_path, base, "share")
    plan = train_json("plan", cfg, *args)
    assert plan["steps_per_epoch"] == 3 and plan["buckets"] == {"64x64": 6}
    result = train_json("run", cfg, *args)
    assert result["steps_per_epoch"] == plan["steps_per_epoch"]


def test_datasets_batch_apart_with_their_own_batch_size(tmp_path):
    from lorakit.train.data import Item, epoch_batches, steps_per_epoch

    items = [Item(Path(f"{k}.png"), "", (64, 64), 1, False, batch_size=2 if k < 3 else 3, dataset=1 if k < 3 else 2)
             for k in range(6)]
    batches = epoch_batches(items, 0, 0)
    assert sorted(map(len, batches)) == [1, 2, 3]
    assert all(len({items[i].dataset for i in batch}) == 1 for batch in batches)
    assert steps_per_epoch(items, accumulation=2) == 2


@pytest.fixture(scope="module")
def base_sd2(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sd2")
    tiny_sd.pipeline_sd2(folder / "build").save_pretrained(folder / "model")
    return folder / "model"


@pytest.mark.parametrize("v", [False, True])
def test_sd2_is_found_under_auto_and_its_file_says_so(tmp_path, base_sd2, v):
    args = ["--set", 'model.family="auto"', "--set", f"model.v_parameterization={str(v).lower()}",
            "--set", "training.max_steps=1", "--set", "saving.every_n_epochs=0"]
    cfg = config(tmp_path, base_sd2, "sd2")
    assert train_json("plan", cfg, *args)["family"] == "sd2"  # from the model's config, not its name
    train_json("run", cfg, *args)
    _, meta = _meta(tmp_path / "sd2" / "out" / "kit.safetensors")
    assert meta["ss_v2"] == "True"
    assert meta["ss_base_model_version"] == ("sd_v2_v" if v else "sd_v2")
    assert meta["modelspec.architecture"] == ("stable-diffusion-v2-768-v/lora" if v else "stable-diffusion-v2-512/lora")
    assert meta["modelspec.prediction_type"] == ("v" if v else "epsilon")
    for command in ("plan", "run"):
        proc = train(command, cfg, "--set", 'model.family="sdxl"', check=2)
        assert "is an sd2 model, but model.family = 'sdxl'" in proc.stderr


def test_v_prediction_is_read_from_the_model_scheduler(tmp_path, base_sd2):
    """An SD2 768-v folder says v_prediction in its scheduler config: under model.family = "auto"
    and no v_parameterization, the run trains v and its file says so; an explicit false wins."""
    import json
    import shutil

    folder = tmp_path / "sd2-v"
    shutil.copytree(base_sd2, folder)
    scheduler = folder / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps({**json.loads(scheduler.read_text()), "prediction_type": "v_prediction"}))
    cfg = config(tmp_path, folder, "v")
    args = ["--set", 'model.family="auto"', "--set", "training.max_steps=1", "--set", "saving.every_n_epochs=0"]
    plan = train_json("plan", cfg, *args)
    assert plan["family"] == "sd2" and plan["v_prediction"] is True
    train_json("run", cfg, *args)
    _, meta = _meta(tmp_path / "v" / "out" / "kit.safetensors")
    assert meta["modelspec.prediction_type"] == "v" and meta["ss_base_model_version"] == "sd_v2_v"
    assert train_json("plan", cfg, *args, "--set", "model.v_parameterization=false")["v_prediction"] is False
    text = train("init", "--preset", "sd2", "--base", folder).stdout
    assert 'family = "sd2"' in text and "resolution = 768" in text and "# v_parameterization =" in text


def test_family_names_follow_kohya():
    from lorakit.train.metadata import base_model_version

    assert [base_model_version(f, v) for f in ("sd1", "sd2") for v in (False, True)] == \
        ["sd_v1", "sd_v1_v", "sd_v2", "sd_v2_v"]
    assert base_model_version("sdxl", False) == "sdxl_base_v1-0"


def test_plan_reads_the_family_from_the_model_not_its_name(tmp_path, base, base_xl):
    renamed = tmp_path / "my-xl-finetune"
    renamed.symlink_to(base)  # an SD1 model whose name says xl
    cfg = config(tmp_path, renamed, "n")
    assert train_json("plan", cfg, "--set", 'model.family="auto"')["family"] == "sd1"
    assert train_json("plan", config(tmp_path, base_xl, "x"), "--set", 'model.family="auto"')["family"] == "sdxl"


def test_fp16_resume_continues_the_loss_scale(tmp_path, base, monkeypatch):
    """fp16 scales the loss; the scale moves as gradients overflow. Resumed without its state,
    the scaler would restart at its initial scale and skip other steps."""
    import lorakit.train.precision as precision

    def overflowing(device, dtype, weights="fp32"):  # a scale at fp16's edge: it grows after each good step, then overflows
        return torch.amp.GradScaler("cpu", init_scale=2.0 ** 24, growth_interval=1, enabled=dtype == torch.float16)
    monkeypatch.setattr(precision, "grad_scaler", overflowing)
    args = ["--set", 'training.mixed_precision="fp16"', "--set", 'saving.precision="fp32"',
            "--set", "optimizer.learning_rate=1e-2"]
    train_json("run", config(tmp_path, base, "whole"), *args)
    parts = config(tmp_path, base, "parts")
    train_json("run", parts, *args, "--stop-at", "3")
    out = tmp_path / "parts" / "out"
    saved = torch.load(out / "state.pt", weights_only=True)["scaler"]
    assert saved["scale"] < 2.0 ** 24  # it backed off: this is what a resume must continue from
    train_json("resume", out)
    whole, _ = _meta(tmp_path / "whole" / "out" / "kit.safetensors")
    resumed, _ = _meta(out / "kit.safetensors")
    assert any(whole[k].abs().max() > 0 for k in whole if "lora_up" in k)  # steps were taken
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_every_closed_choice_is_the_literal_of_its_registry():
    from lorakit.train import config as C
    from lorakit.train.loss import LOSSES
    from lorakit.train.models import ATTENTION
    from lorakit.train.network import MODULES
    from lorakit.train.optimizers import OPTIMIZERS
    from lorakit.train.precision import AMP, DTYPES
    from lorakit.train.sampling import SAMPLERS
    from lorakit.train.schedule import SCHEDULES

    pairs = [(C.NetworkConfig, "module", MODULES), (C.OptimizerConfig, "type", OPTIMIZERS),
             (C.SchedulerConfig, "type", SCHEDULES), (C.LossConfig, "type", LOSSES),
             (C.TrainingConfig, "attention", ATTENTION), (C.TrainingConfig, "mixed_precision", AMP),
             (C.SavingConfig, "precision", DTYPES), (C.SamplingConfig, "sampler", SAMPLERS)]
    for cls, name, registry in pairs:
        assert get_args(get_type_hints(cls)[name]) == tuple(registry), (cls.__name__, name)


TYPOS = [("sampling.sampler", "euler-a"), ("optimizer.type", "adamw_8bit"), ("scheduler.type", "cosine_restarts"),
         ("network.module", "lycoris"), ("loss.type", "l1"), ("training.attention", "flash"),
         ("training.mixed_precision", "fp8"), ("saving.precision", "int8")]


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_typo_in_a_choice_stops_before_anything_loads(tmp_path, base, command):
    cfg = config(tmp_path, base, "typo")
    for key, value in TYPOS:
        proc = train(command, cfg, "--set", f'{key}="{value}"', check=2)
        assert f"'{key}' is '{value}'; use one of" in proc.stderr, proc.stderr
    assert not (tmp_path / "typo" / "out").exists()  # nothing was trained or written


def test_plan_reads_the_prompts_file(tmp_path, base):
    cfg = config(tmp_path, base, "p")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("kitchan, smile --w 64 --x 3\n")
    proc = train("plan", cfg, "--set", f'sampling.prompts="{prompts}"', check=2)
    assert "prompts.txt:1: unknown option --x" in proc.stderr
    proc = train("plan", cfg, "--set", f'sampling.prompts="{tmp_path / "missing.txt"}"', check=2)
    assert "cannot read" in proc.stderr
    prompts.write_text("# two prompts\nkitchan, smile --w 64\nkitchan --n blurry\n")
    report = train_json("plan", cfg, "--set", f'sampling.prompts="{prompts}"', "--set", "sampling.every_n_steps=2")
    assert report["sample_prompts"] == 2


def test_seeds_never_collide_across_seed_and_step():
    from lorakit.train.seeds import derive

    assert derive(64, "noise", 0, 0) != derive(0, "noise", 7919, 0)  # the old arithmetic's collision
    drawn = {derive(seed, "noise", step, micro) for seed in range(40) for step in range(200) for micro in range(4)}
    assert len(drawn) == 40 * 200 * 4
    assert derive(1, "noise", 2, 3) == derive(1, "noise", 2, 3) != derive(1, "caption", 2, 3)
    assert derive(1, "batches", 12) != derive(1, "batches", 1, 2)  # indices are not concatenated digits


def test_decode_workers_act_and_draw_the_same(tmp_path, base, monkeypatch):
    """data.num_workers decodes on worker threads, ahead of the VAE, while caching and per step;
    the latents are the same as with 0 workers (each image's draws never depend on them)."""
    from diffusers import AutoencoderKL

    import lorakit.train.latents as latents_module
    from lorakit.train.data import load_items, pixels
    from lorakit.train.latents import Latents

    threads = []

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return pixels(*args, **kwargs)
    monkeypatch.setattr(latents_module, "pixels", spy)
    path = config(tmp_path, base, "w")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    cpu = torch.device("cpu")
    per_step = ["data.cache_latents=false", "data.random_crop=true", "data.color_aug=true", "data.flip_aug=true"]
    for extra in ([], per_step):
        made = {}
        for workers in (0, 2):
            cfg = load(path, [f"data.num_workers={workers}", *extra])
            threads.clear()
            latents = Latents(load_items(cfg), vae, cpu, cfg)
            made[workers] = [latents.batch([0, 1], random.Random(s))[0] for s in range(4)]
            latents.close()
            assert threads and all(t.startswith("lorakit-decode") == (workers > 0) for t in threads), threads
        assert all(torch.equal(a, b) for a, b in zip(made[0], made[2]))
    assert "nothing to restart" in train("plan", path, "--set", "data.persistent_workers=false", check=2).stderr
    assert "data.num_workers = -1" in train("plan", path, "--set", "data.num_workers=-1", check=2).stderr


def test_what_is_due_is_decided_in_one_place(tmp_path, base):
    from lorakit.train.loop import due

    cfg = load(config(tmp_path, base, "d"), ["saving.every_n_steps=2", "sampling.every_n_steps=3",
                                             "training.validate_every_n_steps=6", "saving.every_n_epochs=2",
                                             "sampling.every_n_epochs=1", "training.validate_every_n_epochs=0"])
    assert due(cfg, 6, 10) == ["save", "sample", "validate"]
    assert due(cfg, 4, 10) == ["save"] and due(cfg, 3, 10) == ["sample"]
    assert due(cfg, 10, 10) == ["save"][:0]  # the end saves the final files, not a step save
    assert due(cfg, 6, 10, epoch=2) == ["save", "sample"] and due(cfg, 10, 10, epoch=3) == ["sample"]


@pytest.mark.parametrize("mixed", ["no", "bf16"])
def test_a_half_precision_model_folder_trains(tmp_path, base, mixed):
    """Community models often ship in fp16; transformers then loads the text encoder in fp16 while
    diffusers loads the UNet in float32. Every component runs in the dtype the run needs."""
    import shutil

    import numpy as np
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    half = tmp_path / "fp16"
    StableDiffusionPipeline.from_pretrained(base).to(torch.float16).save_pretrained(half)
    mixed_folder = tmp_path / "mixed"  # the text encoder alone in fp16
    shutil.copytree(base, mixed_folder)
    shutil.rmtree(mixed_folder / "text_encoder")
    CLIPTextModel.from_pretrained(base, subfolder="text_encoder").half().save_pretrained(mixed_folder / "text_encoder")
    for folder in (half, mixed_folder):
        cfg = config(tmp_path, folder, f"run-{folder.name}")
        result = train_json("run", cfg, "--set", f'training.mixed_precision="{mixed}"', "--set", "training.max_steps=2",
                            "--set", "saving.every_n_epochs=0")
        assert result["step"] == 2 and all(np.isfinite(result["losses"]))
