"""`tag caption`: tiny random-weight captioners of every family, driven through the CLI.

The sentences are noise (random weights); what is checked is where they go, what the model was
given, and that nothing else changes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, OFFLINE, ROOT, tree_digest
from PIL import Image
from vlm_models import BUILDERS, build

from lorakit.shards import Shard, shard

FAMILY_OF = {"joycaption-beta-one": "llava", "qwen2.5-vl-3b": "qwen2_5_vl", "florence-2-base": "florence2",
             "blip-large": "blip"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("captioners")
    return {family: build(family, root / family) for family in BUILDERS}


def tag(*args, check: int | None = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    """`tag ARGS` through its Typer app in this process (the models load in a second, not ten)."""
    from typer.testing import CliRunner

    from lorakit.tagging.cli import app

    result = CliRunner(env={"COLUMNS": "200", **(env or {})}).invoke(app, [str(a) for a in args],
                                                                     catch_exceptions=False)
    if check is not None:
        assert result.exit_code == check, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return subprocess.CompletedProcess(["tag", *args], result.exit_code, result.stdout, result.stderr)


def tag_json(*args, check: int | None = 0) -> dict:
    return json.loads(tag(*args, "--json", check=check).stdout)


def dataset(root: Path, n: int = 3) -> Path:
    folder = root / "ds" / "5_kit chan"
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (48 + 8 * i, 40), (60 * i, 90, 30)).save(folder / f"{i}.png")
    # line 1 with a BOM and CRLF, a further line, a byte that is not UTF-8: all kept byte for byte
    (folder / "0.txt").write_bytes(b"\xef\xbb\xbfkit chan, 1girl, red hair\r\n")
    (folder / "1.txt").write_bytes(b"kit chan, 1girl, caf\xe9\n")
    return root / "ds"


def hashes(root: Path) -> dict[str, str]:
    """The dataset's files (not lorakit's own folder) by content."""
    return {p.relative_to(root).as_posix(): sha(p) for p in sorted(root.rglob("*"))
            if p.is_file() and ".lorakit" not in p.parts}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def received(monkeypatch):
    """What each generate call was given: the prompt text the model decoded from, and its dtype."""
    from transformers.generation.utils import GenerationMixin

    calls: list[dict] = []
    original = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        calls.append({"input_ids": kwargs.get("input_ids"), "dtype": next(self.parameters()).dtype, "model": self})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    return calls


@pytest.mark.parametrize("name", list(FAMILY_OF))
def test_every_family_writes_line_two_and_keeps_line_one(tmp_path, models, received, name):
    from transformers import AutoTokenizer

    ds = dataset(tmp_path)
    folder = ds / "5_kit chan"
    before = {p.name: p.read_bytes() for p in folder.glob("*.txt")}
    report = tag_json("caption", ds, "--model", name, "--model-dir", models[FAMILY_OF[name]],
                      "--max-new-tokens", "6", "--mode", "overwrite")
    items = {i["path"]: i for i in report["items"]}
    assert report["counts"] == {"changed": 2, "created": 1}
    for n in range(3):
        data = (folder / f"{n}.txt").read_bytes()
        sentence = items[f"5_kit chan/{n}.txt"]["sentence"]
        assert sentence and "\n" not in sentence and sentence[-1] in ".!?\"')" and not sentence[0].islower()  # reads as a sentence
        old = before.get(f"{n}.txt")
        if old is None:  # no caption: an empty line 1, the sentence on line 2
            assert data == b"\n" + sentence.encode() + b"\n"
        else:
            line1 = old.split(b"\n")[0] + b"\n"
            assert data.startswith(line1)  # BOM, CR, the non-UTF-8 byte: as they were
            eol = b"\r\n" if old.endswith(b"\r\n") else b"\n"
            assert data == line1 + sentence.encode() + eol
    instructed = FAMILY_OF[name] in ("llava", "qwen2_5_vl")
    tokenizer = AutoTokenizer.from_pretrained(models[FAMILY_OF[name]])
    given = [tokenizer.decode(c["input_ids"][0]) for c in received if c["input_ids"] is not None]
    assert len(received) == 3
    if instructed:  # the tags and the trigger went to the model itself, not only into the report
        assert report["with_tags"] is True
        assert any("kit chan, 1girl, red hair" in text and "called kit chan" in text for text in given)
        assert not any("These tags" in text for text in given[2:])  # image 2 has no tags: that line left out
    else:
        assert report["with_tags"] is False
        assert not any("1girl" in text for text in given)


def test_rerun_skips_done_and_undo_restores(tmp_path, models, received):
    ds = dataset(tmp_path)
    original = hashes(ds)
    tag("caption", ds, "--model-dir", models["llava"], "--max-new-tokens", "4")
    after = tree_digest(ds / "5_kit chan")
    report = tag_json("caption", ds, "--model-dir", models["llava"], "--max-new-tokens", "4")
    assert {i["status"] for i in report["items"]} == {"ok"}
    assert all("skipped" in i["message"] for i in report["items"])
    assert len(received) == 3  # the second run loaded and ran nothing
    assert tree_digest(ds / "5_kit chan") == after
    dry = tag_json("caption", ds, "--model-dir", models["llava"], "--max-new-tokens", "4", "--mode", "overwrite",
                   "--dry-run")
    assert dry["counts"] == {"ok": 3} and dry["sections"]["would write"] == []  # the same sentences: nothing to do
    assert tree_digest(ds / "5_kit chan") == after
    tag("undo", ds)
    assert hashes(ds) == original


def test_merge_adds_a_line_and_overwrite_replaces_line_two(tmp_path, models):
    ds = dataset(tmp_path, 1)
    caption = ds / "5_kit chan" / "0.txt"
    caption.write_bytes(b"kit chan, smile\nA hand-written sentence.\nAnother, with commas.\n")
    report = tag_json("caption", ds, "--model-dir", models["qwen2_5_vl"], "--max-new-tokens", "4", "--mode", "merge")
    sentence = report["items"][0]["sentence"].encode()
    assert caption.read_bytes() == b"kit chan, smile\nA hand-written sentence.\nAnother, with commas.\n" + sentence + b"\n"
    again = tag_json("caption", ds, "--model-dir", models["qwen2_5_vl"], "--max-new-tokens", "4", "--mode", "merge")
    assert again["items"][0]["message"].startswith("unchanged")  # the same sentence is not added twice
    tag("caption", ds, "--model-dir", models["qwen2_5_vl"], "--max-new-tokens", "4", "--mode", "overwrite")
    assert caption.read_bytes() == (b"kit chan, smile\n" + sentence + b"\nAnother, with commas.\n" + sentence + b"\n")


def test_to_extension_writes_a_file_of_its_own(tmp_path, models):
    ds = dataset(tmp_path)
    folder = ds / "5_kit chan"
    (folder / "2.caption").write_bytes(b"tags, in the caption file\n")  # its tags are where the sentence would go
    tags_before = {p.name: sha(p) for p in folder.glob("*.txt")}
    report = tag_json("caption", ds, "--model-dir", models["blip"], "--max-new-tokens", "4", "--to-extension",
                      ".caption", check=1)
    items = {i["path"]: i for i in report["items"]}
    assert items["5_kit chan/2.caption"]["status"] == "failed" and "its tags are in" in items["5_kit chan/2.caption"]["message"]
    for n in (0, 1):
        assert (folder / f"{n}.caption").read_text() == items[f"5_kit chan/{n}.caption"]["sentence"] + "\n"
    assert {p.name: sha(p) for p in folder.glob("*.txt")} == tags_before
    assert (folder / "2.caption").read_bytes() == b"tags, in the caption file\n"


def test_prompt_file_placeholders_and_refusals(tmp_path, models, received):
    ds = dataset(tmp_path, 2)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Describe {folder}.\nTags: {tags}\nName: {trigger} {{trigger}}\n")
    report = tag_json("caption", ds, "--model-dir", models["llava"], "--prompt", prompt, "--trigger", "kitX",
                      "--max-new-tokens", "3")
    prompts = {i["path"]: i["prompt"] for i in report["items"]}
    assert prompts["5_kit chan/0.txt"] == "Describe kit chan.\nTags: kit chan, 1girl, red hair\nName: kitX {trigger}"
    no_tags = tag_json("caption", ds, "--model-dir", models["llava"], "--prompt", prompt, "--no-with-tags",
                       "--mode", "overwrite", "--max-new-tokens", "3")
    assert all("Tags:" not in i["prompt"] for i in no_tags["items"])
    bad = tmp_path / "bad.txt"
    bad.write_text("Describe it. Tags: {tag}")
    plain = tmp_path / "plain.txt"
    plain.write_text("Describe it.")
    refusals = [
        (("--model-dir", models["llava"], "--prompt", bad), "{tag}"),
        (("--model-dir", models["blip"], "--with-tags"), "takes no instructions"),
        (("--model-dir", models["florence2"], "--trigger", "kit"), "cannot be told the trigger"),
        (("--model-dir", models["florence2"], "--prompt", prompt), "its prompt cannot hold {folder}"),
        (("--model-dir", models["florence2"], "--prompt", plain), "task tokens"),
        (("--model-dir", models["llava"], "--to-extension", ".md"), "--to-extension"),
        (("--model-dir", models["llava"], "--mode", "append"), "--mode"),
        (("--model-dir", models["llava"], "--precision", "fp16"), "needs a GPU"),
        (("--model-dir", models["llava"], "--model", "blip-large"), "holds a llava model"),
        (("--model-dir", models["llava"], "--shard", "3/2"), "K must be"),
    ]
    for args, message in refusals:
        out = tag("caption", ds, "--mode", "overwrite", *args, check=None)
        assert out.returncode != 0 and message in out.stdout + out.stderr, (args, out.stdout, out.stderr)


def test_precision_acts(tmp_path, models, received):
    import torch

    ds = dataset(tmp_path, 1)
    report = tag_json("caption", ds, "--model-dir", models["qwen2_5_vl"], "--precision", "bf16", "--max-new-tokens", "3")
    assert report["precision"] == "bf16" and received[-1]["dtype"] == torch.bfloat16
    report = tag_json("caption", ds, "--model-dir", models["llava"], "--precision", "int8", "--max-new-tokens", "3",
                      "--mode", "overwrite")
    assert report["precision"] == "int8" and report["counts"] == {"changed": 1}
    quantized = received[-1]["model"]  # the linear layers hold int8 weights
    assert any("quantized" in type(m).__module__ for m in quantized.modules())


def test_a_bad_image_fails_alone(tmp_path, models):
    ds = dataset(tmp_path)
    (ds / "5_kit chan" / "9 broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    report = tag_json("caption", ds, "--model-dir", models["blip"], "--max-new-tokens", "3", check=1)
    statuses = {i["path"]: i["status"] for i in report["items"]}
    assert statuses.pop("5_kit chan/9 broken.txt") == "failed"
    assert set(statuses.values()) <= {"changed", "created"} and len(statuses) == 3
    assert not (ds / "5_kit chan" / "9 broken.txt").exists()


def test_a_stopped_run_keeps_its_work_and_goes_on(tmp_path, models, monkeypatch):
    from lorakit.tagging import vlm

    ds = dataset(tmp_path, 3)
    real = vlm.generate
    calls = []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(vlm, "generate", stopping)
    out = tag("caption", ds, "--model-dir", models["blip"], "--max-new-tokens", "3", "--mode", "overwrite", check=None)
    assert out.returncode != 0 and "stopped: 2 sentences were written" in out.stdout + out.stderr
    folder = ds / "5_kit chan"
    written = [n for n in range(3) if (folder / f"{n}.txt").is_file()
               and len((folder / f"{n}.txt").read_bytes().split(b"\n")) > 2]
    assert written == [0, 1]
    assert (ds / ".lorakit" / "caption-run.json").is_file()
    monkeypatch.setattr(vlm, "generate", real)
    undone = ds.parent / "undone"  # on a copy: the stopped run undone, its journal still there
    shutil.copytree(ds, undone)
    tag("undo", undone)
    again = tag_json("caption", undone, "--model-dir", models["blip"], "--max-new-tokens", "3", "--mode", "overwrite")
    assert not again["notes"] or not any("stopped run" in n for n in again["notes"])
    assert {i["status"] for i in again["items"]} <= {"changed", "created"}  # none skipped as done
    report = tag_json("caption", ds, "--model-dir", models["blip"], "--max-new-tokens", "3", "--mode", "overwrite")
    messages = {i["path"]: i.get("message", i["status"]) for i in report["items"]}
    assert messages["5_kit chan/0.txt"].startswith("done by the run that was stopped")
    assert messages["5_kit chan/2.txt"] == "created"
    assert not (ds / ".lorakit" / "caption-run.json").exists()


def test_offline_without_the_model_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    ds = dataset(tmp_path, 1)
    out = tag("caption", ds, "--model", "qwen2.5-vl-3b", check=None)
    assert out.returncode != 0 and "hf download Qwen/Qwen2.5-VL-3B-Instruct" in out.stdout + out.stderr


def test_shares_are_disjoint_and_complete():
    names = [f"{d}/{i:04d}.png" for d in ("a", "b b", "ü") for i in range(400)]
    shares = [Shard(k, 3) for k in range(3)]
    owners = [[s.index for s in shares if s.mine(n)] for n in names]
    assert all(len(o) == 1 for o in owners)
    assert all(200 < sum(1 for o in owners if o == [k]) < 600 for k in range(3))
    assert shard("2/3", env={}) == Shard(1, 3)
    assert shard(None, env={"RANK": "1", "WORLD_SIZE": "2"}) == Shard(1, 2, launcher=True)
    assert shard(None, env={}) == Shard()


def test_tag_auto_shards_split_the_folder(tmp_path):
    from conftest import by_path

    ds = tmp_path / "ds" / "2_kit"
    ds.mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (40, 40), (30 * i, 200 - 20 * i, 90)).save(ds / f"{i}.png")
    demo = ROOT / "examples" / "demo-tagger" / "danbooru"
    seen = []
    for k in (1, 2):
        report = tag_json("auto", tmp_path / "ds", "--model-dir", demo, "--shard", f"{k}/2")
        assert report["shard"]["index"] == k and report["shard"]["images"] == len(by_path(report))
        seen.append(set(by_path(report)))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == {f"2_kit/{i}.txt" for i in range(8)}
    from lorakit.tagging.auto import SIDECAR, load_sidecar

    assert len(load_sidecar(ds / SIDECAR)[2]) == 8  # both shares' rows kept in the folder's sidecar


def test_two_launched_processes_caption_their_own_shares(tmp_path, models):
    """torchrun starts two `tag caption` processes on the CPU; each takes its share, together all."""
    ds = dataset(tmp_path, 6)
    out = tmp_path / "logs"
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(ROOT / ".pytest_cache"), "LANG": "C.UTF-8", **OFFLINE,
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(BIN / "torchrun"), "--nproc-per-node", "2", "--no-python", "--log-dir", str(out),
                           "--redirects", "1", "tag", "caption", str(ds), "--model-dir", str(models["blip"]),
                           "--max-new-tokens", "3", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(p.read_text()) for p in sorted(out.rglob("stdout.log"))]
    assert len(reports) == 2 and {r["shard"]["index"] for r in reports} == {1, 2}
    paths = [{i["path"] for i in r["items"]} for r in reports]
    assert not paths[0] & paths[1] and len(paths[0] | paths[1]) == 6
    for n in range(6):  # line 1 as it was (empty for the images that had no caption), line 2 a sentence
        lines = (ds / "5_kit chan" / f"{n}.txt").read_bytes().split(b"\n")
        assert len(lines) == 3 and lines[1].strip() and lines[2] == b""
    assert len(list((ds / ".lorakit" / "backups").glob("*caption-share*.json"))) == 2


def test_stats_counts_sentence_lines_and_their_tokens(tmp_path):
    from lorakit.train.clip_tokens import count, shipped_tokenizer

    ds = dataset(tmp_path, 3)
    folder = ds / "5_kit chan"
    long = "A girl " + "with red hair " * 30 + "stands."
    (folder / "0.txt").write_text(f"kit chan, 1girl\nShe smiles, waving.\n{long}\n")
    (folder / "1.txt").write_text("kit chan, 1girl\nsmile, red hair\n")  # a further line of tags
    report = tag_json("stats", ds)
    assert report["further_tag_lines"] == 1
    tokens = sorted(count(shipped_tokenizer(), line) for line in ("She smiles, waving.", long))
    assert report["sentences"] == {"images": 1, "lines": 2, "tokens_min": tokens[0], "tokens_median": tokens[1],
                                   "tokens_max": tokens[1], "over_tokens": {"75": 1, "150": 0, "225": 0}}
    assert {i["path"]: i.get("sentences") for i in report["items"]}["5_kit chan/0.png"] == 2


def test_shares_of_another_count_are_refused_while_shares_run(tmp_path):
    from lorakit.errors import UserError
    from lorakit.shards import shard_lock

    root = tmp_path / "ds"
    root.mkdir()
    with shard_lock(root, "tag caption", Shard(0, 2)):
        with shard_lock(root, "tag auto", Shard(1, 2)):  # the other share of the same split: together
            pass
        for other in (Shard(1, 3), Shard()):  # 2/3 overlaps 1/2's images; a whole-folder command too
            with pytest.raises(UserError, match="shares|in use"):
                with shard_lock(root, "tag auto", other):
                    pass
        with pytest.raises(UserError, match="in use"):  # the same share twice
            with shard_lock(root, "tag auto", Shard(0, 2)):
                pass
    with shard_lock(root, "tag auto", Shard(1, 3)):  # all shares gone: a new count may start
        pass
    with pytest.raises(UserError):
        shard("１/２", env={})


def test_sentences_keep_every_other_byte():
    from lorakit.captions import with_sentence as put

    assert put(b"kit, a\nold crlf\r\nalt\n\n\n", "New.", "merge", False) == b"kit, a\nold crlf\r\nalt\n\n\nNew.\n"
    assert put(b"kit, b\r\nold\nalt  \n", "New.", "merge", False) == b"kit, b\r\nold\nalt  \nNew.\r\n"
    assert put(b"kit, b\nNew.\n", "New.", "merge", False) == b"kit, b\nNew.\n"
    assert put(b"\xef\xbb\xbfa, \xff\r\nold\r\nthird\n", "New.", "overwrite", False) == \
        b"\xef\xbb\xbfa, \xff\r\nNew.\r\nthird\n"
    assert put(b"Old.\nsecond\n", "New.", "overwrite", True) == b"New.\nsecond\n"
    assert put(None, "New.", "merge", False) == b"\nNew.\n" and put(None, "New.", "merge", True) == b"New.\n"


def test_hostile_journals_folders_and_prompts(tmp_path, models):
    ds = dataset(tmp_path, 3)
    folder = ds / "5_kit chan"
    # a stopped run's journal whose captions were undone since: those are captioned again, not skipped
    tag("caption", ds, "--model-dir", models["blip"], "--max-new-tokens", "3", "--mode", "overwrite")
    journal = ds / ".lorakit" / "caption-run.json"
    assert not journal.exists()  # a run that completes leaves none
    # a FIFO journal and a FIFO config.json neither hang nor crash
    os.mkfifo(journal)
    assert tag("caption", ds, "--model-dir", models["blip"], "--max-new-tokens", "3", check=None).returncode in (0, 1)
    journal.unlink()
    bad = tmp_path / "fifo-model"
    bad.mkdir()
    os.mkfifo(bad / "config.json")
    out = tag("caption", ds, "--model-dir", bad, "--mode", "overwrite", check=None)
    assert out.returncode != 0 and "not a regular file" in out.stdout + out.stderr
    # a config naming another family than its weights: refused, nothing written
    mixed = tmp_path / "mixed"
    shutil.copytree(models["llava"], mixed)
    config = json.loads((mixed / "config.json").read_text())
    (mixed / "config.json").write_text(json.dumps({**config, "model_type": "blip"}))
    before = hashes(ds)
    out = tag("caption", ds, "--model-dir", mixed, "--mode", "overwrite", check=None)
    assert out.returncode != 0 and "names another model than its weights" in out.stdout + out.stderr
    assert hashes(ds) == before
    # a line 1 of megabytes fails alone; braces that are not placeholders are refused
    (folder / "1.txt").write_text("kit, " + "x" * 30_000 + "\n")
    report = tag_json("caption", ds, "--model-dir", models["llava"], "--max-new-tokens", "3", "--mode", "overwrite",
                      check=1)
    assert {i["path"]: i["status"] for i in report["items"]}["5_kit chan/1.txt"] == "failed"
    for text in ("{tags.__class__}", "{tags!r}", "{ tags }", ""):
        prompt = tmp_path / "p.txt"
        prompt.write_text(text)
        out = tag("caption", ds, "--model-dir", models["llava"], "--prompt", prompt, "--mode", "overwrite", check=None)
        assert out.returncode != 0 and ("brace" in out.stderr or "empty" in out.stderr), (text, out.stderr)


def test_a_sentence_file_never_becomes_a_caption(tmp_path, models):
    ds = dataset(tmp_path, 3)
    folder = ds / "5_kit chan"
    (folder / "1.txt").unlink()
    (folder / "1.caption").write_text("kit chan, tags here\n")
    report = tag_json("caption", ds, "--model-dir", models["blip"], "--max-new-tokens", "3", "--to-extension", ".txt",
                      check=1)
    statuses = {i["path"]: i["status"] for i in report["items"]}
    assert statuses == {"5_kit chan/0.txt": "failed", "5_kit chan/1.txt": "failed", "5_kit chan/2.txt": "failed"}
    assert not (folder / "1.txt").exists() and not (folder / "2.txt").exists()
    report = tag_json("caption", ds, "--model-dir", models["blip"], "--max-new-tokens", "3", "--to-extension",
                      ".caption", check=1)
    statuses = {i["path"]: i["status"] for i in report["items"]}
    assert statuses["5_kit chan/0.caption"] == "created" and statuses["5_kit chan/2.caption"] == "failed"
    assert not (folder / "2.caption").exists()


def test_a_named_captioner_loads_from_the_hub_cache(tmp_path, models, monkeypatch):
    """The cache's snapshot holds links to blobs, as huggingface_hub lays it out."""
    cache = tmp_path / "hub"
    repo = cache / "models--Salesforce--blip-image-captioning-large"
    snapshot = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for n, file in enumerate(sorted(models["blip"].iterdir())):
        blob = repo / "blobs" / f"{n:040x}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    ds = dataset(tmp_path, 1)
    report = tag_json("caption", ds, "--model", "blip-large", "--max-new-tokens", "3")
    assert report["model"] == "blip-large" and report["counts"] == {"changed": 1}
