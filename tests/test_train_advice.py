"""What the training guide and kohya users expect, said or refused: images per concept by family,
SDXL's resolution and clip skip, kohya's alpha/learning-rate trap through any learning rate,
kohya's caption-dropout epochs, network.dropout where lycoris ignores it; and reports that keep
their labels and brackets."""

import json
import random

import pytest
from conftest import run, train, train_config, train_json
from PIL import Image

from lorakit.train.config_toml import load


def _plan_config(tmp_path, images: int, text: str = "") -> str:
    folder = tmp_path / "data" / "2_kit"
    folder.mkdir(parents=True)
    for k in range(images):
        Image.new("RGB", (64, 64), (k * 9, 40, 90)).save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text("kit, smile\n")
    path = tmp_path / "plan.toml"
    path.write_text(f'[data]\nimage_root = "{tmp_path / "data"}"\nresolution = 64\nmin_bucket_reso = 64\n{text}')
    return path


@pytest.mark.parametrize("family,images,warned", [("sd1", 13, True), ("sd1", 15, False), ("sdxl", 11, True),
                                                  ("sdxl", 13, False)])
def test_images_per_concept_follow_the_guide_per_family(tmp_path, family, images, warned):
    path = _plan_config(tmp_path, images)
    warnings = " ".join(train_json("plan", path, "--set", f'model.family="{family}"')["warnings"])
    least = 12 if family == "sdxl" else 15
    assert (f"2_kit: only {images} training images" in warnings) == warned
    if warned:
        assert f"(at least {least})" in warnings


def test_sdxl_under_1024_and_its_clip_skip_are_said(tmp_path, base_xl):
    path = _plan_config(tmp_path, 20)
    warnings = " ".join(train_json("plan", path, "--set", 'model.family="sdxl"', "--set", "model.clip_skip=2")["warnings"])
    assert "under 1024 px" in warnings and "clip_skip = 2 does nothing for SDXL" in warnings
    warnings = " ".join(train_json("plan", path, "--set", 'model.family="sdxl"', "--set", "data.resolution=1024")["warnings"])
    assert "1024" not in warnings
    run_dir = tmp_path / "xl"
    train_json("run", train_config(tmp_path, base_xl, "xl"), "--set", "model.clip_skip=2",
               "--set", "training.max_steps=1", "--set", "saving.every_n_epochs=0")
    log = [json.loads(line) for line in (run_dir / "out" / "log.jsonl").read_text().splitlines()]
    assert any("does nothing for SDXL" in line.get("warning", "") for line in log)


@pytest.mark.parametrize("key", ["optimizer.learning_rate", "network.unet_lr", "network.text_encoder_lr"])
def test_kohyas_alpha_trap_through_any_learning_rate(tmp_path, key):
    path = _plan_config(tmp_path, 15, "[network]\nalpha = 1.0\ndim = 32\n")
    warnings = " ".join(train_json("plan", path, "--set", f"{key}=2e-6")["warnings"])
    assert "barely trains" in warnings


def test_caption_dropout_every_n_epochs_drops_kohyas_epochs(tmp_path, base):
    from lorakit.train.subset_options import caption_for_step, caption_options

    cfg = load(train_config(tmp_path, base, "c"), ["data.caption_dropout_every_n_epochs=2", "data.shuffle_caption=false"])
    dropped = [epoch + 1 for epoch in range(6) if caption_for_step("kit, smile", caption_options(cfg.data), random.Random(0), epoch) == ""]
    assert dropped == [2, 4, 6]  # kohya counts epochs from 1 and drops every 2nd: not the first


@pytest.mark.parametrize("module", ["loha", "lokr", "ia3", "glora"])
def test_network_dropout_is_refused_where_lycoris_ignores_it(tmp_path, base, module):
    path = train_config(tmp_path, base, "d")
    for command in ("plan", "run"):
        proc = train(command, path, "--set", f'network.module="{module}"', "--set", "network.dropout=0.1", check=2)
        assert f"network.dropout = 0.1: {module} has no dropout" in proc.stderr
    train("plan", path, "--set", 'network.module="diag-oft"', "--set", "network.dropout=0.1")  # it has one


def test_reports_keep_brackets_and_labels(tmp_path):
    path = _plan_config(tmp_path, 15)
    proc = train("plan", path, "--set", 'data.reg_root="nope [[embeddings]]"', check=2)
    assert "nope [[embeddings]] is not a folder" in proc.stderr
    schedule = train_json("plan", path)["sections"]["schedule"]
    assert {"quantity": "steps per epoch", "value": 30} in schedule  # 15 images x 2, batch 1
    assert "no images found" not in train("glossary").stdout


def test_a_hub_model_on_an_unreachable_hub_fails_at_once(tmp_path, base):
    """model.base as a repo id with no connection: the Hugging Face cache only, then one line
    saying why; not the libraries' five retries with back-off and their "Retrying" lines."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = train_config(tmp_path, base, "hub")
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "",
           "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    proc = run("train", "run", config, "--set", 'model.base="someone/some-model"', env=env, check=2)
    message = " ".join(proc.stderr.split())
    assert "cannot load the model someone/some-model" in message
    assert f"127.0.0.1:{port} cannot be reached" in message and "Retry" not in proc.stderr


@pytest.mark.parametrize("setting,said", [
    ("data.keep_tokens=4", "4 keeps the first 4 tags (set 2 for the guide's 2)"),
    ("data.prior_loss_weight=0.5", "this config has none"),
    ("data.resolution=768", "\"you should not set this higher than your model can generate natively\""),
    ("data.keep_tokens=3", None), ("data.keep_tokens=1", None),
])
def test_the_guides_values_that_kohya_reads_otherwise_are_said_once(tmp_path, setting, said):
    path = _plan_config(tmp_path, 20)
    warnings = train_json("plan", path, "--set", 'model.family="sd1"', "--set", setting)["warnings"]
    guide = [w for w in warnings if "the guide" in w or "does nothing" in w]
    if said is None:
        assert guide == []
    else:
        assert len(guide) == 1 and said in guide[0], warnings


def test_prior_loss_weight_with_regularisation_images_says_which_way_it_pulls(tmp_path):
    path = _plan_config(tmp_path, 20)
    reg = tmp_path / "reg" / "1_person"
    reg.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(reg / "r.png")
    warnings = " ".join(train_json("plan", path, "--set", f'data.reg_root="{tmp_path / "reg"}"',
                                   "--set", "data.prior_loss_weight=0.5")["warnings"])
    assert "under 1 they hold the model back less" in warnings and "does nothing" not in warnings
