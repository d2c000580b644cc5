"""Rewriting many captions in place: the trading writes of lorakit.fsio.write_texts and the
parallel path of tagging.rewrite, checked against the plain ways they replace."""

import errno
import json
import os
import shutil
import sys

import pytest
from conftest import by_path, run_json
from test_tag_text import caption, dataset

import lorakit.fsio as fsio
import lorakit.tagging.rewrite as rewrite_module
from lorakit.parallel import forked_map


def tag(*args) -> dict:
    """`tag ARGS --json` in this process, so the monkeypatched settings apply."""
    from typer.testing import CliRunner

    from lorakit.tagging.cli import app

    result = CliRunner().invoke(app, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _folder(tmp_path, count=10):
    folder = tmp_path / "captions"
    folder.mkdir()
    paths = []
    for i in range(count):
        path = folder / f"{i}.txt"
        path.write_text(f"old caption {i}, " + "x" * (i * 50) + "\n", encoding="utf-8")
        paths.append(path)
    return folder, paths


def test_trading_writes_every_text_and_leaves_no_scratch_file(tmp_path):
    if fsio._exchange is None:
        pytest.skip("no renameat2 here: write_texts falls back to write_text")
    folder, paths = _folder(tmp_path)
    inode = {p: p.stat().st_ino for p in paths}
    texts = [f"new, ünï cøde {i}" + ", y" * (30 - 3 * i) + "\n" for i in range(10)]  # longer and shorter
    new = folder / "new.txt"
    assert fsio.write_texts([*zip(map(str, paths), texts), (str(new), "created\n")]) == {}
    assert [p.read_text(encoding="utf-8") for p in paths] == texts
    assert new.read_text(encoding="utf-8") == "created\n"
    assert sorted(os.listdir(folder)) == sorted(p.name for p in [*paths, new])  # no scratch left
    # the files really were traded (the fast path ran), not replaced one by one
    assert any(p.stat().st_ino in inode.values() and p.stat().st_ino != inode[p] for p in paths)


def test_trading_never_writes_through_a_link_to_another_file(tmp_path):
    folder, paths = _folder(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    hard, soft = outside / "hard.txt", outside / "soft.txt"
    os.link(paths[3], hard)  # a `cp -al` copy of the dataset shares this caption
    soft.write_text("the symlink's target\n", encoding="utf-8")
    paths[5].unlink()
    paths[5].symlink_to(soft)
    assert fsio.write_texts([(str(p), f"new {i}\n") for i, p in enumerate(paths)]) == {}
    assert [p.read_text() for p in paths] == [f"new {i}\n" for i in range(10)]
    assert hard.read_text() == "old caption 3, " + "x" * 150 + "\n"
    assert soft.read_text() == "the symlink's target\n"
    assert not paths[5].is_symlink()  # replaced by a file, as os.replace would


def test_a_file_that_cannot_be_written_fails_alone(tmp_path):
    folder, paths = _folder(tmp_path)
    paths[4].unlink()
    paths[4].mkdir()  # a folder where a caption should be
    failed = fsio.write_texts([(str(p), f"new {i}\n") for i, p in enumerate(paths)])
    assert list(failed) == [str(paths[4])] and "IsADirectoryError" in failed[str(paths[4])]
    assert paths[4].is_dir()
    assert [p.read_text() for i, p in enumerate(paths) if i != 4] == [f"new {i}\n" for i in range(10) if i != 4]


def test_file_systems_without_exchange_get_the_plain_atomic_write(tmp_path, monkeypatch):
    folder, paths = _folder(tmp_path)
    calls = []

    def unsupported(a, b):
        calls.append(b)
        return errno.EINVAL

    monkeypatch.setattr(fsio, "_exchange", unsupported)
    assert fsio.write_texts([(str(p), f"new {i}\n") for i, p in enumerate(paths)]) == {}
    assert [p.read_text() for p in paths] == [f"new {i}\n" for i in range(10)]
    assert len(calls) == 1  # tried once, then the rest of the folder went the plain way
    assert sorted(os.listdir(folder)) == sorted(p.name for p in paths)


def test_prune_on_worker_processes_equals_prune_in_process(tmp_path, monkeypatch):
    captions = {f"{10 + i % 3}_kit/{i}.png": f"kit, very long hair, long hair, {i}, long_hair, 1girls"
                for i in range(12)}
    captions["10_kit/same.png"] = "kit, solo"
    one, two = dataset(tmp_path / "one", captions), dataset(tmp_path / "two", captions)
    sequential = tag("prune", one)
    monkeypatch.setattr(rewrite_module, "PARALLEL_FROM", 1)
    monkeypatch.setattr(rewrite_module, "SPAN", 5)
    monkeypatch.setattr(rewrite_module, "default_jobs", lambda: 2)
    jobs = []
    monkeypatch.setattr(rewrite_module, "forked_map",
                        lambda fn, items, n: (jobs.append((n, len(items))), forked_map(fn, items, n))[1])
    parallel = tag("prune", two)
    assert jobs == [(2, 3)]  # 13 captions in spans of 5, on 2 processes
    assert parallel["items"] == sequential["items"] and parallel["sections"] == sequential["sections"]
    assert parallel["counts"] == {"changed": 12, "ok": 1}
    assert caption(two, "11_kit/1.png") == "kit, very long hair, 1, 1girl"
    tag("undo", two)
    assert caption(two, "11_kit/1.png") == "kit, very long hair, long hair, 1, long_hair, 1girls"


def test_an_unreadable_caption_fails_and_the_rest_are_pruned(tmp_path):
    root = dataset(tmp_path, {"a.png": "very long hair, long hair", "b.png": None})
    (root / "b.txt").mkdir()  # listed as b's caption, but cannot be read
    report = run_json("tag", "prune", root, check=1)
    outcomes = by_path(report)
    assert outcomes["b.txt"]["status"] == "failed" and "cannot read" in outcomes["b.txt"]["message"]
    assert caption(root, "a.png") == "very long hair"


def test_forked_map_runs_closures_on_other_processes_in_order():
    offset = 100  # a closure: nothing is pickled on the way in
    out = list(forked_map(lambda x: (x + offset, os.getpid()), list(range(7)), 2))
    assert [value for value, _ in out] == list(range(100, 107))
    if sys.platform.startswith("linux"):  # fork; elsewhere it runs in this process
        assert os.getpid() not in {pid for _, pid in out}


def test_undo_keeps_its_backup_until_every_caption_is_restored(tmp_path):
    root = dataset(tmp_path, {"a.png": "very long hair, long hair", "b.png": "fox, canine"})
    run_json("tag", "prune", root, "--vocab", "e621")
    (root / "a.txt").unlink()
    (root / "a.txt").mkdir()  # in the way of the restore
    report = run_json("tag", "undo", root, check=1)
    assert by_path(report)["a.txt"]["status"] == "failed"
    assert caption(root, "b.png") == "fox, canine"
    shutil.rmtree(root / "a.txt")
    run_json("tag", "undo", root)  # the same backup again
    assert caption(root, "a.png") == "very long hair, long hair"
