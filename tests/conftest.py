"""Shared test helpers: run the real console scripts, make hostile files."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # make_sample: the generators the demo uses
BIN = Path(sys.executable).parent
# every test runs offline, in this process and in the commands it starts: no test may reach a hub
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
os.environ.update(OFFLINE)

# cli() runs commands in this process, and their workers are forked from it. OpenCV's thread pool,
# once started here (the clean and scan tests call it directly), is not fork-safe: a forked worker's
# cv2.setNumThreads(1) (lorakit.parallel._init_worker) waits forever on the parent's pool. One
# thread here is what every worker runs with anyway, and no pool is ever started to fork.
try:
    import cv2

    cv2.setNumThreads(1)
except ImportError:
    pass


def run(program: str, *args, check: int | None = 0, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    """Run an installed console script as a user would; assert its exit code."""
    environment = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                   "HOME": str(ROOT / ".pytest_cache"), **OFFLINE, **(env or {})}
    proc = subprocess.run([str(BIN / program), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=environment)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def run_json(program: str, *args, check: int | None = 0, env: dict | None = None) -> dict:
    proc = run(program, *args, "--json", check=check, env=env)
    return json.loads(proc.stdout)


APPS = {"lorakit": "lorakit.cli", "curate": "lorakit.curate.cli", "tag": "lorakit.tagging.cli",
        "train": "lorakit.train.cli"}


def cli(program: str, *args, check: int | None = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    """`program ARGS` through its console script's Typer app (pyproject's [project.scripts]) in this
    process: the same parsing, output and exit codes, without a new interpreter importing torch,
    PIL and the stage per call. The environment is run()'s: the cache under the same HOME, no
    LORAKIT_CACHE or XDG_CACHE_HOME from outside unless ENV sets them. For what only a real
    process shows (its exit on a signal, locks held by another process, output written by C
    libraries, the installed script itself) use run()."""
    import importlib

    from typer.testing import CliRunner

    app = importlib.import_module(APPS[program]).app
    environment = {"COLUMNS": "200", "LANG": "C.UTF-8", "HOME": str(ROOT / ".pytest_cache"),
                   "LORAKIT_CACHE": None, "XDG_CACHE_HOME": None, **OFFLINE, **(env or {})}
    result = CliRunner(env=environment).invoke(app, [str(a) for a in args], catch_exceptions=False)
    if check is not None:
        assert result.exit_code == check, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return subprocess.CompletedProcess([program, *args], result.exit_code, result.stdout, result.stderr)


def cli_json(program: str, *args, check: int | None = 0, env: dict | None = None) -> dict:
    return json.loads(cli(program, *args, "--json", check=check, env=env).stdout)


def train(*args, check: int | None = 0) -> subprocess.CompletedProcess:
    """`train ARGS` through its Typer app in this process: the same parsing, output and exit
    codes as the console script, without re-importing torch and diffusers (~10 s) per call."""
    from typer.testing import CliRunner

    from lorakit.train.cli import app

    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, [str(a) for a in args], catch_exceptions=False)
    if check is not None:
        assert result.exit_code == check, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return subprocess.CompletedProcess(["train", *args], result.exit_code, result.stdout, result.stderr)


def train_json(*args, check: int | None = 0) -> dict:
    return json.loads(train(*args, "--json", check=check).stdout)


def by_path(report: dict) -> dict[str, dict]:
    return {item["path"]: item for item in report["items"]}


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root with its sha256 and mtime: to prove a folder was not touched."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            + str(p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def truncated_png(path: Path, image) -> Path:
    image.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A 100-byte PNG whose header claims width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
                     + _chunk(b"IEND", b""))
    return path


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """The demo's raw sample, freshly generated."""
    from make_sample import write_sample

    raw = tmp_path / "raw"
    write_sample(raw)
    return raw


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """A tiny SD1.5-shaped diffusers folder with random weights (examples/make_demo_model.py)."""
    import make_demo_model as tiny_sd

    folder = tmp_path_factory.mktemp("model")
    tiny_sd.pipeline(folder / "build").save_pretrained(folder / "sd15")
    return folder / "sd15"


@pytest.fixture(scope="session")
def base_xl(tmp_path_factory) -> Path:
    """The same, SDXL-shaped."""
    import make_demo_model as tiny_sd

    folder = tmp_path_factory.mktemp("model_xl")
    tiny_sd.pipeline_xl(folder / "build").save_pretrained(folder / "sdxl")
    return folder / "sdxl"


def tiny_dataset(root: Path) -> Path:
    """Two 64 px images of kitchan (red, blue) with captions, in 2_kitchan."""
    folder = root / "dataset" / "2_kitchan"
    folder.mkdir(parents=True)
    for i, color in enumerate([(220, 40, 40), (40, 40, 220)]):
        img = Image.new("RGB", (64, 64), (250, 250, 250))
        img.paste(color, (16, 8, 48, 56))
        img.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"kitchan, {'red' if i == 0 else 'blue'}, smile\n")
    return root / "dataset"


def train_config(tmp_path: Path, base: Path, out: str, extra: str = "") -> Path:
    """A 6-step float32 run on tiny_dataset at 64 px, saving every 2 epochs and its state."""
    path = tmp_path / f"{out}.toml"
    unet = Path(base) / "unet" / "config.json"
    family = "sdxl" if unet.is_file() and "text_time" in unet.read_text() else "sd1"
    path.write_text(f'''
[model]
base = "{base}"
family = "{family}"
[network]
dim = 4
alpha = 4.0
[data]
image_root = "{tiny_dataset(tmp_path / out)}"
resolution = 64
min_bucket_reso = 64
max_bucket_reso = 128
batch_size = 2
[optimizer]
learning_rate = 1e-3
[training]
max_steps = 6
log_every_n_steps = 1
seed = 3
mixed_precision = "no"  # float32: exact comparisons; the bf16 and fp16 paths have their own tests
[saving]
every_n_epochs = 2
save_state = true
[output]
dir = "{tmp_path / out / 'out'}"
name = "kit"
{extra}
''')
    return path


def serve_review(root: Path, *args) -> tuple[subprocess.Popen, str]:
    """`lorakit review ROOT ARGS` started as a user starts it: the process and the address it printed."""
    import time

    env = {**os.environ, **OFFLINE, "COLUMNS": "200"}
    proc = subprocess.Popen([str(BIN / "lorakit"), "review", str(root), "--port", "0", "-j", "2", *map(str, args)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    url, lines = None, []
    deadline = time.time() + 60
    while url is None and time.time() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if line.startswith("http://"):
            url = line.split()[0]
        if proc.poll() is not None:
            break
    if url is None:
        proc.kill()
    assert url, "".join(lines)
    return proc, url
