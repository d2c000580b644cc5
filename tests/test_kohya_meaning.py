"""`train import kohya` keeps what a kohya config means where its keys are silent or lorakit
reads them otherwise (found by a kohya_ss user's try): the optimizer's own defaults, warm-up with
a constant schedule, the family of kohya_ss's flags, logging_dir, relative paths, optimizers with
a close equivalent, and settings whose loss would change the run."""

import os

import pytest
from conftest import train, train_json
from test_kohya_import import gui_save, imported


@pytest.mark.parametrize("optimizer,decay,betas", [("AdamW8bit", 0.01, [0.9, 0.999]), ("Prodigy", 0.0, [0.9, 0.999]),
                                                   ("Lion", 0.0, [0.9, 0.99])])
def test_an_optimizer_without_args_trains_with_its_own_defaults_as_in_kohya(tmp_path, base, optimizer, decay, betas):
    report, written = imported(gui_save(tmp_path, base, optimizer=optimizer), tmp_path / "lora.toml")
    assert written["optimizer"]["weight_decay"] == decay and written["optimizer"]["betas"] == betas
    assert any("the optimizer's own default" in why for why in report["mapped"].values())


def test_optimizer_args_still_win_over_the_defaults(tmp_path, base):
    _, written = imported(gui_save(tmp_path, base, optimizer_args="weight_decay=0.1 betas=0.9,0.99"),
                          tmp_path / "lora.toml")
    assert written["optimizer"]["weight_decay"] == 0.1 and written["optimizer"]["betas"] == [0.9, 0.99]


def test_kohya_ss_ignores_a_warm_up_with_the_constant_schedule(tmp_path, base):
    report, written = imported(gui_save(tmp_path, base, lr_scheduler="constant", lr_warmup=10), tmp_path / "lora.toml")
    assert "warmup_ratio" not in written.get("scheduler", {}) and "ignores a warm-up" in report["dropped"]["lr_warmup"]
    _, written = imported(gui_save(tmp_path, base, lr_scheduler="constant_with_warmup", lr_warmup=10),
                          tmp_path / "lora.toml")
    assert written["scheduler"]["warmup_ratio"] == 0.1


def test_kohya_ss_flags_name_the_family_and_logging_dir_draws_no_samples(tmp_path, base):
    report, written = imported(gui_save(tmp_path, base, logging_dir=str(tmp_path / "logs")), tmp_path / "lora.toml")
    assert written["model"]["family"] == "sd1" and "log_dir" not in written.get("output", {})
    assert report["dropped"]["logging_dir"].startswith("dropped: lorakit writes its TensorBoard log into output.dir")
    warnings = " ".join(train_json("plan", tmp_path / "lora.toml", "--set", "data.resolution=768")["warnings"])
    assert "resolution 768 is above the 512 px sd1 was trained at" in warnings  # the family known: advice applies


def test_relative_paths_are_read_from_where_kohya_runs(tmp_path, base, monkeypatch):
    config = gui_save(tmp_path, base, train_data_dir="./img", output_dir="out")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    report, written = imported(config, tmp_path / "sub" / "lora.toml")
    assert written["data"]["image_root"] == str(tmp_path / "img") and written["output"]["dir"] == str(tmp_path / "out")
    os.chdir(tmp_path / "sub")
    assert train_json("plan", tmp_path / "sub" / "lora.toml")["steps_per_epoch"] == 10


def test_close_equivalents_map_and_a_lost_essential_setting_fails_the_import(tmp_path, base):
    report, written = imported(gui_save(tmp_path, base, optimizer="Lion8bit"), tmp_path / "lora.toml")
    assert written["optimizer"]["type"] == "lion" and "no 8-bit Lion" in report["mapped"]["optimizer"]
    failed = train("import", "kohya", gui_save(tmp_path, base, optimizer="CAME"), "--out", tmp_path / "came.toml",
                   "--force", check=1)
    assert "trains with lorakit's default instead" in failed.stdout + failed.stderr
    assert (tmp_path / "came.toml").is_file()  # written, to be edited; the exit code says it is not kohya's run


def test_a_failed_import_leaves_the_users_files_and_odd_outputs_are_refused(tmp_path, base):
    out, side = tmp_path / "keep.toml", tmp_path / "keep.prompts.txt"
    out.write_text("mine\n")
    side.write_text("my prompts\n")
    bad = gui_save(tmp_path, base, adaptive_noise_scale=0.1, noise_offset=0, sample_prompts="kit --w 64")
    failed = train("import", "kohya", bad, "--out", out, "--force", check=2)
    assert "nothing was written" in failed.stderr
    assert out.read_text() == "mine\n" and side.read_text() == "my prompts\n"  # --force replaces only with what loads
    os.mkfifo(tmp_path / "fifo.toml")
    assert "not a regular file" in train("import", "kohya", gui_save(tmp_path, base), "--out", tmp_path / "fifo.toml",
                                         "--force", check=2).stderr


def test_values_no_kohya_tool_writes_are_one_line_never_a_traceback(tmp_path, base):
    report, _ = imported(gui_save(tmp_path, base, network_dim=1e999, resolution=","), tmp_path / "lora.toml")
    assert report["not_mapped"]["resolution"].startswith("not mapped")
    toml = tmp_path / "dated.toml"
    toml.write_text(f'pretrained_model_name_or_path = "{base}"\ntraining_comment = 1979-05-27\n')
    train("import", "kohya", toml, "--out", tmp_path / "dated.out.toml", check=0)  # a TOML date: shown, no crash
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"output_name": "caf\xe9"}')
    failed = train("import", "kohya", latin, "--out", tmp_path / "x.toml", check=2)
    assert "not UTF-8 text" in failed.stderr and "Traceback" not in failed.stderr
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 5000 + "]" * 5000)
    assert train("import", "kohya", nested, "--out", tmp_path / "y.toml", check=2).stderr


def test_a_config_train_plan_would_refuse_fails_the_import_and_warm_up_flags_are_read(tmp_path, base):
    failed = train("import", "kohya", gui_save(tmp_path, base, optimizer="AdamW", optimizer_args="foo=1"), "--out", tmp_path / "a.toml",
                   "--force", check=1)
    assert "`train plan` refuses it as imported: optimizer.args do not fit" in failed.stdout + failed.stderr
    report, written = imported(gui_save(tmp_path, base, additional_parameters="--lr_warmup_steps 100"),
                               tmp_path / "b.toml")
    assert written["scheduler"]["warmup_steps"] == 100
