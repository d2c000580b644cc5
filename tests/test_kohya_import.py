"""`train import kohya` on what most kohya users bring: the JSON kohya_ss's LoRA tab saves, every
field of the GUI in it, most at their defaults. Each test imports one through the CLI, proves the
result loads (and plans), and checks the written TOML and the report's rows."""

from __future__ import annotations

import json

import pytest
import tomllib
from conftest import run, train, train_json

from lorakit.train.config_toml import load

# kohya_ss's LoRA tab save (kohya_gui/lora_gui.py's fields, at its defaults where the user did
# not change them): the user's settings first, then what the GUI writes for every other field
GUI = {
    "LoRA_type": "Standard", "network_dim": 16, "network_alpha": 8, "learning_rate": 0.0001, "unet_lr": 0.0001,
    "text_encoder_lr": 5e-05, "optimizer": "AdamW8bit", "optimizer_args": "", "lr_scheduler": "cosine",
    "lr_warmup": 10, "lr_warmup_steps": 0, "epoch": 2, "max_resolution": "64,64", "output_name": "kitchan",
    "caption_extension": ".txt", "save_model_as": "safetensors", "save_precision": "fp16", "mixed_precision": "bf16",
    "train_batch_size": 1, "seed": 0, "sample_prompts": "", "sample_sampler": "euler_a",
    "additional_parameters": "", "adaptive_noise_scale": 0, "ae": "", "apply_t5_attn_mask": False,
    "blocks_to_swap": 0, "bucket_no_upscale": True, "bucket_reso_steps": 64, "bypass_mode": False,
    "cache_latents": True, "cache_latents_to_disk": False, "caption_dropout_every_n_epochs": 0,
    "caption_dropout_rate": 0, "clip_l": "", "clip_skip": 1, "color_aug": False, "constrain": 0.0,
    "conv_alpha": 1, "conv_dim": 1, "dataset_config": "", "debiased_estimation_loss": False,
    "decompose_both": False, "dim_from_weights": False, "discrete_flow_shift": 3, "dora_wd": False,
    "down_lr_weight": "", "dynamo_backend": "no", "enable_bucket": True, "factor": -1, "flip_aug": False,
    "flux1_checkbox": False, "fp8_base": False, "full_bf16": False, "full_fp16": False, "gpu_ids": "",
    "gradient_accumulation_steps": 1, "gradient_checkpointing": False, "guidance_scale": 3.5, "huber_c": 0.1,
    "huber_scale": 1, "huber_schedule": "snr", "ip_noise_gamma": 0, "keep_tokens": 0, "log_with": "",
    "logging_dir": "", "loraplus_lr_ratio": 0, "loss_type": "l2", "LyCORIS_preset": "full", "masked_loss": False,
    "max_bucket_reso": 2048, "max_data_loader_n_workers": 0, "max_grad_norm": 1, "max_timestep": 1000,
    "max_token_length": 75, "max_train_epochs": 0, "max_train_steps": 0, "mem_eff_attn": False,
    "metadata_author": "", "metadata_title": "", "min_bucket_reso": 256, "min_snr_gamma": 0, "min_timestep": 0,
    "model_list": "custom", "module_dropout": 0, "multi_gpu": False, "multires_noise_discount": 0.3,
    "multires_noise_iterations": 0, "network_dropout": 0, "network_weights": "", "noise_offset": 0,
    "noise_offset_type": "Original", "num_cpu_threads_per_process": 2, "num_machines": 1, "num_processes": 1,
    "persistent_data_loader_workers": False, "prior_loss_weight": 1, "random_crop": False, "rank_dropout": 0,
    "rank_dropout_scale": False, "reg_data_dir": "", "rescaled": False, "resume": "", "sample_every_n_epochs": 0,
    "sample_every_n_steps": 0, "save_every_n_epochs": 1, "save_every_n_steps": 0, "save_last_n_epochs": 0,
    "save_state": False, "scale_weight_norms": 0, "sd3_checkbox": False, "sdxl": False, "sdxl_no_half_vae": False,
    "shuffle_caption": False, "stop_text_encoder_training": 0, "t5xxl": "", "t5xxl_max_token_length": 512,
    "train_norm": False, "train_on_input": True, "training_comment": "", "unit": 1, "use_cp": False,
    "use_scalar": False, "use_tucker": False, "v2": False, "v_parameterization": False, "vae": "",
    "wandb_api_key": "", "weighted_captions": False, "xformers": "xformers",
}


def gui_save(tmp_path, base, **changes):
    """The GUI's save with `changes`, for the tiny model and two captioned 64 px images."""
    folder = tmp_path / "img" / "5_kit"
    if not folder.exists():
        from PIL import Image

        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 64), (40 * i, 80, 120)).save(folder / f"{i}.png")
            (folder / f"{i}.txt").write_text(f"kit, tag{i}\n")
    fields = {**GUI, "pretrained_model_name_or_path": str(base), "train_data_dir": str(tmp_path / "img"),
              "output_dir": str(tmp_path / "out"), **changes}
    path = tmp_path / "gui.json"
    path.write_text(json.dumps(fields, indent=2))
    return path


def imported(config, out, *more):
    """The report of importing `config`, and the TOML written, read back as a table."""
    report = train_json("import", "kohya", config, "--out", out, "--force", *more)
    return report, tomllib.loads(out.read_text(encoding="utf-8"))


def test_gui_defaults_are_off_not_refused(tmp_path, base):
    """The GUI's 0s (noise_offset and adaptive_noise_scale both 0, min_snr_gamma 0, max_train_steps
    0...) are "off": nothing set, nothing refused, and the result plans."""
    out = tmp_path / "lora.toml"
    report, written = imported(gui_save(tmp_path, base), out)
    assert report["not_mapped"] == {}  # every field of a default save has its place, or is off
    for key in ("noise_offset", "adaptive_noise_scale", "min_snr_gamma", "max_train_steps", "max_train_epochs",
                "scale_weight_norms", "network_dropout", "seed", "flux1_checkbox", "guidance_scale"):
        assert report["off"][key].startswith("off:"), key
    assert not {"noise_offset", "adaptive_noise_scale", "min_snr_gamma"} & set(written["loss"])
    assert "seed" not in written["training"] and "max_steps" not in written["training"]
    assert written["training"]["attention"] == "xformers" and written["data"]["keep_tokens"] == 0
    assert (written["network"]["module"], written["network"]["dim"], written["network"]["alpha"]) == ("lora", 16, 8.0)
    loaded = load(out)
    assert loaded.loss.adaptive_noise_scale is None and loaded.training.max_epochs == 2
    assert train_json("plan", out)["steps_per_epoch"] == 10  # 2 images x 5 repeats

    # the rates' 0s: kohya_ss trains the UNet only when the text encoder's rate is 0
    report, written = imported(gui_save(tmp_path, base, text_encoder_lr=0, network_alpha=0), out)
    assert written["network"]["train_text_encoder"] is False and "text_encoder_lr" not in written["network"]
    assert report["mapped"]["text_encoder_lr"].startswith("network.train_text_encoder = false")
    assert written["network"]["alpha"] == 1.0  # kohya_ss passes no alpha 0: sd-scripts' default 1
    load(out)

    # a 0 kohya_ss does not pass leaves sd-scripts' default, which is lorakit's too
    report, written = imported(gui_save(tmp_path, base, noise_offset_type="Multires", multires_noise_discount=0,
                                        lr_scheduler_power=0, max_grad_norm=0), out)
    assert report["off"]["multires_noise_discount"] == ("off: kohya_ss passes no 0, so sd-scripts' default 0.3 "
                                                        "applies, as lorakit's")
    assert "lr_scheduler_power" in report["off"] and "max_grad_norm" in report["off"]
    loaded = load(out)
    assert (loaded.loss.multires_noise_discount, loaded.scheduler.power, loaded.loss.max_grad_norm) == (0.3, 1.0, 1.0)


QUOTED = ['d0=1e-5 "d_coef=1.0" decouple=True', '"d0=1e-5" "d_coef=1.0" "decouple=True"']


@pytest.mark.parametrize("args", QUOTED)
def test_quoted_optimizer_args_as_kohya_reads_them(tmp_path, base, args):
    out = tmp_path / "lora.toml"
    report, written = imported(gui_save(tmp_path, base, optimizer="Prodigy", optimizer_args=args,
                                        learning_rate=1.0), out)
    assert written["optimizer"]["args"] == {"d0": 1e-5, "d_coef": 1.0, "decouple": True}
    assert report["mapped"]["optimizer_args d_coef"] == "optimizer.args.d_coef"
    assert load(out).optimizer.args == {"d0": 1e-5, "d_coef": 1.0, "decouple": True}


def test_optimizer_args_betas_weight_decay_and_pasted_into_lorakit(tmp_path, base):
    out = tmp_path / "lora.toml"
    _, written = imported(gui_save(tmp_path, base, optimizer_args='decouple=True weight_decay=0.1 betas=0.9,0.99 '
                                                                  'name="a b" eps=None'), out)
    o = written["optimizer"]
    assert (o["weight_decay"], o["betas"], o["args"]) == (0.1, [0.9, 0.99], {"decouple": True, "name": "a b"})
    load(out)

    # the same string as lorakit's own optimizer.args (pasted from a guide): refused, with the table
    pasted = tmp_path / "pasted.toml"
    pasted.write_text(f'version = 1\n[model]\nbase = "{base}"\n[data]\nimage_root = "{tmp_path / "img"}"\n'
                      '[optimizer]\ntype = "prodigy"\nargs = "decouple=True weight_decay=0.1 betas=0.9,0.99"\n')
    message = " ".join(train("plan", pasted, check=2).stderr.split())
    assert "optimizer.args is a table of keywords, not kohya's string" in message
    assert "[optimizer] weight_decay = 0.1 betas = [ 0.9, 0.99, ] [optimizer.args] decouple = true" in message


def test_dataset_tables_come_out_as_tables(tmp_path, base):
    dataset = tmp_path / "dataset.toml"
    (tmp_path / "img").mkdir()
    dataset.write_text('[general]\nshuffle_caption = true\n\n[[datasets]]\nresolution = 64\n\n'
                       '  [[datasets.subsets]]\n  image_dir = "img"\n  num_repeats = 3\n  class_tokens = "kit"\n')
    out = tmp_path / "lora.toml"
    report, written = imported(gui_save(tmp_path, base, dataset_config=str(dataset)), out)
    text = out.read_text()
    assert text.startswith("# imported from gui.json") and "\nversion = 1\n" in text
    assert "\n[general]\n" in text and "\n[[datasets]]\n" in text and "\n[[datasets.subsets]]\n" in text
    assert written["datasets"][0]["subsets"][0]["num_repeats"] == 3 and report["datasets"] == 1
    assert load(out).datasets[0].subsets[0].image_dir == str(tmp_path / "img")


def test_standard_drops_the_conv_leftovers_and_noise_type_picks_the_noise(tmp_path, base):
    out = tmp_path / "lora.toml"
    report, written = imported(gui_save(tmp_path, base, conv_dim=8, conv_alpha=4, noise_offset=0.05,
                                        multires_noise_iterations=6), out)
    assert written["network"]["module"] == "lora" and "conv_dim" not in written["network"]
    assert report["dropped"]["conv_dim"].startswith("dropped: kohya_ss passes conv_dim only for Kohya LoCon")
    assert "not Standard" in report["dropped"]["conv_alpha"]
    assert written["loss"]["noise_offset"] == 0.05 and "multires_noise_iterations" not in written["loss"]
    assert report["dropped"]["multires_noise_iterations"] == (
        "dropped: noise_offset_type is Original; kohya_ss passes multires_noise_iterations only with Multires")
    assert "multires_noise_discount" in report["dropped"]

    report, written = imported(gui_save(tmp_path, base, noise_offset_type="Multires", noise_offset=0.05,
                                        adaptive_noise_scale=0.01, multires_noise_iterations=6,
                                        LoRA_type="Kohya LoCon", conv_dim=8, conv_alpha=4), out)
    assert (written["loss"]["multires_noise_iterations"], written["loss"]["multires_noise_discount"]) == (6, 0.3)
    assert not {"noise_offset", "adaptive_noise_scale"} & set(written["loss"])
    assert "only with Original" in report["dropped"]["noise_offset"] and "adaptive_noise_scale" in report["dropped"]
    assert (written["network"]["module"], written["network"]["conv_dim"], written["network"]["conv_alpha"]) == (
        "locon", 8, 4.0)
    assert train_json("plan", out)["steps_per_epoch"] == 10


def test_lycoris_fields_map_for_the_types_they_apply_to(tmp_path, base):
    out = tmp_path / "lora.toml"
    report, written = imported(gui_save(tmp_path, base, LoRA_type="LyCORIS/LoKr", factor=8, use_tucker=True,
                                        decompose_both=True, train_norm=True, LyCORIS_preset="full",
                                        conv_dim=0, conv_alpha=0), out)
    n = written["network"]
    assert n["module"] == "lokr" and n["args"] == {"factor": 8, "use_tucker": True, "decompose_both": True}
    assert report["not_mapped"] == {"train_norm": "not mapped: lorakit lacks train_norm (training the "
                                                  "normalisation layers)"}
    # lycoris.kohya reads a conv_dim / conv_alpha of 0 as network_dim / network_alpha
    assert (n["conv_dim"], n["conv_alpha"]) == (16, 8.0) and "network_dim" in report["mapped"]["conv_dim"]
    assert report["off"]["LyCORIS_preset"] == "off: lycoris's default" and "unit" in report["off"]
    load(out)

    report, written = imported(gui_save(tmp_path, base, LoRA_type="LyCORIS/LoCon", dora_wd=True,
                                        LyCORIS_preset="attn-mlp"), out)
    assert written["network"]["module"] == "locon" and written["network"]["args"] == {"dora_wd": True}
    assert report["not_mapped"]["LyCORIS_preset"].startswith("not mapped: lorakit lacks preset")
    assert "conv_dim" not in written["network"]  # the GUI's conv_dim 1: attn-mlp trains no convolutions
    assert report["dropped"]["conv_dim"] == "dropped: LyCORIS's preset attn-mlp trains no convolutions"
    assert train_json("plan", out)["steps_per_epoch"] == 10

    # a Standard save's LyCORIS leftovers: dropped or off, never refused
    report, written = imported(gui_save(tmp_path, base, dora_wd=True, use_tucker=True, factor=4, train_norm=True), out)
    assert report["not_mapped"] == {} and "args" not in written["network"]
    assert report["dropped"]["dora_wd"].startswith("dropped: kohya_ss passes dora_wd only for")
    assert "factor" in report["dropped"] and "train_norm" in report["dropped"]


def test_additional_parameters_flag_by_flag(tmp_path, base):
    out = tmp_path / "lora.toml"
    extra = ("--zero_terminal_snr --lr_scheduler_type CosineAnnealingLR --lr_scheduler_args T_max=100 "
             '--min_snr_gamma 5 --network_args "conv_dim=4" conv_alpha=2 --keep_tokens 2 --max_grad_norm=0')
    report, written = imported(gui_save(tmp_path, base, additional_parameters=extra, keep_tokens=1), out)
    assert (written["loss"]["zero_terminal_snr"], written["loss"]["min_snr_gamma"]) == (True, 5.0)
    assert written["data"]["keep_tokens"] == 2  # the command line wins over the config
    assert written["loss"]["max_grad_norm"] == 0.0  # argparse's --key=value; a 0 on the command line is passed
    assert report["dropped"]["keep_tokens"].startswith("dropped: additional_parameters --keep_tokens replaces it")
    assert report["mapped"]["additional_parameters --zero_terminal_snr"] == "loss.zero_terminal_snr"
    assert report["mapped"]["additional_parameters --network_args conv_dim"] == "network.conv_dim"
    assert report["not_mapped"]["additional_parameters --lr_scheduler_type"].startswith("not mapped: lorakit has no "
                                                                                        "scheduler by class name")
    assert "additional_parameters --lr_scheduler_args" in report["not_mapped"]
    assert (written["network"]["module"], written["network"]["conv_dim"]) == ("locon", 4)
    load(out)


def test_dim_from_weights_without_weights_is_dropped(tmp_path, base):
    out = tmp_path / "lora.toml"
    report, written = imported(gui_save(tmp_path, base, dim_from_weights=True), out)
    assert "dim_from_weights" not in written["network"]
    assert report["dropped"]["dim_from_weights"] == ("dropped: it reads the ranks of network_weights, which is "
                                                     "not set")
    assert train_json("plan", out)["steps_per_epoch"] == 10


@pytest.mark.parametrize("lora_type, change, key, why", [
    ("LyCORIS/iA3", {"network_dropout": 0.1}, "network_dropout", "lycoris's ia3 has no dropout on its hidden"),
    ("LyCORIS/LoHa", {"network_dropout": 0.1}, "network_dropout", "lycoris's loha has no dropout"),
    ("LyCORIS/LoKr", {"rank_dropout": 0.1}, "rank_dropout", "draws LoKr's rank mask on the CPU"),
    ("Kohya DyLoRA", {"rank_dropout": 0.1, "unit": 4, "conv_dim": 8}, "rank_dropout", "dylora picks the ranks itself"),
    ("LyCORIS/LoCon", {"network_dropout": 0.1, "dora_wd": True}, "network_dropout", "LyCORIS ignores network_dropout"),
])
def test_what_kohya_ignores_is_dropped_so_the_result_plans(tmp_path, base, lora_type, change, key, why):
    out = tmp_path / "lora.toml"
    report, written = imported(gui_save(tmp_path, base, LoRA_type=lora_type, **change), out)
    assert why in report["dropped"][key]
    assert not any(note.startswith("warning") for note in report["notes"])
    assert train_json("plan", out)["steps_per_epoch"] == 10


@pytest.mark.parametrize("change, family", [
    ({"flux1_checkbox": True, "LoRA_type": "Flux1"}, "Flux.1"),
    ({"sd3_checkbox": True}, "SD3"),
    ({"LoRA_type": "Lumina", "lumina_checkbox": True}, "Lumina"),
    ({"LoRA_type": "Anima"}, "Anima"),
    ({"pretrained_model_name_or_path": "/models/flux1-dev.safetensors"}, "Flux.1"),
    ({"model_list": "stabilityai/stable-diffusion-3-medium"}, "SD3"),
])
def test_other_model_families_are_refused(tmp_path, base, change, family):
    out = tmp_path / "lora.toml"
    result = train("import", "kohya", gui_save(tmp_path, base, **change), "--out", out, check=2)
    message = " ".join(result.stderr.split())
    assert f"a {family} config" in message and "lorakit trains LoRAs for SD1.x, SD2.x and SDXL only" in message
    assert not out.exists()


def test_sd_scripts_flux_toml_is_refused_by_the_console_script(tmp_path):
    config = tmp_path / "flux.toml"
    config.write_text('pretrained_model_name_or_path = "/m/model.safetensors"\nae = "/m/ae.safetensors"\n'
                      'clip_l = "/m/clip_l.safetensors"\nt5xxl = "/m/t5xxl_fp16.safetensors"\nnetwork_dim = 4\n')
    out = tmp_path / "lora.toml"
    result = run("lorakit", "train", "import", "kohya", config, "--out", out, check=2)
    assert "a Flux.1 config (ae (read only by sd-scripts' Flux.1 training))" in " ".join(result.stderr.split())
    assert not out.exists()
    config.write_text(config.read_text().replace("ae =", "clip_g =", 1))
    assert "a SD3 config" in train("import", "kohya", config, "--out", out, check=2).stderr


@pytest.mark.parametrize("name", ["../x", "a/b", "..\\x"])
def test_output_name_with_a_path_is_refused(tmp_path, base, name):
    out = tmp_path / "lora.toml"
    report, written = imported(gui_save(tmp_path, base, output_name=name), out)
    assert report["not_mapped"]["output_name"] == (f"not mapped: output.name = {name!r}: must be a file name, "
                                                   "not a path")
    assert "name" not in written.get("output", {}) and load(out).output.name == "lora"


def test_sample_prompts_text_is_written_beside_the_config(tmp_path, base):
    out = tmp_path / "lora.toml"
    report, written = imported(gui_save(tmp_path, base, sample_prompts="kit, smile --w 64 --h 64\nkit, sitting",
                                        sample_every_n_epochs=1), out)
    assert written["sampling"]["prompts"] == "lora.prompts.txt"
    assert (tmp_path / "lora.prompts.txt").read_text() == "kit, smile --w 64 --h 64\nkit, sitting\n"
    assert [item["path"] for item in report["items"]] == ["lora.toml", "lora.prompts.txt"]
    assert train_json("plan", out)["sample_prompts"] == 2


def test_a_ckpt_base_is_kept_with_a_warning_not_refused(tmp_path, base):
    """kohya loads a .ckpt without asking; lorakit asks first. The import keeps the file and says so."""
    out = tmp_path / "lora.toml"
    report, written = imported(gui_save(tmp_path, base, pretrained_model_name_or_path="/models/sd15.ckpt"), out)
    assert written["model"]["base"] == "/models/sd15.ckpt" and "allow_pickle" not in written["model"]
    assert any(note.startswith("warning: model.base is a .ckpt file") for note in report["notes"])
    assert "model.allow_pickle = true" in " ".join(train("plan", out, check=2).stderr.split())
