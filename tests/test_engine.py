"""The shared stage engine, exercised through `curate convert` as a user runs it."""

import os
import time

from conftest import bomb_png, by_path, cli, cli_json, tree_digest, truncated_png
from make_sample import character
from PIL import Image

from lorakit.discovery import discover


def _raw(tmp_path):
    raw = tmp_path / "raw"
    (raw / "sub folder").mkdir(parents=True)
    character((64, 80)).save(raw / "a.png")
    character((64, 80), hue=1).save(raw / "sub folder" / "ünï cøde.webp", "WEBP")
    (raw / "a.txt").write_text("tag one, tag two\n", encoding="utf-8")
    (raw / "sub folder" / "ünï cøde.caption").write_text("x\n", encoding="utf-8")
    return raw


def test_mirrors_tree_carries_captions_and_never_touches_sources(tmp_path):
    raw = _raw(tmp_path)
    before = tree_digest(raw)
    report = cli_json("curate", "convert", raw, tmp_path / "out")
    assert report["counts"] == {"written": 2}
    out = tmp_path / "out"
    assert Image.open(out / "a.png").format == "PNG"
    assert Image.open(out / "sub folder" / "ünï cøde.png").format == "PNG"
    assert (out / "a.txt").read_text(encoding="utf-8") == "tag one, tag two\n"
    assert (out / "sub folder" / "ünï cøde.caption").read_text(encoding="utf-8") == "x\n"
    assert tree_digest(raw) == before
    assert not [p for p in out.rglob("*.tmp")]


def test_rerun_skips_everything_and_force_redoes(tmp_path):
    raw = _raw(tmp_path)
    cli("curate", "convert", raw, tmp_path / "out")
    again = cli_json("curate", "convert", raw, tmp_path / "out")
    assert again["counts"] == {"skipped": 2}
    forced = cli_json("curate", "convert", raw, tmp_path / "out", "--force")
    assert forced["counts"] == {"written": 2}


def test_changed_input_or_caption_is_redone(tmp_path):
    raw = _raw(tmp_path)
    out = tmp_path / "out"
    cli("curate", "convert", raw, out)
    later = time.time() + 5
    os.utime(raw / "a.txt", (later, later))
    (raw / "a.txt").write_text("new tags\n", encoding="utf-8")
    os.utime(raw / "a.txt", (later, later))
    items = by_path(cli_json("curate", "convert", raw, out))
    assert items["a.png"]["status"] == "written"
    assert items["sub folder/ünï cøde.webp"]["status"] == "skipped"
    assert (out / "a.txt").read_text(encoding="utf-8") == "new tags\n"


def test_dry_run_writes_nothing(tmp_path):
    raw = _raw(tmp_path)
    report = cli_json("curate", "convert", raw, tmp_path / "out", "--dry-run")
    assert report["counts"] == {"planned": 2}
    assert not (tmp_path / "out").exists()


def test_bad_files_fail_alone_and_exit_nonzero(tmp_path):
    raw = _raw(tmp_path)
    (raw / "zero.png").write_bytes(b"")
    truncated_png(raw / "cut.png", character((300, 300)))
    bomb_png(raw / "bomb.png")
    proc = cli("curate", "convert", raw, tmp_path / "out", check=1)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 3
    assert any("zero.png" in e and "empty" in e for e in errors)
    assert any("cut.png" in e and "truncated" in e for e in errors)
    assert any("bomb.png" in e and "--max-pixels" in e for e in errors)
    assert (tmp_path / "out" / "a.png").exists()  # the rest of the folder was processed
    assert not (tmp_path / "out" / "zero.png").exists()


def test_decompression_bomb_limit_is_an_option(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    character((100, 100)).save(raw / "a.png")
    cli("curate", "convert", raw, tmp_path / "o1", "--max-pixels", "9999", check=1)
    cli("curate", "convert", raw, tmp_path / "o2", "--max-pixels", "10000")


def test_output_collision_is_reported_and_nothing_overwritten(tmp_path):
    raw = _raw(tmp_path)
    character((64, 80), hue=2).save(raw / "a.webp", "WEBP")
    items = by_path(cli_json("curate", "convert", raw, tmp_path / "out", check=1))
    assert items["a.png"]["status"] == items["a.webp"]["status"] == "failed"
    assert "a.webp" in items["a.png"]["message"] and "rename" in items["a.png"]["message"]
    assert not (tmp_path / "out" / "a.png").exists()
    assert items["sub folder/ünï cøde.webp"]["status"] == "written"


def test_overlapping_folders_are_refused(tmp_path):
    raw = _raw(tmp_path)
    before = tree_digest(raw)
    for dst in (raw / "converted", raw):
        proc = cli("curate", "convert", raw, dst, check=2)
        assert "source" in proc.stderr
    proc = cli("curate", "convert", raw / "sub folder", raw, check=2)
    assert "inside the destination" in proc.stderr
    cli("curate", "convert", tmp_path / "missing", tmp_path / "out", check=2)
    assert tree_digest(raw) == before


def test_discovery_skips_hidden_files_and_our_outputs(tmp_path):
    raw = _raw(tmp_path)
    (raw / ".git").mkdir()
    character((8, 8)).save(raw / ".git" / "x.png")
    character((8, 8)).save(raw / "._resource_fork.png")
    cli("curate", "convert", raw, tmp_path / "elsewhere")
    # an output folder moved under the source afterwards is recognised by its marker
    os.rename(tmp_path / "elsewhere", raw / "old-output")
    assert [p.as_posix() for p in discover(raw)] == ["a.png", "sub folder/ünï cøde.webp"]


def test_parallel_and_serial_runs_write_the_same_files(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(12):
        character((90, 120), hue=i).save(raw / f"{i:02d}.webp", "WEBP", lossless=True)
    one = cli_json("curate", "convert", raw, tmp_path / "j1", "--jobs", "1")
    two = cli_json("curate", "convert", raw, tmp_path / "j2", "--jobs", "2")
    assert one["counts"] == two["counts"] == {"written": 12}
    for i in range(12):
        a = (tmp_path / "j1" / f"{i:02d}.png").read_bytes()
        assert a == (tmp_path / "j2" / f"{i:02d}.png").read_bytes()


def test_human_summary_is_a_table(tmp_path):
    raw = _raw(tmp_path)
    proc = cli("curate", "convert", raw, tmp_path / "out")
    assert "written" in proc.stdout and "┃" in proc.stdout
