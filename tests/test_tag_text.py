"""The tag commands that work on caption text: prune, edit, undo, translate, stats, balance,
lists update. Real relation data from ../shared/data/tags is used where present."""

import gzip
import http.server
import json
import threading
from pathlib import Path

import pytest
from conftest import ROOT, by_path, cli, cli_json
from make_sample import character

from lorakit.tagging.balance import repeats_for
from lorakit.tagging.prune import prune
from lorakit.tagging.relations import builtin
from lorakit.tagging.spelling import display, key

SHARED = ROOT.parent / "shared" / "data" / "tags"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/tags is absent")


def dataset(tmp_path, captions: dict[str, str]) -> Path:
    root = tmp_path / "data"
    for rel, text in captions.items():
        image = root / rel
        image.parent.mkdir(parents=True, exist_ok=True)
        character((32, 40)).save(image)
        if text is not None:
            image.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    return root


def caption(root, rel) -> str:
    return (root / rel).with_suffix(".txt").read_text(encoding="utf-8").strip()


def test_spelling():
    assert key(" Long Hair ") == key("long_hair") == "long_hair"
    assert key("jinx \\(league of legends\\)") == "jinx_(league_of_legends)"
    assert key("^_^") == "^_^" and display("^_^") == "^_^"
    assert display("long_hair") == "long hair"
    assert display("jinx_(lol)", escape=True) == "jinx \\(lol\\)"


def test_builtin_relations_prune_the_guides_examples():
    rel = builtin("danbooru")
    out = prune(["very long hair", "long hair", "fingerless gloves", "gloves", "1girls", "absurdres",
                 "highres", "cat ears", "animal ears", "serafuku", "school uniform"], rel)
    assert out.tags == ["very long hair", "fingerless gloves", "1girl", "absurdres", "cat ears", "serafuku"]
    assert out.renamed == [("1girls", "1girl")]
    e621 = builtin("e621")
    assert prune(["fox", "canine", "mammal"], e621).tags == ["fox"]


def test_protected_tokens_survive():
    rel = builtin("e621")
    assert prune(["canine", "fox"], rel, protected=frozenset({"canine"})).tags == ["canine", "fox"]
    assert prune(["canine", "fox"], rel, keep_first=1).tags == ["canine", "fox"]
    assert prune(["canine", "fox"], rel).tags == ["fox"]


def test_balance_matches_the_guide():
    assert repeats_for([51, 43, 32], 10) == [10, 12, 16]
    assert repeats_for([50, 25, 10], 10, reduce_common=True) == [1, 2, 5]


def test_prune_command_dry_run_then_apply_then_undo(tmp_path):
    root = dataset(tmp_path, {"10_kitchan/a.png": "kitchan, 1girl, very long hair, long hair, long_hair",
                              "10_kitchan/b.png": "kitchan, solo"})
    dry = cli_json("tag", "prune", root, "--dry-run")
    assert by_path(dry)["10_kitchan/a.txt"]["status"] == "planned"
    assert caption(root, "10_kitchan/a.png").endswith("long hair, long_hair")  # untouched
    assert "long hair" in cli("tag", "prune", root, "--dry-run").stdout
    report = cli_json("tag", "prune", root)
    assert report["counts"] == {"changed": 1, "ok": 1}
    assert caption(root, "10_kitchan/a.png") == "kitchan, 1girl, very long hair"
    cli_json("tag", "undo", root)
    assert caption(root, "10_kitchan/a.png") == "kitchan, 1girl, very long hair, long hair, long_hair"
    cli("tag", "undo", root, check=2)  # nothing left to undo


@needs_shared
def test_real_e621_chains_after_lists_update(tmp_path):
    env = {"LORAKIT_CACHE": str(tmp_path / "cache")}
    files = sorted((SHARED / "e621").glob("*.csv.gz"))
    args = [a for f in files for a in ("--from", f)]
    update = cli_json("tag", "lists", "update", "--vocab", "e621", *args, env=env)
    assert update["aliases"] > 60000 and update["implications"] > 50000
    root = dataset(tmp_path, {"5_rex/a.png": "rex, german shepherd, herding dog, canine, mammal, "
                                             "thighhighs, legwear, clothing, solo",
                              "5_rex/b.png": "rex, red fox, true fox, fox, canine, huge breasts, big breasts"})
    cli("tag", "prune", root, "--vocab", "e621", env=env)
    assert caption(root, "5_rex/a.png") == "rex, german shepherd, thigh highs, solo"
    assert caption(root, "5_rex/b.png") == "rex, red fox, huge breasts"


@needs_shared
def test_real_danbooru_chains(tmp_path):
    env = {"LORAKIT_CACHE": str(tmp_path / "cache")}
    files = sorted((SHARED / "danbooru").glob("*.csv.gz"))
    cli("tag", "lists", "update", "--vocab", "danbooru", *[a for f in files for a in ("--from", f)], env=env)
    root = dataset(tmp_path, {"a.png": "red bikini, bikini, swimsuit, black thighhighs, thighhighs, 1girls"})
    cli("tag", "prune", root, "--vocab", "danbooru", env=env)
    assert caption(root, "a.png") == "red bikini, black thighhighs, 1girl"


def test_e621_download_from_a_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    day = "2026-11-20"
    rows = "id,antecedent_name,consequent_name,created_at,status\n1,fox,canine,,active\n2,wolf,canine,,deleted\n"
    for kind, text in (("tag_implications", rows), ("tag_aliases", "id,antecedent_name,consequent_name,created_at,status\n")):
        with gzip.open(mirror / f"{kind}-{day}.csv.gz", "wt") as f:
            f.write(text)
    with gzip.open(mirror / f"tags-{day}.csv.gz", "wt") as f:
        f.write('fox,5,100,""\ncanine,5,200,""\nwolf,5,50,""\n')
    env = {"LORAKIT_CACHE": str(tmp_path / "cache"), "LORAKIT_E621_EXPORTS": mirror.as_uri()}
    # a fixed date: the export is looked up in the week before it, never from the wall clock
    report = cli_json("tag", "lists", "update", "--vocab", "e621", "--date", "2026-11-24", env=env)
    assert report["implications"] == 1 and report["tags"] == 3
    env["LORAKIT_E621_EXPORTS"] = (tmp_path / "offline").as_uri()
    proc = cli("tag", "lists", "update", "--vocab", "e621", "--date", day, env=env, check=2)
    assert "--from" in proc.stderr


def test_danbooru_api_paging(tmp_path):
    pages = {"tag_implications": [[{"antecedent_name": f"a{i}", "consequent_name": "b", "status": "active"}
                                    for i in range(3)], [{"antecedent_name": "very_long_hair",
                                                          "consequent_name": "long_hair", "status": "active"}]],
             "tag_aliases": [[{"antecedent_name": "1girls", "consequent_name": "1girl", "status": "active"}]]}
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            kind = self.path.split("/")[1].split(".")[0]
            page = int(self.path.split("page=")[1])
            seen.append((kind, page))
            body = json.dumps(pages[kind][page - 1] if page <= len(pages[kind]) else []).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        import os

        from lorakit.tagging import download
        os.environ["LORAKIT_DANBOORU_API"] = f"http://127.0.0.1:{server.server_port}"
        try:
            paths = download.fetch_danbooru(tmp_path, page_size=3)
        finally:
            del os.environ["LORAKIT_DANBOORU_API"]
    finally:
        server.shutdown()
    assert seen == [("tag_implications", 1), ("tag_implications", 2), ("tag_aliases", 1)]
    from lorakit.tagging.relations import build
    rel = build("danbooru", paths, "test")
    assert rel.implied_by("very_long_hair") == {"long_hair"} and rel.canonical("1girls") == "1girl"


def test_edit_operations_and_filters(tmp_path):
    root = dataset(tmp_path, {"10_kit/a.png": "kit, smile, white background, long_hair",
                              "10_kit/b.png": "kit, frown",
                              "5_bob/c.png": "bob, smile, grey background"})
    cli("tag", "edit", root, "--remove", "*_background", "--replace", "long hair=very long hair",
        "--add", "solo", "--at", "1", "--where", "smile")
    assert caption(root, "10_kit/a.png") == "kit, solo, smile, very_long_hair"
    assert caption(root, "10_kit/b.png") == "kit, frown"  # no smile: untouched
    assert caption(root, "5_bob/c.png") == "bob, solo, smile"
    cli("tag", "edit", root, "--front", "smile", "--folder", "kit")
    assert caption(root, "10_kit/a.png") == "smile, kit, solo, very_long_hair"
    assert caption(root, "5_bob/c.png") == "bob, solo, smile"
    cli("tag", "undo", root)
    assert caption(root, "10_kit/a.png") == "kit, solo, smile, very_long_hair"
    cli("tag", "edit", root, "--replace", "nonsense", check=2)


def test_edit_add_creates_missing_captions_and_undo_removes_them(tmp_path):
    root = dataset(tmp_path, {"a.png": None, "b.png": "x"})
    cli("tag", "edit", root, "--add", "kitchan", "--at", "0")
    assert caption(root, "a.png") == "kitchan" and caption(root, "b.png") == "kitchan, x"
    cli("tag", "undo", root)
    assert not (root / "a.txt").exists() and caption(root, "b.png") == "x"


def test_translate_danbooru_to_e621(tmp_path):
    root = dataset(tmp_path, {"10_kit/a.png": "kit, 1girl, from side, thighhighs, outdoors, smile"})
    cli("tag", "translate", root, "--to", "e621", env={"LORAKIT_CACHE": str(tmp_path / "none")})
    assert caption(root, "10_kit/a.png") == "kit, female, side view, thigh highs, outside, smile"
    cli("tag", "translate", root, "--to", "danbooru", env={"LORAKIT_CACHE": str(tmp_path / "none")})
    assert caption(root, "10_kit/a.png") == "kit, 1girl, from side, thighhighs, outdoors, smile"


@needs_shared
def test_translate_reports_tags_without_equivalent(tmp_path):
    env = {"LORAKIT_CACHE": str(tmp_path / "cache")}
    cli("tag", "lists", "update", "--vocab", "e621",
        *[a for f in sorted((SHARED / "e621").glob("*.csv.gz")) for a in ("--from", f)], env=env)
    root = dataset(tmp_path, {"a.png": "1girl, zzz not a tag, smile"})
    report = cli_json("tag", "translate", root, "--to", "e621", env=env)
    unknown = next(v for k, v in report["sections"].items() if "no e621 equivalent" in k)
    assert unknown == [{"tag": "zzz not a tag", "captions": 1}]
    cli("tag", "translate", root, "--to", "e621", "--drop-unknown", env=env)
    assert caption(root, "a.png") == "female, smile"


def test_stats_and_strict(tmp_path):
    many = ", ".join(f"tag{i}" for i in range(22))
    root = dataset(tmp_path, {"10_kit/a.png": "kit, very long hair, long hair",
                              "10_kit/b.png": "smile, " + many,
                              "10_kit/c.png": None,
                              "10_kit/d.png": "kit, 1girls, smile"})
    report = cli_json("tag", "stats", root, "--class", "1girl")
    items = by_path(report)
    assert "implied" in items["10_kit/a.png"]["message"]
    assert "no instance token 'kit'" in items["10_kit/b.png"]["message"]
    assert "23 tags (over 20)" in items["10_kit/b.png"]["message"]
    assert items["10_kit/c.png"]["message"] == "no caption file"
    assert "alias spelling '1girls'" in items["10_kit/d.png"]["message"]
    assert report["frequency"]["smile"] == 2
    assert report["frequency_by_folder"]["10_kit"]["kit"] == 2
    cli("tag", "stats", root, "--strict", check=1)
    clean = dataset(tmp_path / "2", {"10_kit/a.png": "kit, 1girl, smile"})
    cli("tag", "stats", clean, "--strict", "--class", "1girl")


def test_balance_command(tmp_path):
    root = tmp_path / "train"
    for name, n in (("5_A", 51), ("B", 43), ("10_C", 32)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i}.png").write_bytes(b"")  # names are enough to count images
    reg = tmp_path / "reg" / "1_person"
    reg.mkdir(parents=True)
    for i in range(100):
        (reg / f"{i}.png").write_bytes(b"")
    report = cli_json("tag", "balance", root, "--reg", tmp_path / "reg")
    got = {o["path"]: o["repeats"] for o in report["items"]}
    assert got == {"5_A": 10, "B": 12, "10_C": 16, "1_person": 15}  # 1538 training images / 100
    assert sorted(p.name for p in root.iterdir()) == ["10_C", "5_A", "B"]  # not renamed
    cli("tag", "balance", root, "--toml", tmp_path / "dataset.toml")
    toml = (tmp_path / "dataset.toml").read_text()
    assert "num_repeats = 12" in toml and 'class_tokens = "B"' in toml
    cli("tag", "balance", root, "--apply")
    assert sorted(p.name for p in root.iterdir()) == ["10_A", "12_B", "16_C"]


def test_named_lists_remove_meta_and_quality_tags(tmp_path):
    root = dataset(tmp_path, {"a.png": "masterpiece, 1girl, absurdres, smile, signature"})
    report = cli_json("tag", "stats", root)
    assert "meta/quality tags: masterpiece, absurdres, signature" in by_path(report)["a.png"]["message"]
    cli("tag", "edit", root, "--remove", "@meta", "--remove", "@quality")
    assert caption(root, "a.png") == "1girl, smile"
    cli("tag", "edit", root, "--remove", "@nonsense", check=2)
