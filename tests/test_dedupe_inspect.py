"""curate dedupe and curate inspect."""

import numpy as np
from conftest import bomb_png, by_path, cli, cli_json, tree_digest, truncated_png
from make_sample import character
from PIL import Image, ImageOps

from lorakit.curate.dedupe import Fingerprint, distance, group_duplicates


def _dupes(tmp_path):
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    big = character((600, 750), hue=0)
    big.save(src / "original.png")
    big.resize((240, 300), Image.LANCZOS).save(src / "b" / "small copy.jpg", quality=80)
    ImageOps.mirror(big).resize((400, 500)).save(src / "mirrored.webp", "WEBP")
    (src / "mirrored.txt").write_text("kitchan\n", encoding="utf-8")
    character((600, 750), hue=1).rotate(90, expand=True).save(src / "different.png")
    Image.new("RGB", (300, 300), (30, 120, 200)).save(src / "plain.png")
    return src


def test_hash_sees_copies_and_mirrors_but_not_other_images():
    a = character((300, 360))
    fp = lambda img: Fingerprint.of(img, 0)  # noqa: E731
    near = distance(fp(a), fp(a.resize((150, 180))))
    mirrored = distance(fp(a), fp(ImageOps.mirror(a)))
    other = distance(fp(a), fp(character((300, 360), hue=1)))
    assert near <= 2 and mirrored <= 2 and other > 10
    assert fp(a).colour_difference(fp(ImageOps.mirror(a))) < 2


def test_a_recolour_is_not_a_duplicate():
    line_art = character((300, 360), hue=0)
    recoloured = Image.fromarray(np.asarray(line_art)[:, :, ::-1].copy())  # red hair -> blue
    assert distance(Fingerprint.of(line_art, 0), Fingerprint.of(recoloured, 0)) <= 6
    assert group_duplicates([Fingerprint.of(line_art, 0), Fingerprint.of(recoloured, 0)], 6) == []
    assert group_duplicates([Fingerprint.of(line_art, 0), Fingerprint.of(line_art, 0)], 6) == [[0, 1]]


def test_dedupe_reports_and_keeps_the_largest(tmp_path):
    src = _dupes(tmp_path)
    before = tree_digest(src)
    report = cli_json("curate", "dedupe", src)
    assert report["groups"] == [["original.png", "mirrored.webp", "b/small copy.jpg"]]  # largest first
    items = by_path(report)
    assert items["original.png"]["status"] == "kept"
    assert items["mirrored.webp"]["status"] == "duplicate"
    assert items["different.png"]["status"] == items["plain.png"]["status"] == "ok"
    assert tree_digest(src) == before  # report only


def test_dedupe_moves_only_when_asked(tmp_path):
    src = _dupes(tmp_path)
    dry = cli_json("curate", "dedupe", src, "--move-to", tmp_path / "dupes", "--dry-run")
    assert by_path(dry)["mirrored.webp"]["status"] == "planned"
    assert not (tmp_path / "dupes").exists()
    moved = cli_json("curate", "dedupe", src, "--move-to", tmp_path / "dupes")
    assert by_path(moved)["mirrored.webp"]["status"] == "moved"
    assert (tmp_path / "dupes" / "mirrored.webp").exists()
    assert (tmp_path / "dupes" / "mirrored.txt").read_text(encoding="utf-8") == "kitchan\n"
    assert (tmp_path / "dupes" / "b" / "small copy.jpg").exists()
    assert not (src / "mirrored.webp").exists() and (src / "original.png").exists()
    assert cli_json("curate", "dedupe", src)["groups"] == []


def test_inspect_a_raw_folder(tmp_path, sample):
    folder = sample / "10_kitchan"
    truncated_png(folder / "cut.png", character((300, 300)))
    (folder / "zero.jpg").write_bytes(b"")
    bomb_png(folder / "bomb.png")
    character((256, 320), hue=8).save(folder / "copy of 09.jpg", quality=90)
    report = cli_json("curate", "inspect", sample, check=1)
    problems = report["problems"]
    assert sorted(problems["corrupt or unreadable"]) == ["10_kitchan/bomb.png", "10_kitchan/cut.png",
                                                          "10_kitchan/zero.jpg"]
    assert problems["transparent"] == ["10_kitchan/02_transparent.png"]
    assert problems["animated (first frame used)"] == ["10_kitchan/03_animated.gif"]
    assert "10_kitchan/01 webp from a wiki.webp" in problems["not png/jpeg"]
    assert "10_kitchan/06_tiny.png" in problems["too small (short side < 512)"]
    assert problems["too large (long side > 3000)"] == ["10_kitchan/10_huge_scan.jpg"]
    assert "10_kitchan/01 webp from a wiki.webp" not in problems["no caption file"]
    assert len(problems["no caption file"]) == 13
    assert [sorted(g) for g in report["duplicate_groups"]] == [
        ["10_kitchan/09 ünïcode & spaces.png", "10_kitchan/copy of 09.jpg"]]
    formats = {(r["format"], r["mode"]): r["images"] for r in report["sections"]["formats"]}
    assert formats[("JPEG", "CMYK")] == 1 and formats[("PNG", "I;16")] == 1
    assert report["size"]["long_side"]["max"] == 3600
    text = cli("curate", "inspect", sample, check=1).stdout
    assert "curate flatten" in text and "too large" in text
