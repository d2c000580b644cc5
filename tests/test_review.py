"""lorakit review through Starlette's test client: what the page asks for and what it writes
(filters, tag marks, edits and conflicts, bulk edits, undo, exclusion), and what it refuses
(writes without the token, from another origin, read-only; files that are not the dataset's)."""

import json
import os

import numpy as np
import pytest
from conftest import run
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from lorakit.review.cli import prepare  # noqa: E402
from lorakit.review.server import Review  # noqa: E402
from lorakit.tagging.relations import load as relations  # noqa: E402


def dataset(root):
    kit, bg = root / "10_kit", root / "5_bg"
    kit.mkdir(parents=True)
    bg.mkdir()
    for name, colour, caption in (("a", (200, 30, 30), "kitchan, red hair, hat"), ("b", (30, 200, 30), "kitchan, red hair"),
                                  ("c", (30, 30, 200), None)):
        Image.new("RGB", (160, 200), colour).save(kit / f"{name}.png")
        if caption:
            (kit / f"{name}.txt").write_text(caption + "\n")
    blocks = np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    big = Image.fromarray(blocks).resize((256, 256), Image.BICUBIC)
    big.save(bg / "big.png")
    big.resize((128, 128), Image.BILINEAR).save(bg / "copy.png")  # the same picture, smaller
    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(bg / "noisy.png")
    Image.new("RGB", (32, 32), (9, 9, 9)).save(bg / "tiny.png")
    for name in ("big", "copy", "noisy", "tiny"):
        (bg / f"{name}.txt").write_text("simple background, red hairband, hairband\n")
    return root


@pytest.fixture
def site(tmp_path):
    root = dataset(tmp_path / "data")
    data = prepare(root, 1, False)  # in this process: a pool forked from pytest (torch threads) can deadlock
    review = Review(data, relations=relations("danbooru"))
    client = TestClient(review.app())
    client.headers["X-Lorakit-Token"] = review.token
    return root, review, client


def images(client, **query):
    return client.get("/api/images", params=query).json()


def test_thumbnails_are_made_once_and_the_filters_select(site):
    root, review, client = site
    thumbs = sorted((root / ".lorakit" / "thumbs").glob("*.jpg"))
    assert len(thumbs) == 7 and prepare(root, 1, False).cache.missing(list(review.data.entries)) == []
    assert client.get("/").status_code == 200 and review.token in client.get("/").text
    everything = images(client)
    assert everything["count"] == everything["total"] == 7
    assert {f["folder"]: f["repeats"] for f in everything["folders"]} == {"10_kit": 10, "5_bg": 5}
    rels = lambda **q: [i["rel"] for i in images(client, **q)["items"]]  # noqa: E731
    assert rels(q="red hair -hat") == ["10_kit/b.png"]
    assert rels(q="Red_Hair") == ["10_kit/a.png", "10_kit/b.png"]
    assert rels(q="*hairband") == ["5_bg/big.png", "5_bg/copy.png", "5_bg/noisy.png", "5_bg/tiny.png"]
    assert rels(folder="10_kit", no_caption="1") == ["10_kit/c.png"]
    assert rels(smaller_than="64") == ["5_bg/tiny.png"]
    assert rels(flagged="1") == ["5_bg/noisy.png"]
    assert rels(duplicates="1") == ["5_bg/big.png", "5_bg/copy.png"]  # the larger first, as curate dedupe keeps
    assert images(client, per_page=2, page=2)["items"][0]["rel"] == "10_kit/c.png"
    assert client.get("/thumb", params={"rel": "10_kit/a.png"}).headers["content-type"] == "image/jpeg"


def test_tag_panel_marks_implied_and_unknown_tags_and_completes(site):
    _, review, client = site
    tags = {t["tag"]: t for t in client.get("/api/tags", params={"folder": "5_bg"}).json()["tags"]}
    assert tags["hairband"]["implied"] == 4 and tags["red_hairband"]["implied"] == 0  # in each of its 4 captions
    assert tags["hairband"]["images"] == 4
    completions = [t["tag"] for t in client.get("/api/complete", params={"prefix": "red"}).json()["tags"]]
    assert completions[:2] == ["red hairband", "red hair"]  # the dataset's, most frequent first

    from lorakit.tagging.relations import Relations

    review.relations = Relations("danbooru", implies={"red_hairband": ["hairband"]},
                                 categories={"red_hair": 0, "hat": 0, "hairband": 0, "red_hairband": 0, "red_eyes": 0})
    tags = {t["tag"]: t for t in client.get("/api/tags").json()["tags"]}
    assert tags["kitchan"]["unknown"] and tags["simple_background"]["unknown"] and not tags["red_hair"]["unknown"]
    assert {"tag": "red eyes"} in client.get("/api/complete", params={"prefix": "red"}).json()["tags"]  # then the vocabulary's


def test_completion_order_aliases_and_word_starts(site):
    _, review, client = site
    from lorakit.tagging.relations import Relations

    # the tag list's own order is its ranking; golden_hair -> yellow_hair -> blonde_hair is a chain
    review.relations = Relations("danbooru", categories=dict.fromkeys(
        ["hair_ornament", "hairband", "blonde_hair", "hair_bow", "red_eyes", "red_hair", "long_hair"], 0),
        aliases={"yellow_hair": "blonde_hair", "golden_hair": "yellow_hair", "blond_hair": "blonde_hair"})

    def complete(prefix, **more):
        return client.get("/api/complete", params={"prefix": prefix, **more}).json()["tags"]

    # tags that start with it (the dataset's most used first, then the list's in its order), then
    # those with a later word that does (the same two groups); each once, aliases folded into their tag
    assert [t["tag"] for t in complete("hair")] == ["hairband", "hair ornament", "hair bow", "red hairband", "red hair",
                                                    "blonde hair", "long hair"]
    assert complete("Hair  B") == [{"tag": "hair bow"}]  # spelled as a caption spells it
    assert complete("yell") == [{"tag": "blonde hair", "alias": "yellow hair"}]
    assert complete("gold") == [{"tag": "blonde hair", "alias": "golden hair"}]  # a chain is followed
    assert complete("blond") == [{"tag": "blonde hair"}]  # its own name matched too: no alias to show
    assert complete("bow") == [{"tag": "hair bow"}]
    assert complete("red", limit=2) == [{"tag": "red hairband"}, {"tag": "red hair"}]
    assert complete("zzz") == [] and [t["tag"] for t in complete("")][:3] == ["hairband", "red hairband",
                                                                            "simple background"]


def test_edit_conflict_bulk_and_undo(site):
    root, _, client = site
    caption = root / "10_kit" / "b.txt"
    item = next(i for i in images(client)["items"] if i["rel"] == "10_kit/b.png")
    saved = client.post("/api/caption", json={"rel": "10_kit/b.png", "version": item["version"],
                                              "caption": "kitchan, red hair, smile"})
    assert saved.status_code == 200 and caption.read_text() == "kitchan, red hair, smile\n"
    assert len(list((root / ".lorakit" / "backups").glob("*review-edit.json"))) == 1
    caption.write_text("kitchan, changed elsewhere\n")  # another program wrote it meanwhile
    stale = client.post("/api/caption", json={"rel": "10_kit/b.png", "version": saved.json()["version"],
                                              "caption": "kitchan, mine"})
    assert stale.status_code == 409 and stale.json()["disk"] == "kitchan, changed elsewhere"
    assert stale.json()["yours"] == "kitchan, mine" and caption.read_text() == "kitchan, changed elsewhere\n"

    before = {p.name: p.read_bytes() for p in (root / "10_kit").glob("*.txt")}
    preview = client.post("/api/bulk", json={"query": {"folder": "10_kit"}, "add": ["solo"], "remove": ["hat"],
                                             "dry_run": True})
    assert preview.json()["of"] == 3 and len(preview.json()["changed"]) == 3
    assert ["10_kit/a.txt", "hat", "solo"] in preview.json()["sample"]  # how each changes, before it does
    assert {p.name: p.read_bytes() for p in (root / "10_kit").glob("*.txt")} == before
    bulk = client.post("/api/bulk", json={"query": {"folder": "10_kit"}, "add": ["solo"], "remove": ["hat"]})
    assert sorted(bulk.json()["changed"]) == ["10_kit/a.png", "10_kit/b.png", "10_kit/c.png"]
    assert (root / "10_kit" / "a.txt").read_text() == "kitchan, red hair, solo\n"
    assert (root / "10_kit" / "c.txt").read_text() == "solo\n"  # tags added: a caption is made
    run("tag", "undo", root)  # the command line reverts the page's last change
    assert (root / "10_kit" / "a.txt").read_text() == "kitchan, red hair, hat\n"
    assert not (root / "10_kit" / "c.txt").exists()
    # the page reverts the one before; b.txt was changed elsewhere since, so it asks first
    preview = client.post("/api/undo", json={"dry_run": True})
    assert preview.status_code == 200 and preview.json()["conflicts"] == ["10_kit/b.txt"]
    refused = client.post("/api/undo", json={})
    assert refused.status_code == 400 and "changed since" in refused.json()["error"]
    assert caption.read_text() == "kitchan, changed elsewhere\n"
    undone = client.post("/api/undo", json={"force": True})
    assert undone.status_code == 200 and caption.read_text() == "kitchan, red hair\n"
    redone = client.post("/api/redo", json={})  # and back again
    assert redone.status_code == 200 and caption.read_text() == "kitchan, changed elsewhere\n"


def test_exclude_moves_and_restore_brings_back(site):
    root, _, client = site
    assert client.post("/api/exclude", json={"rel": "5_bg/tiny.png"}).status_code == 200
    assert (root / ".lorakit" / "excluded" / "5_bg" / "tiny.png").is_file()
    assert (root / ".lorakit" / "excluded" / "5_bg" / "tiny.txt").is_file() and not (root / "5_bg" / "tiny.png").exists()
    assert client.get("/api/excluded").json()["excluded"] == ["5_bg/tiny.png"]
    assert images(client)["total"] == 6
    assert client.post("/api/restore", json={"rel": "5_bg/tiny.png"}).status_code == 200
    assert (root / "5_bg" / "tiny.png").is_file() and images(client)["total"] == 7
    assert client.post("/api/restore", json={"rel": "../../etc/passwd"}).status_code == 400


def test_writes_need_the_token_the_origin_and_json(site):
    root, review, client = site
    body = {"query": {}, "add": ["x"]}
    assert client.post("/api/bulk", json=body, headers={"X-Lorakit-Token": "guess"}).status_code == 403
    evil = client.post("/api/bulk", json=body, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "cross-origin" in evil.json()["error"]
    assert client.post("/api/bulk", json=body, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.post("/api/bulk", content=json.dumps(body), headers={"Content-Type": "text/plain"}).status_code == 415
    assert not any("x" in p.read_text() for p in root.rglob("*.txt") if ".lorakit" not in p.parts)
    review.read_only = True
    assert client.post("/api/bulk", json=body).status_code == 403


def test_only_the_datasets_images_are_served(site, tmp_path):
    root, review, client = site
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    os.symlink(secret, root / "10_kit" / "link.png")
    review.data.reload()
    for rel in ("../secret.png", "10_kit/a.txt", "10_kit/link.png", "/etc/passwd", ".lorakit/thumbs/facts.json"):
        assert client.get("/file", params={"rel": rel}).status_code == 404, rel
    assert client.get("/file", params={"rel": "10_kit/a.png"}).status_code == 200


def test_detail_shows_the_taggers_probabilities(site):
    root, review, client = site
    from lorakit.tagging.auto import save_sidecars
    from lorakit.tagging.models import TagInfo

    info = TagInfo(("general", "red_hair", "hat"), (9, 0, 0))
    save_sidecars(root, {__import__("pathlib").Path("10_kit/a.png"): np.array([0.9, 0.8, 0.3], np.float32)}, info, "wd")
    detail = client.get("/api/image", params={"rel": "10_kit/a.png"}).json()
    assert detail["probabilities"]["model"] == "wd"
    assert [t["tag"] for t in detail["probabilities"]["tags"]] == ["general", "red hair", "hat"]
    assert detail["width"] == 160 and detail["format"] == "PNG"
    assert client.get("/api/image", params={"rel": "10_kit/b.png"}).json()["probabilities"] is None
    # the threshold slider's caption, composed as `tag auto --rethreshold` writes it: the folder's
    # trigger first, the rating kept apart, tags under the threshold left out
    at = client.get("/api/rethreshold", params={"rel": "10_kit/a.png", "general": 0.5}).json()
    assert at == {"tags": ["kit", "red hair"], "rating": "general"}
    assert client.get("/api/rethreshold", params={"rel": "10_kit/a.png", "general": 0.2}).json()["tags"] == [
        "kit", "red hair", "hat"]
    assert client.get("/api/rethreshold", params={"rel": "10_kit/b.png"}).status_code == 404
    assert client.get("/api/rethreshold", params={"rel": "10_kit/a.png", "general": "x"}).status_code == 400


def test_duplicates_come_with_their_group_and_a_foreign_host_is_refused(site):
    _, review, client = site
    items = images(client, duplicates="1")["items"]
    assert [i["group"] for i in items] == [1, 1]
    review.allowed_hosts = {"127.0.0.1:8765"}
    assert client.get("/", headers={"Host": "evil.example:8765"}).status_code == 421  # DNS rebinding
    assert client.get("/", headers={"Host": "127.0.0.1:8765"}).status_code == 200
    evil = {"Host": "evil.example:8765"}  # every route, not only the page: nothing is read through it
    for path, params in (("/api/images", {}), ("/api/tags", {}), ("/api/image", {"rel": "10_kit/a.png"}),
                         ("/file", {"rel": "10_kit/a.png"}), ("/thumb", {"rel": "10_kit/a.png"}),
                         ("/api/complete", {"prefix": "red"}), ("/api/excluded", {}), ("/static/app.js", {})):
        assert client.get(path, params=params, headers=evil).status_code == 421, path
        assert client.get(path, params=params, headers={"Host": "127.0.0.1:8765"}).status_code == 200, path
    assert client.post("/api/undo", json={}, headers=evil).status_code == 421


def test_listening_beyond_this_machine_is_warned_of(tmp_path):
    import signal
    import subprocess
    import time

    from conftest import BIN, OFFLINE

    root = dataset(tmp_path / "data")
    proc = subprocess.Popen([str(BIN / "lorakit"), "review", str(root), "--host", "0.0.0.0", "-j", "1"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **OFFLINE})
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline and not any(line.startswith("http://") for line in lines):
        lines.append(proc.stderr.readline())
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    text = " ".join("".join(lines).split())
    assert "warning: listening on 0.0.0.0: other machines can reach this page" in text
    assert "?key=" in lines[-1]  # the address carries the key a browser needs


def test_beyond_loopback_every_route_needs_the_key_the_terminal_printed(site):
    root, review, client = site
    review.key, review.cookie = "the-printed-key", "lorakit_key_8765"  # one cookie per port: two servers keep theirs
    client.headers.pop("X-Lorakit-Token")
    anyone = {"Host": "192.168.1.20:8765"}
    for path in ("/", "/api/images", "/file?rel=10_kit/a.png", "/static/app.js", "/?key=guess"):
        response = client.get(path, headers=anyone)
        assert response.status_code == 401 and review.token not in response.text, path
    assert client.post("/api/undo", json={}, headers={**anyone, "X-Lorakit-Token": review.token}).status_code == 401
    traded = client.get("/?key=the-printed-key", headers=anyone, follow_redirects=False)
    assert traded.status_code == 303 and traded.headers["location"] == "/"
    cookie = traded.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and cookie.startswith("lorakit_key_8765=the-printed-key")
    page = client.get("/", headers=anyone)  # the client keeps the cookie, as a browser does
    assert page.status_code == 200 and review.token in page.text
    assert client.get("/api/images", headers=anyone).status_code == 200


@pytest.mark.parametrize("action, body, reason", [
    ("bulk", {"add": "abc"}, "add: Input should be a valid list"),
    ("bulk", {"add": ["a"], "query": {"flagged": 1}}, "query.flagged"),
    ("bulk", {"replace": [["only one"]]}, "replace.0"),
    ("caption", [1, 2], "valid dictionary"),
    ("caption", {"rel": "10_kit/a.png", "version": "", "caption": 5}, "caption: Input should be a valid string"),
    ("exclude", {"rel": "10_kit/a.png", "extra": 1}, "extra: Extra inputs are not permitted"),
    ("nothing", {}, "unknown action"),
])
def test_malformed_bodies_are_refused_with_the_reason(site, action, body, reason):
    root, _, client = site
    from conftest import tree_digest

    before = tree_digest(root / "10_kit")
    response = client.post(f"/api/{action}", json=body)
    assert response.status_code == 400 and reason in response.json()["error"], response.text
    assert tree_digest(root / "10_kit") == before


@pytest.mark.parametrize("path", ["/api/images?page=abc", "/api/images?per_page=0", "/api/images?smaller_than=x",
                                  "/api/complete?limit=abc", "/api/tags?smaller_than=-1"])
def test_malformed_query_values_are_refused_with_the_reason(site, path):
    _, _, client = site
    response = client.get(path)
    assert response.status_code == 400 and response.json()["error"], response.text


def test_a_caption_linked_outside_the_dataset_is_not_served(site, tmp_path):
    root, review, client = site
    secret = tmp_path / "secret.txt"
    secret.write_text("password123\n")
    (root / "10_kit" / "c.txt").symlink_to(secret)
    review.data.reload()
    item = next(i for i in images(client)["items"] if i["rel"] == "10_kit/c.png")
    assert item["caption"] is None and "password123" not in client.get("/api/tags").text


def test_page_writes_take_the_datasets_lock_and_keep_the_captions_other_lines(site):
    from lorakit.locks import folder_lock

    root, review, client = site
    caption = root / "10_kit" / "b.txt"
    caption.write_bytes(b"\xef\xbb\xbfkitchan, red hair\r\nA girl with red hair.\r\n")
    review.data.reload()
    item = next(i for i in images(client)["items"] if i["rel"] == "10_kit/b.png")
    assert item["text"] == "kitchan, red hair\nA girl with red hair."  # the page edits every line
    body = {"rel": "10_kit/b.png", "version": item["version"], "caption": "kitchan, red hair, smile\nA girl with red hair."}
    with folder_lock(root, "tag edit"):  # a `tag edit` running on the same dataset
        busy = client.post("/api/caption", json=body)
        assert busy.status_code == 400 and "in use by `tag edit`" in busy.json()["error"]
        assert client.post("/api/exclude", json={"rel": "10_kit/a.png"}).status_code == 400
        assert (root / "10_kit" / "a.png").is_file()
    assert caption.read_bytes() == b"\xef\xbb\xbfkitchan, red hair\r\nA girl with red hair.\r\n"
    saved = client.post("/api/caption", json=body)
    assert saved.status_code == 200
    assert caption.read_bytes() == b"\xef\xbb\xbfkitchan, red hair, smile\r\nA girl with red hair.\r\n"
    again = client.post("/api/caption", json={**body, "version": saved.json()["version"],
                                              "caption": "kitchan, red hair, smile, Red Hair, red_hair\nA girl with red hair."})
    assert again.status_code == 200  # a tag the caption already has is not written twice
    assert caption.read_bytes() == b"\xef\xbb\xbfkitchan, red hair, smile\r\nA girl with red hair.\r\n"


def test_a_bomb_or_a_broken_file_fails_alone_and_the_page_starts(tmp_path):
    from conftest import bomb_png

    root = dataset(tmp_path / "data")
    bomb_png(root / "5_bg" / "bomb.png")
    (root / "5_bg" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    data = prepare(root, 1, False)
    assert data.entries["5_bg/bomb.png"].facts.error and data.entries["5_bg/bomb.png"].facts.width == 0
    assert data.entries["10_kit/a.png"].facts.width == 160
    client = TestClient(Review(data).app())
    shown = {i["rel"]: i for i in client.get("/api/images", params={"per_page": 500}).json()["items"]}
    assert shown["5_bg/bomb.png"]["error"] and not shown["10_kit/a.png"]["error"]


def test_a_linked_caption_is_not_written_through_and_a_linked_lorakit_folder_is_refused(site, tmp_path):
    root, review, client = site
    inside = root / "10_kit" / "a.txt"
    real = root / "elsewhere.txt"
    inside.rename(real)
    inside.symlink_to(real)
    review.data.reload()
    item = next(i for i in images(client)["items"] if i["rel"] == "10_kit/a.png")
    refused = client.post("/api/caption", json={"rel": "10_kit/a.png", "version": item["version"], "caption": "x"})
    assert refused.status_code == 400 and "is a link" in refused.json()["error"]
    assert inside.is_symlink() and real.read_text() == "kitchan, red hair, hat\n"
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / ".lorakit" / "excluded").symlink_to(outside)
    assert client.post("/api/exclude", json={"rel": "10_kit/b.png"}).status_code == 400
    assert list(outside.iterdir()) == [] and (root / "10_kit" / "b.png").is_file()


def test_a_bulk_edit_of_images_picked_by_hand_changes_only_those(site):
    root, _, client = site
    before = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.txt")}
    body = {"rels": ["5_bg/big.png", "10_kit/a.png", "../../etc/passwd", "5_bg/big.png"], "add": ["picked"]}
    done = client.post("/api/bulk", json=body)
    assert done.status_code == 200 and sorted(done.json()["changed"]) == ["10_kit/a.png", "5_bg/big.png"]
    after = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.txt")}
    assert {k for k in after if after[k] != before.get(k)} == {"10_kit/a.txt", "5_bg/big.txt"}
    assert client.post("/api/bulk", json={"rels": "10_kit/a.png", "add": ["x"]}).status_code == 400
