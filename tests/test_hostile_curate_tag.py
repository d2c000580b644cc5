"""Hostile input files for curate and tag (issue 20), through the commands a user runs.

A bad image fails alone: one `error:` line naming it, every other image processed exactly as in
a folder without it, exit code 1. A bad file given as an option (a model, a tag list, a boxes
file) stops the command before anything is written: one `error:` line naming it, exit code 2.
Never a traceback; sources untouched; nothing written outside the output folder.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path

import pytest
from conftest import _chunk, bomb_png, cli, tree_digest
from make_demo_tagger import write_tagger
from PIL import Image

# a byte string that is no UTF-8 text, no gzip, no safetensors header (0x80 is a stray continuation byte)
BINARY = bytes(range(256)) * 4
GOOD = {"red.png": ((200, 30, 30), 48), "red_big.png": ((200, 30, 30), 64), "blue.png": ((30, 30, 200), 48)}
# each bad file and what its error line says
BAD = {"bomb.png": "decompression bomb", "iccp.png": "inflates past Pillow's limit",
       "ztxt.png": "inflates past Pillow's limit", "itxt.png": "inflates past Pillow's limit",
       "loop_a.png": "symlink loop", "loop_b.png": "symlink loop", "dangling.png": "dangling symlink"}


def hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root (not mtimes: two runs' outputs are compared)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def outside(tmp_path: Path, written: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(tmp_path).items() if not (tmp_path / k).is_relative_to(written)}


def good_folder(root: Path) -> Path:
    """Three captioned images, two of them near-duplicates (so dedupe and inspect find a group)."""
    folder = root / "10_kit"
    folder.mkdir(parents=True)
    for name, (colour, side) in GOOD.items():
        img = Image.new("RGB", (side, side), (250, 250, 250))
        img.paste(colour, (side // 4, side // 8, side * 3 // 4, side * 7 // 8))
        img.save(folder / name)
        (folder / name).with_suffix(".txt").write_text("kit, smile\n", encoding="utf-8")
    return root


def _png_with_chunk(path: Path, kind: bytes, payload: bytes) -> None:
    """A valid 8x8 PNG with one more chunk after its header; the payload inflates to 2 MB, past
    Pillow's 1 MB MAX_TEXT_CHUNK."""
    img = path.with_suffix(".tmp")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(img, format="PNG")
    png = img.read_bytes()
    img.unlink()
    header_end = 8 + 25  # signature, then IHDR (length, type, 13 bytes, CRC)
    path.write_bytes(png[:header_end] + _chunk(kind, payload + zlib.compress(b"\0" * (2 << 20), 9)) + png[header_end:])


def hostile_folder(root: Path) -> Path:
    good_folder(root)
    folder = root / "10_kit"
    bomb_png(folder / "bomb.png")
    _png_with_chunk(folder / "iccp.png", b"iCCP", b"icc\0\0")
    _png_with_chunk(folder / "ztxt.png", b"zTXt", b"Comment\0\0")
    _png_with_chunk(folder / "itxt.png", b"iTXt", b"Comment\0\1\0\0\0")
    os.symlink("loop_b.png", folder / "loop_a.png")
    os.symlink("loop_a.png", folder / "loop_b.png")
    os.symlink("missing.png", folder / "dangling.png")
    return root


def error_lines(stderr: str) -> dict[str, str]:
    """`error: PATH: message` lines by file name; each file has one."""
    found: dict[str, str] = {}
    for line in stderr.splitlines():
        if line.startswith("error: "):
            path, _, message = line.removeprefix("error: ").partition(": ")
            assert Path(path).name not in found, f"two error lines for {path}:\n{stderr}"
            found[Path(path).name] = message
    return found


def assert_bad_files_named(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = error_lines(stderr)
    assert set(errors) == set(BAD), stderr
    for name, says in BAD.items():
        assert says in errors[name], (name, errors[name])


# every curate command that reads a folder of images: its arguments after SRC (DST: the output)
CURATE = {
    "inspect": [], "dedupe": [], "scan": [],
    "convert": ["DST"], "flatten": ["DST"], "resize": ["DST"], "flip": ["DST", "--all"],
    "split": ["DST", "--tiles", "2x1"], "clean": ["DST", "--strength", "0.05"],
}


@pytest.mark.parametrize("command", list(CURATE))
def test_one_bad_file_fails_alone_in_every_curate_command(tmp_path, command):
    def args(src: Path, dst: Path) -> list:
        return [command, src, *(dst if a == "DST" else a for a in CURATE[command]), "--jobs", "2"]

    clean = cli("curate", *args(good_folder(tmp_path / "clean"), tmp_path / "clean-out"), "--json")
    src = hostile_folder(tmp_path / "src")
    before, around = tree_digest(src), outside(tmp_path, tmp_path / "out")
    proc = cli("curate", *args(src, tmp_path / "out"), check=1)
    assert_bad_files_named(proc.stderr)
    assert tree_digest(src) == before and outside(tmp_path, tmp_path / "out") == around
    if "DST" in CURATE[command]:  # the good images' outputs, byte for byte as without the bad files
        assert hashes(tmp_path / "out") == hashes(tmp_path / "clean-out")
    else:  # read-only: the good images' results as without the bad files
        report = json.loads(cli("curate", *args(src, tmp_path / "out"), "--json", check=1).stdout)
        items = {i["path"]: i for i in report["items"]}
        assert {Path(p).name for p, i in items.items() if i["status"] == "failed"} == set(BAD)
        assert all(items[i["path"]] == i for i in json.loads(clean.stdout)["items"])


@pytest.fixture(scope="module")
def tagger(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tagger") / "danbooru"
    write_tagger(folder, "danbooru")
    return folder


def test_one_bad_file_fails_alone_in_tag_auto(tmp_path, tagger):
    clean = good_folder(tmp_path / "clean")
    cli("tag", "auto", clean, "--model-dir", tagger)
    src = hostile_folder(tmp_path / "src")
    around = outside(tmp_path, src)
    proc = cli("tag", "auto", src, "--model-dir", tagger, check=1)
    assert_bad_files_named(proc.stderr)
    captions = {k: v for k, v in hashes(src / "10_kit").items() if k.endswith(".txt")}
    assert captions == {k: v for k, v in hashes(clean / "10_kit").items() if k.endswith(".txt")}
    assert outside(tmp_path, src) == around


def _one_error(proc, names: str) -> str:
    """The command stopped with exit 2 and one error line naming the file, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and names in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_malformed_safetensors_upscaler_is_one_error_line(tmp_path, damage):
    import torch
    from safetensors.torch import save_file

    model = tmp_path / "4x-model.safetensors"
    if damage == "garbage":
        model.write_bytes(BINARY)
    else:
        save_file({"conv_first.weight": torch.zeros(8, 3, 3, 3)}, str(model))
        model.write_bytes(model.read_bytes()[:-100])  # a download cut short
    src = good_folder(tmp_path / "src")
    before = tree_digest(src)
    proc = cli("curate", "upscale", src, tmp_path / "out", "--model", model, check=2)
    assert "not a readable .safetensors file" in _one_error(proc, str(model))
    assert tree_digest(src) == before and not list((tmp_path / "out").rglob("*.png"))


def test_a_binary_or_mislabelled_tagger_csv_is_refused(tmp_path, tagger):
    src = good_folder(tmp_path / "src")
    before = tree_digest(src)
    model_dir = tmp_path / "model"
    shutil.copytree(tagger, model_dir)
    tags = model_dir / "selected_tags.csv"
    tags.write_bytes(BINARY)
    assert "not a UTF-8 CSV" in _one_error(cli("tag", "auto", src, "--model-dir", model_dir, check=2), str(tags))
    # a category that is not a number: read as 0 (general), rating tags would land in captions
    rows = (tagger / "selected_tags.csv").read_text().splitlines()
    rows[2] = rows[2].replace(",9,", ",rating,")
    tags.write_text("\n".join(rows) + "\n")
    line = _one_error(cli("tag", "auto", src, "--model-dir", model_dir, check=2), f"{tags} line 3")
    assert "'rating', not a number" in line
    assert tree_digest(src) == before  # no caption, no sidecar, no backup written


@pytest.mark.parametrize("option", ["--boxes", "--only-from"])
def test_a_binary_boxes_or_names_file_is_refused(tmp_path, option):
    src = good_folder(tmp_path / "src")
    before = tree_digest(src)
    listed = tmp_path / "listed.csv"
    listed.write_bytes(BINARY)
    proc = cli("curate", "crop" if option == "--boxes" else "flip", src, tmp_path / "out", option, listed, check=2)
    assert "not a UTF-8 text file" in _one_error(proc, str(listed))
    assert tree_digest(src) == before and not (tmp_path / "out").exists()


def test_split_refuses_tiles_smaller_than_the_minimum(tmp_path):
    folder = tmp_path / "src" / "10_kit"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "small.png")
    Image.new("RGB", (256, 32), (30, 30, 200)).save(folder / "strip.png")
    proc = cli("curate", "split", tmp_path / "src", tmp_path / "out", "--tiles", "8x1", check=1)
    assert error_lines(proc.stderr) == {
        "small.png": "not split: 64x64 px in 8 tiles would leave 8x64 px tiles, smaller than 16 px; ask for fewer tiles"}
    out = tmp_path / "out" / "10_kit"
    assert sorted(p.name for p in out.glob("*.png")) == ["strip-2.png", "strip-3.png", "strip-4.png", "strip-5.png",
                                                         "strip-6.png", "strip-7.png", "strip-8.png", "strip.png"]
    assert {Image.open(p).size for p in out.glob("*.png")} == {(32, 32)}
    proc = cli("curate", "split", tmp_path / "src", tmp_path / "fine", "--tiles", "100x100", check=1)
    assert set(error_lines(proc.stderr)) == {"small.png", "strip.png"} and "0x1 px tiles" in proc.stderr
    assert not list((tmp_path / "fine").rglob("*.png"))


GOOD_IMPLICATIONS = "id,antecedent_name,consequent_name,created_at,status\n1,fox,canine,,active\n"
BAD_EXPORTS = {
    "tag_implications-header.csv": b"tag,implies\n",  # wrong columns, no rows: read as nothing before
    "tag_implications-columns.csv": b"tag,implies\nfox,canine\n",
    "tag_aliases-empty.csv": b"id,antecedent_name,consequent_name,created_at,status\n",  # alone: nothing to store
    "tags-onecolumn.csv": b"fox\ncanine\n",
    "tags-words.csv": b"fox,species,100\n",
    "tag_implications-api.json": b'{"success": false, "message": "rate limited"}',
    "tag_implications-plain.csv.gz": GOOD_IMPLICATIONS.encode(),  # not gzip, whatever its name says
    "tag_aliases-binary.csv": BINARY,
}


@pytest.mark.parametrize("bad", list(BAD_EXPORTS))
def test_a_bad_relations_file_keeps_the_stored_relations(tmp_path, bad):
    env = {"LORAKIT_CACHE": str(tmp_path / "cache")}
    good = tmp_path / "tag_implications-good.csv"
    good.write_text(GOOD_IMPLICATIONS)
    cli("tag", "lists", "update", "--vocab", "e621", "--from", good, env=env)
    stored = hashes(tmp_path / "cache")
    assert any(name.endswith("e621.json.gz") for name in stored)
    path = tmp_path / bad
    path.write_bytes(BAD_EXPORTS[bad])
    for files in ([path], [good, path]) if "empty" not in bad else ([path],):
        proc = cli("tag", "lists", "update", "--vocab", "e621", *(a for f in files for a in ("--from", f)),
                   env=env, check=2)
        _one_error(proc, str(path) if "empty" not in bad else bad)
        assert "0 aliases" not in proc.stdout and hashes(tmp_path / "cache") == stored


def test_tag_lists_read_e621s_own_export_header(tmp_path):
    """e621's tags export has a header, `id,name,category,post_count`: names, not ids, are stored."""
    from lorakit.tagging.relations import read_tag_list

    path = tmp_path / "tags-2026-11-20.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("id,name,category,post_count\n1,fox,5,100\n2,hi_res,7,900\n")
    assert read_tag_list(path) == ({"fox": 5, "hi_res": 7}, {})


def test_an_update_from_some_files_keeps_the_kinds_not_given(tmp_path):
    """`--from` the implications alone must not empty the aliases and tags stored before."""
    from lorakit.tagging.relations import Relations

    env = {"LORAKIT_CACHE": str(tmp_path / "cache")}
    files = {"tag_implications-1.csv": GOOD_IMPLICATIONS,
             "tag_aliases-1.csv": "id,antecedent_name,consequent_name,created_at,status\n1,vulpine,fox,,active\n",
             "tags-1.csv": "id,name,category,post_count\n1,fox,5,100\n2,canine,5,90\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    cli("tag", "lists", "update", "--vocab", "e621", *(a for n in files for a in ("--from", tmp_path / n)), env=env)
    newer = tmp_path / "tag_implications-2.csv"
    newer.write_text(GOOD_IMPLICATIONS + "2,wolf,canine,,active\n")
    proc = cli("tag", "lists", "update", "--vocab", "e621", "--from", newer, env=env)
    assert "kept from the lists stored before" in proc.stdout and "no images found" not in proc.stdout
    stored = Relations.load(tmp_path / "cache" / "tags" / "e621.json.gz")
    assert stored.aliases == {"vulpine": "fox"} and set(stored.categories) == {"fox", "canine"}
    assert stored.implies == {"fox": ["canine"], "wolf": ["canine"]}  # the implications given replace the old
