"""The review page's trainer view (each image's bucket, scale and CLIP tokens; per folder images x
repeats and buckets, as `train plan` counts them), the progress of long requests, and `tag auto`
run from the page on picked images: through Starlette's test client, checked on the files."""

import hashlib
import shutil

import pytest
from conftest import run, train_json
from make_demo_tagger import write_tagger
from PIL import Image
from test_review import dataset

pytest.importorskip("starlette")

from starlette.testclient import TestClient  # noqa: E402

from lorakit.review.cli import prepare  # noqa: E402
from lorakit.review.server import Review  # noqa: E402
from lorakit.review.trainer import TrainerView  # noqa: E402
from lorakit.tagging.auto import AutoOptions  # noqa: E402
from lorakit.train.config_toml import load as load_config  # noqa: E402


def client_for(root, **kw):
    review = Review(prepare(root, 1, False), **kw)
    client = TestClient(review.app())
    client.headers["X-Lorakit-Token"] = review.token
    return review, client


def test_each_image_as_the_trainer_sees_it_with_lorakits_defaults(tmp_path):
    root = dataset(tmp_path / "data")
    (root / "10_kit" / "b.txt").write_text("kitchan, red hair\n" + ", ".join(f"tag{i}" for i in range(40)) + "\n")
    (root / "extra").mkdir()
    Image.new("RGB", (1024, 1024), "white").save(root / "extra" / "x.png")
    _, client = client_for(root)
    a = client.get("/api/image", params={"rel": "10_kit/a.png"}).json()["trainer"]
    # 160x200 (aspect 0.8) at 512 px: kohya's nearest bucket is 448x576, reached by enlarging 2.88 times
    assert a["bucket"] == [448, 576] and a["scale"] == 2.88 and a["upscaled"] and a["trains"]
    assert a["repeats"] == 10 and a["max_tokens"] == 75
    assert a["tokens"] == 7 and a["source"] == "line 1"  # kitch|an|,|red|hair|,|hat: CLIP's own pieces
    b = client.get("/api/image", params={"rel": "10_kit/b.png"}).json()["trainer"]
    assert b["tokens"] == 5 and b["other_lines"] == [149]  # kept, counted, and said not to train (line 1 does)
    c = client.get("/api/image", params={"rel": "10_kit/c.png"}).json()["trainer"]
    assert (c["source"], c["caption"], c["tokens"]) == ("the folder's name", "kit", 1)  # no caption: as train reads it
    typed = client.get("/api/trainer-image", params={"rel": "10_kit/a.png", "text": ", ".join(["tag"] * 80)}).json()
    assert typed["tokens"] == 159 and typed["max_tokens"] == 75  # the box's text, before it is saved
    x = client.get("/api/image", params={"rel": "extra/x.png"}).json()["trainer"]
    assert x["bucket"] == [512, 512] and x["scale"] == 0.5 and not x["upscaled"] and not x["trains"]
    training = client.get("/api/training").json()
    assert training["settings"]["resolution"] == [512, 512] and training["settings"]["source"] == "lorakit's defaults"
    folders = {f["folder"]: f for f in training["folders"]}
    assert (folders["10_kit"]["trained"], folders["10_kit"]["repeats"], folders["10_kit"]["weighted"]) == (3, 10, 30)
    assert folders["10_kit"]["buckets"] == [["448x576", 3]] and folders["10_kit"]["upscaled"] == 3
    assert (folders["5_bg"]["trained"], folders["5_bg"]["weighted"]) == (4, 20)
    assert sum(n for _, n in folders["5_bg"]["buckets"]) == 4
    assert folders["extra"]["trained"] == 0 and folders["extra"]["buckets"] == [["512x512", 1]]


def test_a_train_config_sets_what_the_page_shows_and_agrees_with_train_plan(tmp_path):
    root = dataset(tmp_path / "data")
    config = tmp_path / "lora.toml"
    config.write_text(f'[data]\nimage_root = "{root}"\nresolution = 256\nbucket_no_upscale = true\n'
                      'max_token_length = 150\n')
    loaded = load_config(config)
    _, client = client_for(root, trainer=TrainerView(root, loaded, "lora.toml"))
    a = client.get("/api/image", params={"rel": "10_kit/a.png"}).json()["trainer"]
    assert a["bucket"] == [128, 192] and a["scale"] == 0.96 and not a["upscaled"] and a["max_tokens"] == 150
    buckets = {f["folder"]: dict(f["buckets"]) for f in client.get("/api/training").json()["folders"]}
    plan = train_json("plan", config)
    counted = {}
    for folder in buckets.values():
        for bucket, n in folder.items():
            counted[bucket] = counted.get(bucket, 0) + n
    assert counted == plan["buckets"]  # the page and train plan: the same buckets


def test_a_config_that_does_not_load_stops_review_before_it_serves(tmp_path):
    root = dataset(tmp_path / "data")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nresolution = 'huge'\n")
    failed = run("lorakit", "review", root, "--config", bad, check=2)
    assert "bad.toml" in failed.stderr and "resolution" in failed.stderr and "http://" not in failed.stderr


class Recording(dict):
    """The server's progress table, remembering every report."""
    def __init__(self):
        super().__init__()
        self.seen = []

    def __setitem__(self, job, value):
        self.seen.append((job, value["what"], value["stage"], value["done"], value["total"]))
        super().__setitem__(job, value)


def test_long_requests_tell_their_progress_and_forget_it_after(tmp_path):
    root = dataset(tmp_path / "data")
    review, client = client_for(root)
    review.progress = Recording()
    done = client.post("/api/bulk", json={"add": ["smile"], "job": "job-1"}).json()
    assert len(done["changed"]) == 7
    stages = [(what, stage, n, total) for job, what, stage, n, total in review.progress.seen if job == "job-1"]
    assert ("bulk edit", "reading captions", 0, 7) in stages
    assert stages[-1] == ("bulk edit", "writing captions", 7, 7)
    assert client.get("/api/progress", params={"job": "job-1"}).json() == {}  # done: forgotten
    client.get("/api/images", params={"duplicates": "1", "job": "dup"})
    assert [s[2] for s in review.progress.seen if s[0] == "dup"] == ["comparing images"]
    assert client.get("/api/progress", params={"job": "../x"}).status_code == 400
    assert client.post("/api/bulk", json={"add": ["x"], "job": "a b"}).status_code == 400


def test_the_tagger_from_the_page_tags_the_picked_images_only(tmp_path):
    root = dataset(tmp_path / "data")
    write_tagger(tmp_path / "tagger", "danbooru")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.txt")}
    copy = shutil.copytree(root, tmp_path / "copy")
    review, client = client_for(root, tagger=AutoOptions("danbooru", model_dir=tmp_path / "tagger"))
    review.progress = Recording()
    done = client.post("/api/tag-auto", json={"rels": ["10_kit/a.png", "10_kit/c.png"], "mode": "merge", "job": "t"})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["of"] == 2 and sorted(body["changed"]) == ["10_kit/a.txt", "10_kit/c.txt"]
    run("tag", "auto", copy, "--model-dir", tmp_path / "tagger", "--mode", "merge")  # the command, on a copy
    for name in ("a.txt", "c.txt"):  # the same captions: the page runs tag auto's own composition
        assert (root / "10_kit" / name).read_bytes() == (copy / "10_kit" / name).read_bytes()
    assert "red hair" in (root / "10_kit" / "a.txt").read_text()  # merge kept the hand-written tags
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.txt")}
    assert {n for n in before if before[n] != after.get(n)} == {"a.txt"}  # the rest byte for byte
    assert ("t", "tag auto", "tagging", 2, 2) in review.progress.seen
    assert client.get("/api/images", params={"q": "kit"}).json()["count"] >= 1  # the page reads the new captions
    client.post("/api/undo", json={})
    assert hashlib.sha256((root / "10_kit" / "a.txt").read_bytes()).hexdigest() == before["a.txt"]
    assert not (root / "10_kit" / "c.txt").exists()
    bad = client.post("/api/tag-auto", json={"rels": ["10_kit/a.png"], "mode": "replace"})
    assert bad.status_code == 400 and "mode" in bad.json()["error"]
    assert client.post("/api/tag-auto", json={"rels": ["../outside.png"]}).json()["error"] == "no images to tag"


def test_the_tagger_from_the_page_says_when_no_model_is_at_hand(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    root = dataset(tmp_path / "data")
    before = {p.name: p.read_bytes() for p in root.rglob("*.txt")}
    _, client = client_for(root)
    answer = client.post("/api/tag-auto", json={"rels": ["10_kit/a.png"]})
    assert answer.status_code == 400 and answer.json()["error"]
    assert {p.name: p.read_bytes() for p in root.rglob("*.txt")} == before


def test_edits_made_elsewhere_show_after_a_rescan(tmp_path):
    root = dataset(tmp_path / "data")
    _, client = client_for(root)
    assert client.get("/api/rescan").json() == {"changed": False}
    run("lorakit", "tag", "edit", root, "--add", "clitag", "--folder", "5_bg")  # the CLI, while the page is open
    Image.new("RGB", (300, 200), "blue").save(root / "10_kit" / "new.png")
    (root / "5_bg" / "tiny.png").unlink()
    assert client.get("/api/rescan").json() == {"changed": True}
    found = client.get("/api/images", params={"q": "clitag"}).json()
    assert found["count"] == 3 and found["total"] == 7  # one image gone, one new; the tag found
    new = client.get("/api/image", params={"rel": "10_kit/new.png"}).json()
    assert (new["width"], new["height"]) == (300, 200) and client.get("/thumb", params={"rel": "10_kit/new.png"}).status_code == 200
    (root / "10_kit" / "a.txt").write_text("edited by hand\n")
    assert client.get("/api/rescan").json() == {"changed": True}
    assert client.get("/api/images", params={"q": "edited by hand"}).json()["count"] == 1
