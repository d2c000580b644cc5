"""train init and train plan: the typed config, kohya bucketing, step counting, warnings."""

import pytest
import tomllib
from conftest import run, train, train_json
from PIL import Image

from lorakit.train.buckets import assign, resolutions
from lorakit.train.config import Config
from lorakit.train.config_toml import from_dict
from lorakit.train.presets import PRESETS, render


def test_bucket_resolutions_follow_kohya():
    buckets = resolutions((512, 512), 256, 1024, 64)
    assert (512, 512) in buckets and (256, 1024) in buckets and (1024, 256) in buckets
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert all(256 <= w <= 1024 and 256 <= h <= 1024 for w, h in buckets)
    assert len(buckets) == 17
    assert assign((1000, 1500), (512, 512), 256, 1024, 64) == (384, 640)
    assert assign((3000, 1000), (512, 512), 256, 1024, 64) == (832, 256)


def test_no_upscale_never_enlarges():
    assert assign((300, 200), (512, 512), 256, 1024, 64, upscale=False) == (256, 192)
    w, h = assign((2000, 1000), (512, 512), 256, 1024, 64, upscale=False)
    assert (w, h) == (640, 320) and w * h <= 512 * 512  # rounded down to the step, aspect kept


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_are_complete_valid_configs(preset):
    config = from_dict(Config, tomllib.loads(render(preset)))
    adaptive = config.optimizer.type in ("prodigy", "dadaptadam")
    assert config.network.alpha == (1.0 if adaptive else config.network.dim)  # not kohya's alpha 1 + tiny lr
    assert config.optimizer.learning_rate == (1.0 if adaptive else config.optimizer.learning_rate)
    assert config.data.resolution == (1024 if "sdxl" in preset else 768 if preset == "sd2" else 512)


def _dataset(tmp_path, sizes=((512, 512),) * 4, captions="kit, smile"):
    root = tmp_path / "dataset"
    folder = root / "10_kit"
    folder.mkdir(parents=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size).save(folder / f"{i}.png")
        if captions is not None:
            (folder / f"{i}.txt").write_text(captions + "\n")
    return root


def _config(tmp_path, text: str) -> str:
    path = tmp_path / "lora.toml"
    path.write_text(text)
    return path


def test_plan_counts_steps_like_kohya_with_regularisation(tmp_path):
    root = _dataset(tmp_path)
    reg = tmp_path / "reg" / "1_person"
    reg.mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (512, 512)).save(reg / f"{i}.png")
    config = _config(tmp_path, f'[data]\nimage_root = "{root}"\nreg_root = "{tmp_path / "reg"}"\n'
                               'batch_size = 2\n[training]\nmax_epochs = 3\n[saving]\nevery_n_epochs = 2\n')
    report = train_json("plan", config)
    # 4 images x 10 repeats = 40, batch 2 -> 20 steps; regularisation matches the 40 -> 20 more
    assert report["steps_per_epoch"] == 40
    assert report["total_steps"] == 120 and report["saves"] == [2, 3] and report["save_steps"] == [80, 120]
    steps = train_json("plan", config, "--set", "training.max_steps=50", "--set", "saving.every_n_steps=20")
    assert steps["save_steps"] == [20, 40, 50] and steps["saves"] == []  # the run never ends an epoch
    assert report["buckets"] == {"512x512": 9}
    report = train_json("plan", config, "--set", "training.max_steps=50")
    assert report["total_steps"] == 50 and report["epochs"] == 2


def test_plan_buckets_and_warnings(tmp_path):
    root = _dataset(tmp_path, sizes=[(512, 768), (768, 512), (500, 500)],
                    captions=", ".join(f"t{i}" for i in range(25)))
    config = _config(tmp_path, f'[model]\nfamily = "sd1"\n[data]\nimage_root = "{root}"\nresolution = 768\n')
    report = train_json("plan", config)
    warnings = " ".join(report["warnings"])
    assert "over 20 tags" in warnings and "lack the trigger 'kit'" in warnings
    assert "only 3 training images" in warnings and "above the 512 px sd1" in warnings
    assert report["buckets"] == {"640x896": 1, "768x768": 1, "896x640": 1}
    assert "(0.txt, 1.txt, 2.txt; tag edit DIR --add kit --folder 10_kit)" in warnings  # which captions
    shown = train("plan", config).stdout  # on a terminal: each warning a line of its own, as the README says
    assert "\nwarning: 10_kit: 3 captions lack the trigger" in shown and "note: warning" not in shown


def test_config_errors_name_the_closest_key(tmp_path):
    root = _dataset(tmp_path)
    for text, expected in (("[network]\nalpah = 1\n", "did you mean 'network.alpha'"),
                           ("[netwrk]\ndim = 1\n", "did you mean 'network'"),
                           ("[training]\nlearning_rate = 1\n", "belongs in 'optimizer.learning_rate'"),
                           ('[optimizer]\ntype = "sgd"\n', "use one of"),
                           ("version = 7\n", "version 7")):
        proc = train("plan", _config(tmp_path, f'{text}[data]\nimage_root = "{root}"\n'
                                            if not text.startswith("[data]") else text), check=2)
        assert expected in proc.stderr, proc.stderr


def test_init_then_plan(tmp_path):
    root = _dataset(tmp_path)
    text = train("init", "--preset", "style", "--image-root", root).stdout
    config = _config(tmp_path, text)
    assert 'module = "locon"' in text and "conv_dim = 16" in text
    assert train_json("plan", config)["steps_per_epoch"] == 40
    train("init", "--preset", "nonsense", check=2)


def test_tag_balance_toml_plans_directly(tmp_path):
    root = _dataset(tmp_path)
    (root / "kit2").mkdir()
    for i in range(2):
        Image.new("RGB", (512, 512)).save(root / "kit2" / f"{i}.png")
    run("tag", "balance", root, "--toml", tmp_path / "dataset.toml")
    report = train_json("plan", tmp_path / "dataset.toml")
    assert report["train_images"] == 4 * 10 + 2 * 20


def test_every_glossary_term_maps_to_a_real_key_or_a_reason():
    from lorakit.train.config_toml import _all_keys
    from lorakit.train.glossary import GLOSSARY, key_of

    keys = set(_all_keys(Config))
    for term, entry in GLOSSARY.items():
        key = key_of(entry)
        assert key is None and len(entry) > 20 or key in keys, (term, entry)
    reference = ("base_model img_folder output_folder caption_dropout_rate net_dim alpha scheduler "
                 "cosine_restarts scheduler_power warmup_lr_ratio learning_rate text_encoder_lr unet_lr "
                 "num_workers persistent_workers batch_size num_epochs save_every_n_epochs "
                 "shuffle_captions keep_tokens max_steps tag_occurrence_txt_file train_resolution "
                 "min_bucket_resolution max_bucket_resolution lora_model_for_resume save_state "
                 "load_previous_save_state training_comment unet_only text_only reg_img_folder "
                 "clip_skip test_seed prior_loss_weight gradient_checkpointing gradient_acc_steps "
                 "mixed_precision save_precision save_as caption_extension max_clip_token_length "
                 "buckets xformers use_8bit_adam cache_latents color_aug flip_aug random_crop vae "
                 "no_meta log_dir bucket_reso_steps bucket_no_upscale v2 v_parameterization").split()
    assert set(reference) <= set(GLOSSARY)
    shown = train("glossary").stdout
    assert "network.dim" in shown and "more (--json lists all)" not in shown
    assert all(term in shown for term in list(GLOSSARY)[-3:])  # every term on the terminal, not the first 50
    assert key_of(GLOSSARY["lora_model_for_resume"]) == "network.weights"
