"""The review page against a hostile or careless folder (found by a hostile tester): excluded
images, shared captions, linked folders, crafted files of lorakit's own. Checked on the files."""

import hashlib
import json

import pytest
from PIL import Image
from test_review import dataset
from test_review_trainer import client_for

pytest.importorskip("starlette")


def digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink() and p.name != "lock"}  # the lock: lorakit's


def test_a_caption_two_images_share_stays_with_the_one_left(tmp_path):
    root = dataset(tmp_path / "data")
    Image.new("RGB", (40, 40), "red").save(root / "10_kit" / "a.jpg")  # a.png and a.jpg both read a.txt
    _, client = client_for(root)
    answer = client.post("/api/exclude", json={"rel": "10_kit/a.jpg"}).json()
    assert answer["notes"] == ["10_kit/a.txt stays: another image of that name reads it too"]
    assert (root / "10_kit" / "a.txt").read_text() == "kitchan, red hair, hat\n"
    assert (root / ".lorakit" / "excluded" / "10_kit" / "a.jpg").is_file()
    assert client.post("/api/restore", json={"rel": "10_kit/a.jpg"}).status_code == 200
    assert (root / "10_kit" / "a.jpg").is_file() and (root / "10_kit" / "a.txt").is_file()


def test_nothing_moves_unless_everything_can(tmp_path):
    root = dataset(tmp_path / "data")
    _, client = client_for(root)
    (root / ".lorakit" / "excluded" / "10_kit").mkdir(parents=True)
    (root / ".lorakit" / "excluded" / "10_kit" / "a.txt").write_text("an old excluded caption\n")
    before = digest(root)
    refused = client.post("/api/exclude", json={"rel": "10_kit/a.png"})
    assert refused.status_code == 400 and "nothing was moved" in refused.json()["error"]
    assert digest(root) == before  # the image did not move without its caption
    assert client.get("/api/image", params={"rel": "10_kit/a.png"}).status_code == 200


def test_an_excluded_folder_that_links_outside_is_neither_listed_nor_restored_from(tmp_path):
    root = dataset(tmp_path / "data")
    outside = tmp_path / "outside"
    (outside / "pics").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(outside / "pics" / "private.png")
    (root / ".lorakit").mkdir(exist_ok=True)
    (root / ".lorakit" / "excluded").symlink_to(outside, target_is_directory=True)
    _, client = client_for(root)
    listed = client.get("/api/excluded")
    assert listed.status_code == 400 and listed.json()["excluded"] == [] and "is a link" in listed.json()["error"]
    assert client.post("/api/restore", json={"rel": "pics/private.png"}).status_code == 400
    assert (outside / "pics" / "private.png").is_file() and not (root / "pics").exists()


def test_a_backup_naming_an_image_is_refused_by_the_pages_undo(tmp_path):
    root = dataset(tmp_path / "data")
    (root / ".lorakit" / "backups").mkdir(parents=True)
    (root / ".lorakit" / "backups" / "99999999-000000-000000-review-edit.json").write_text(json.dumps(
        {"command": "review-edit", "changed": {"10_kit/a.png": "text"}, "created": ["10_kit/b.png"]}))
    _, client = client_for(root)
    before = digest(root)
    assert client.post("/api/undo", json={}).status_code == 400
    after = digest(root)
    assert {k: v for k, v in after.items() if "backups" not in k} == {k: v for k, v in before.items() if "backups" not in k}


def test_a_caption_the_page_cannot_edit_does_not_stop_a_bulk_edit_of_others(tmp_path):
    root = dataset(tmp_path / "data")
    (root / "5_bg" / "tiny.txt").write_bytes("a, b\n".encode("utf-16"))  # UTF-16: not edited by lorakit
    _, client = client_for(root)
    preview = client.post("/api/bulk", json={"add": ["newtag"], "rels": ["10_kit/a.png"], "dry_run": True})
    assert preview.status_code == 200 and preview.json()["changed"] == ["10_kit/a.png"]
    done = client.post("/api/bulk", json={"add": ["newtag"], "rels": ["10_kit/a.png", "5_bg/tiny.png"]}).json()
    assert done["changed"] == ["10_kit/a.png"] and "UTF-16" in done["failed"][0]  # said, with what did change
    assert client.get("/api/images", params={"q": "newtag"}).json()["count"] == 1


def test_a_caption_file_that_appeared_meanwhile_is_edited_and_read_back(tmp_path):
    root = dataset(tmp_path / "data")
    _, client = client_for(root)
    (root / "10_kit" / "c.caption").write_text("foo, bar\n")  # c.png had no caption when the page read it
    done = client.post("/api/bulk", json={"add": ["zzz"], "rels": ["10_kit/c.png"]})
    assert done.status_code == 200 and done.json()["changed"] == ["10_kit/c.png"]
    assert (root / "10_kit" / "c.caption").read_text() == "foo, bar, zzz\n"
    assert client.get("/api/images", params={"q": "zzz"}).json()["count"] == 1


def test_loops_fifos_links_out_and_crafted_facts_fail_alone(tmp_path):
    import os

    root = dataset(tmp_path / "data")
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (20, 20)).save(outside / "private.png")
    (outside / "private.jpg").write_bytes(b"secret")
    (root / "10_kit" / "loop.png").symlink_to("loop.png")  # a link to itself
    os.mkfifo(root / "10_kit" / "fifo.png")  # reading it would wait forever
    os.mkfifo(root / "10_kit" / "b2.txt")
    Image.new("RGB", (8, 8)).save(root / "10_kit" / "b2.png")
    (root / "10_kit" / "out.png").symlink_to(outside / "private.png")
    review, client = client_for(root)  # starts: nothing hangs, nothing raises
    for rel, why in (("10_kit/loop.png", ""), ("10_kit/fifo.png", "not a regular file"),
                     ("10_kit/out.png", "leads outside the dataset")):
        assert why in review.data.entries[rel].facts.error
    assert client.get("/api/image", params={"rel": "10_kit/loop.png"}).status_code == 404
    assert client.get("/api/image", params={"rel": "10_kit/b2.png"}).json()["caption"] is None
    assert client.get("/api/training").status_code == 200
    # a facts.json whose digest names a file elsewhere is not trusted: the thumbnail is made again
    facts = json.loads((root / ".lorakit" / "thumbs" / "facts.json").read_text())
    facts["entries"]["10_kit/a.png"][2]["digest"] = str(outside / "private")
    (root / ".lorakit" / "thumbs" / "facts.json").write_text(json.dumps(facts))
    review, client = client_for(root)
    assert client.get("/thumb", params={"rel": "10_kit/a.png"}).content != b"secret"
    for damaged in ("[]", "null", '"x"', '{"version": 1, "entries": []}', '{"entries": {"10_kit/a.png": 5}}'):
        (root / ".lorakit" / "thumbs" / "facts.json").write_text(damaged)
        _, client = client_for(root)
        assert client.get("/api/images").json()["total"] == 11
    done = client.post("/api/bulk", json={"add": ["x"], "rels": ["10_kit/a.png", "10_kit/b2.png"]}).json()
    assert done["changed"] == ["10_kit/a.png"] and "not a regular file" in done["failed"][0]
    assert (root / "10_kit" / "b2.txt").is_fifo()


def test_requests_that_used_to_raise_are_answered(tmp_path):
    import threading

    root = dataset(tmp_path / "data")
    review, client = client_for(root)
    from lorakit.review.server import _same

    assert not _same("é", review.token)  # compare_digest refused non-ASCII text: a 500 with a traceback
    review.key = "k"  # as with --host 0.0.0.0: a key in the address
    assert client.get("/", params={"key": "é"}).status_code == 401
    review.key = None
    for tag in ("x\ny", "a,b", "nul\x00"):  # a line break would start a line 2; a comma is two tags
        assert client.post("/api/bulk", json={"add": [tag], "rels": ["10_kit/a.png"]}).status_code == 400
    assert (root / "10_kit" / "a.txt").read_text() == "kitchan, red hair, hat\n"
    review._writing.acquire()  # a long write under way (the tagger): the next one says so after 2 s
    threading.Timer(5, review._writing.release).start()
    busy = client.post("/api/caption", json={"rel": "10_kit/a.png", "version": "", "caption": "x"})
    assert busy.status_code == 423 and "busy" in busy.json()["error"]
    (root / "10_kit" / ".lorakit-tags.npz").write_bytes(b"not a zip")  # a damaged sidecar: the image still opens
    assert client.get("/api/image", params={"rel": "10_kit/a.png"}).json()["probabilities"] is None
    assert client.get("/api/rethreshold", params={"rel": "10_kit/a.png"}).status_code == 404


def test_a_config_that_is_not_a_file_is_refused(tmp_path):
    from conftest import run

    from lorakit.train.config_toml import ConfigError, load

    root = dataset(tmp_path / "data")
    with pytest.raises(ConfigError, match="is not a file"):  # a folder
        load(tmp_path)
    failed = run("lorakit", "review", root, "--config", "/dev/zero", check=2)  # read forever, before
    assert "is not a file" in failed.stderr and "Traceback" not in failed.stderr


def test_read_only_writes_nothing_in_the_dataset(tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    from lorakit.review.cli import prepare
    from lorakit.review.server import Review

    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    root = dataset(tmp_path / "data")
    before = digest(root)
    review = Review(prepare(root, 1, False, read_only=True), read_only=True)
    client = TestClient(review.app())
    assert client.get("/thumb", params={"rel": "10_kit/a.png"}).headers["content-type"] == "image/jpeg"
    assert client.get("/api/rescan").status_code == 200 and client.get("/api/training").status_code == 200
    assert digest(root) == before and not (root / ".lorakit").exists()  # thumbnails kept in lorakit's cache
    assert list((tmp_path / "cache" / "review").glob("*/*.jpg"))
