"""Output is lorakit's own: library notices, deprecations and progress bars never reach the
terminal raw; a real warning is one `warning:` line."""

import json
import subprocess
import sys
import warnings

from conftest import ROOT, run, train_config

NOISE = ("Loading weights", "Writing model shards", "it/s]", "FutureWarning", "DeprecationWarning", "[transformers]",
         "torchvision", "Traceback")


def _noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(n in line for n in NOISE)]


def test_a_training_run_prints_only_lorakit_lines(tmp_path, base):
    proc = run("train", "run", train_config(tmp_path, base, "q"), "--set", "training.max_steps=2", "--json")
    json.loads(proc.stdout)  # stdout: the report alone
    assert not _noise(proc.stderr), proc.stderr
    for line in proc.stderr.splitlines():  # progress as JSON lines (not a terminal), or our warnings
        assert line.startswith("warning:") or json.loads(line), line


def test_the_demo_model_is_made_quietly(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "make_demo_model.py"), str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.strip() == f"{tmp_path / 'm'}: DEMO base model (random weights, not for real training)"


def test_warnings_become_one_line_and_library_deprecations_are_dropped(capsys):
    from lorakit import quiet

    with warnings.catch_warnings():
        quiet.install()
        warnings.warn("the dataset is odd\nsecond line", UserWarning)
        warnings.warn_explicit("old API", FutureWarning, "diffusers/x.py", 1, module="diffusers.x")
    err = capsys.readouterr().err
    assert err.startswith("warning: the dataset is odd (UserWarning, ") and err.count("\n") == 1
    assert "old API" not in err
