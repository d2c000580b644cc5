"""Shared test helpers: run the real console scripts, make hostile files."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # make_sample: the generators the demo uses
BIN = Path(sys.executable).parent


def run(program: str, *args, check: int | None = 0, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    """Run an installed console script as a user would; assert its exit code."""
    environment = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                   "HOME": str(ROOT / ".pytest_cache"), **(env or {})}
    proc = subprocess.run([str(BIN / program), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=environment)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def run_json(program: str, *args, check: int | None = 0, env: dict | None = None) -> dict:
    proc = run(program, *args, "--json", check=check, env=env)
    return json.loads(proc.stdout)


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
