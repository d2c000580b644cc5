"""curate flip, crop and split through the CLI: the chosen images changed, the rest copied byte
for byte, captions carried to every piece, sources untouched, a bad file failing alone."""

import json

from conftest import by_path, cli, cli_json, tree_digest, truncated_png
from PIL import Image


def _folder(root):
    """A 10_kit folder: an asymmetric 'left.png' (red on its left half), a 400x100 strip, a
    square JPEG and a file with spaces and unicode in its name; each captioned."""
    folder = root / "10_kit"
    folder.mkdir(parents=True)
    left = Image.new("RGB", (80, 40), (255, 255, 255))
    left.paste((255, 0, 0), (0, 0, 40, 40))
    left.save(folder / "left.png")
    strip = Image.new("RGB", (400, 100), (0, 0, 0))
    for i in range(4):
        strip.paste((60 * i, 0, 0), (100 * i, 0, 100 * i + 100, 100))
    strip.save(folder / "strip.png")
    Image.new("RGB", (64, 64), (0, 128, 0)).save(folder / "square.jpg", quality=95)
    Image.new("RGB", (50, 30), (0, 0, 255)).save(folder / "ページ 1.png")
    for name, caption in (("left", "kit, hair over left eye, looking right"), ("strip", "kit, sheet"),
                          ("square", "kit, left-handed"), ("ページ 1", "kit")):
        (folder / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
    return root


def test_flip_mirrors_only_the_chosen_images_and_can_swap_sides(tmp_path):
    src = _folder(tmp_path / "src")
    before = tree_digest(src)
    report = cli_json("curate", "flip", src, tmp_path / "out", "--only", "left", "--only", "ページ*",
                      "--swap-sides")
    out = tmp_path / "out" / "10_kit"
    items = by_path(report)
    assert items["10_kit/left.png"]["status"] == "written" and items["10_kit/strip.png"]["status"] == "copied"
    flipped = Image.open(out / "left.png").convert("RGB")
    assert flipped.getpixel((5, 5)) == (255, 255, 255) and flipped.getpixel((75, 5)) == (255, 0, 0)
    assert Image.open(out / "ページ 1.png").size == (50, 30)
    assert (out / "left.txt").read_text() == "kit, hair over right eye, looking left\n"
    assert (out / "strip.png").read_bytes() == (src / "10_kit" / "strip.png").read_bytes()
    assert (out / "square.txt").read_text() == "kit, left-handed\n"  # not flipped: caption as it was
    assert tree_digest(src) == before  # the source is never changed

    plain = cli_json("curate", "flip", src, tmp_path / "all", "--all")
    assert {i["status"] for i in plain["items"]} == {"written"}
    assert (tmp_path / "all" / "10_kit" / "left.txt").read_text() == "kit, hair over left eye, looking right\n"
    listed = tmp_path / "flip.txt"
    listed.write_text("10_kit/square.jpg\n")
    assert by_path(cli_json("curate", "flip", src, tmp_path / "l", "--only-from", listed))["10_kit/square.jpg"][
        "status"] == "written"
    assert "names no image: lfet" in cli("curate", "flip", src, tmp_path / "x", "--only", "lfet", check=2).stderr
    assert "--all" in cli("curate", "flip", src, tmp_path / "x", check=2).stderr


def test_crop_cuts_listed_boxes_from_csv_or_json(tmp_path):
    src = _folder(tmp_path / "src")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,left,top,right,bottom\nleft.png,0,0,40,40\nleft.png,40,0,80,40\n"
                     "10_kit/square.jpg,0,0,100,100\n")
    (src / "10_kit" / "broken.png").write_bytes(b"")
    report = cli_json("curate", "crop", src, tmp_path / "out", "--boxes", boxes, check=1)
    out = tmp_path / "out" / "10_kit"
    items = by_path(report)
    assert items["10_kit/left.png"]["pieces"] == 2
    assert Image.open(out / "left.png").convert("RGB").getpixel((20, 20)) == (255, 0, 0)
    assert Image.open(out / "left-2.png").convert("RGB").getpixel((20, 20)) == (255, 255, 255)
    assert (out / "left-2.txt").read_text() == (out / "left.txt").read_text() == "kit, hair over left eye, looking right\n"
    assert items["10_kit/square.jpg"]["status"] == "failed" and "not inside the 64x64" in items["10_kit/square.jpg"]["message"]
    assert items["10_kit/broken.png"]["status"] == "failed"
    assert items["10_kit/strip.png"]["status"] == "copied"  # no box: the whole image

    as_json = tmp_path / "boxes.json"
    as_json.write_text(json.dumps({"strip": [[0, 0, 100, 100], [300, 0, 400, 100]], "left.png": [0, 0, 10, 10]}))
    (src / "10_kit" / "broken.png").unlink()
    cli_json("curate", "crop", src, tmp_path / "j", "--boxes", as_json)
    assert Image.open(tmp_path / "j" / "10_kit" / "strip-2.png").convert("RGB").getpixel((5, 5)) == (180, 0, 0)
    assert Image.open(tmp_path / "j" / "10_kit" / "left.png").size == (10, 10)
    as_json.write_text(json.dumps({"nothing.png": [0, 0, 1, 1]}))
    assert "names no image: nothing.png" in cli("curate", "crop", src, tmp_path / "e", "--boxes", as_json, check=2).stderr
    boxes.write_text("image,left,top,right,bottom\nleft.png,10,0,5,5\n")
    assert "left < right" in cli("curate", "crop", src, tmp_path / "e", "--boxes", boxes, check=2).stderr


def test_split_by_grid_or_by_aspect_ratio(tmp_path):
    src = _folder(tmp_path / "src")
    grid = cli_json("curate", "split", src, tmp_path / "grid", "--tiles", "2x1")
    out = tmp_path / "grid" / "10_kit"
    assert all(i["pieces"] == 2 for i in grid["items"])
    assert Image.open(out / "strip.png").size == (200, 100) and Image.open(out / "strip-2.png").size == (200, 100)
    assert Image.open(out / "ページ 1-2.png").size == (25, 30)
    assert (out / "strip-2.txt").read_text() == "kit, sheet\n"

    auto = by_path(cli_json("curate", "split", src, tmp_path / "auto", "--auto", "2"))
    assert auto["10_kit/strip.png"]["pieces"] == 4 and auto["10_kit/square.jpg"]["status"] == "copied"
    pieces = sorted(p.name for p in (tmp_path / "auto" / "10_kit").glob("strip*.png"))
    assert pieces == ["strip-2.png", "strip-3.png", "strip-4.png", "strip.png"]
    assert Image.open(tmp_path / "auto" / "10_kit" / "strip-3.png").convert("RGB").getpixel((50, 50)) == (120, 0, 0)

    Image.new("RGB", (10, 10)).save(src / "10_kit" / "strip-2.png")  # would be overwritten by strip's piece 2
    truncated_png(src / "10_kit" / "cut.png", Image.new("RGB", (64, 64)))
    clash = by_path(cli_json("curate", "split", src, tmp_path / "clash", "--tiles", "2x1", check=1))
    assert clash["10_kit/strip.png"]["status"] == "failed" and "strip-2" in clash["10_kit/strip.png"]["message"]
    assert clash["10_kit/cut.png"]["status"] == "failed" and clash["10_kit/left.png"]["status"] == "written"
    assert "--tiles 3: write COLUMNSxROWS" in " ".join(cli("curate", "split", src, tmp_path / "x", "--tiles", "3",
                                                           check=2).stderr.split()).replace("'", "")
    assert "one of them" in cli("curate", "split", src, tmp_path / "x", check=2).stderr
    assert "a ratio above 1" in cli("curate", "split", src, tmp_path / "x", "--auto", "0.5", check=2).stderr
