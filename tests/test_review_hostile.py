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
