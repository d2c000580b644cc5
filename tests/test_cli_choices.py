"""A typo in any closed choice of any command is a one-line refusal naming the choices (exit 2),
never a traceback."""

import pytest
from conftest import ROOT, cli
from PIL import Image

TAGGER = ROOT / "examples" / "demo-tagger" / "danbooru"
TYPOS = [
    ("curate", "convert", "{src}", "{out}", "--format", "gif"),
    ("curate", "flatten", "{src}", "{out}", "--background", "nocolor"),
    ("curate", "upscale", "{src}", "{out}", "--model", "x", "--precision", "fp8"),
    ("curate", "clean", "{src}", "{out}", "--method", "magic"),
    ("tag", "auto", "{src}", "--vocab", "e261"),
    ("tag", "auto", "{src}", "--model-dir", str(TAGGER), "--provider", "rocm"),
    ("tag", "auto", "{src}", "--model-dir", str(TAGGER), "--precision", "int4"),
    ("tag", "auto", "{src}", "--model-dir", str(TAGGER), "--mode", "replace"),
    ("tag", "auto", "{src}", "--model-dir", str(TAGGER), "--rating", "middle"),
    ("tag", "auto", "{src}", "--model-dir", str(TAGGER), "--order", "alpha"),
    ("tag", "auto", "{src}", "--model", "wd-nonexistent"),
    ("tag", "translate", "{src}", "--to", "gelbooru"),
    ("tag", "prune", "{src}", "--vocab", "e261"),
    ("tag", "stats", "{src}", "--vocab", "x"),
    ("train", "init", "--preset", "sd3"),
    ("train", "export", "{src}/1_x/a.png", "--for", "invoke"),
    ("train", "resize", "{src}/a.safetensors", "--dim", "4", "--dynamic", "sv_frob"),
    ("train", "merge", "{src}/a.safetensors", "--out", "{out}.safetensors", "--mode", "average"),
]


@pytest.mark.parametrize("command", TYPOS, ids=lambda c: " ".join(c[:2] + c[-2:]))
def test_a_typo_in_a_choice_is_refused_by_name(tmp_path, command):
    (tmp_path / "src" / "1_x").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "src" / "1_x" / "a.png")
    (tmp_path / "src" / "1_x" / "a.txt").write_text("x, red\n")
    args = [a.format(src=tmp_path / "src", out=tmp_path / "out") for a in command[1:]]
    proc = cli(command[0], *args, check=2)
    text = " ".join(proc.stderr.split())
    assert "Traceback" not in text and (command[-1] in text or "one of" in text), proc.stderr
