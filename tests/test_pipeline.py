"""The pipeline Makefile users copy (examples/pipeline.mk), and the umbrella command."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run
from make_demo_tagger import write_tagger
from make_sample import character, poison
from PIL import Image

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(raw: Path, out: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    tagger = out.parent / "tagger"
    if not tagger.exists():
        write_tagger(tagger)
    proc = subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "examples" / "pipeline.mk"),
                           f"RAW={raw}", f"OUT={out}", f"TAGGER_DIR={tagger}"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_pipeline_builds_the_dataset_and_reruns_only_what_changed(tmp_path):
    raw = tmp_path / "my raw" / "5_kit"
    raw.mkdir(parents=True)
    character((200, 240), background=None, hue=1).save(raw / "clear.png")
    character((300, 360), hue=2).save(raw / "photo.webp", "WEBP")
    poison(character((300, 360), hue=3), 6).save(raw / "glazed.png")
    (raw / "photo.txt").write_text("kit, 1girl\n", encoding="utf-8")
    out = tmp_path / "work"
    first = make(tmp_path / "my raw", out)
    final = out / "5-clean" / "5_kit"
    assert sorted(p.name for p in final.iterdir() if not p.name.startswith(".")) == ["clear.png", "clear.txt", "glazed.png",
                                                       "glazed.txt", "photo.png", "photo.txt"]
    assert Image.open(final / "clear.png").mode == "RGB"
    # flatten's background tag, then tag auto merged its tags after the folder's token
    clear = (final / "clear.txt").read_text(encoding="utf-8").strip().split(", ")
    assert clear[0] == "kit" and "white background" in clear
    assert (final / "photo.txt").read_text(encoding="utf-8").startswith("kit, 1girl")  # hand tags kept
    assert "num_repeats = 10" in (out / "dataset.toml").read_text()
    assert "curate clean" in first and "tag auto" in first

    second = make(tmp_path / "my raw", out)
    assert "curate" not in second  # nothing changed: no stage runs

    later = time.time() + 5
    character((300, 360), hue=4).save(raw / "photo.webp", "WEBP")
    os.utime(raw / "photo.webp", (later, later))
    third = make(tmp_path / "my raw", out)
    assert "curate convert" in third
    assert Image.open(final / "photo.png").size == (300, 360)


def test_umbrella_command_runs_every_stage_cli(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    character((64, 64)).save(src / "a.webp", "WEBP")
    run("lorakit", "curate", "convert", src, tmp_path / "out")
    assert (tmp_path / "out" / "a.png").exists()
    for stage in ("tag", "train"):
        assert "Usage" in run("lorakit", stage, "--help").stdout
        assert "Usage" in run(stage, "--help").stdout
