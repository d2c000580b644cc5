"""convert, flatten and resize: the pure functions and the commands."""

import numpy as np
from conftest import by_path, cli, cli_json
from make_sample import character
from PIL import Image

from lorakit.curate.colors import background_tag, parse_color
from lorakit.curate.flatten import flatten
from lorakit.curate.resize import downscale, fit_within


def test_convert_the_whole_sample(tmp_path, sample):
    report = cli_json("curate", "convert", sample, tmp_path / "png")
    assert report["counts"] == {"written": 10}
    outputs = sorted((tmp_path / "png" / "10_kitchan").glob("*.png"))
    assert len(outputs) == 10
    modes = {p.name: Image.open(p).mode for p in outputs}
    assert modes["02_transparent.png"] == "RGBA"  # PNG keeps transparency
    assert all(m == "RGB" for n, m in modes.items() if n != "02_transparent.png")
    assert Image.open(tmp_path / "png" / "10_kitchan" / "07_phone_photo.png").size == (256, 320)
    grey = np.asarray(Image.open(tmp_path / "png" / "10_kitchan" / "05_16bit_scan.png"))
    assert grey[0, 0, 0] < 5 and grey[0, -1, 0] > 250  # a ramp, not white


def test_jpeg_output_needs_a_background_for_transparency(tmp_path, sample):
    items = by_path(cli_json("curate", "convert", sample, tmp_path / "jpg", "--format", "jpg", check=1))
    failed = [p for p, i in items.items() if i["status"] == "failed"]
    assert failed == ["10_kitchan/02_transparent.png"]
    assert "--background" in items[failed[0]]["message"]
    cli("curate", "convert", sample, tmp_path / "jpg2", "--format", "jpg", "--background", "white")
    out = Image.open(tmp_path / "jpg2" / "10_kitchan" / "02_transparent.jpg")
    assert out.format == "JPEG" and out.getpixel((2, 2)) == (255, 255, 255)


def test_webp_output(tmp_path, sample):
    cli("curate", "convert", sample, tmp_path / "webp", "--format", "webp", "--quality", "80")
    assert Image.open(tmp_path / "webp" / "10_kitchan" / "06_tiny.webp").format == "WEBP"


def test_flatten_is_alpha_over_a_solid_colour():
    img = Image.new("RGBA", (2, 1))
    img.putpixel((0, 0), (255, 0, 0, 128))
    img.putpixel((1, 0), (0, 0, 0, 0))
    out = flatten(img, (0, 0, 255))
    assert out.mode == "RGB"
    assert out.getpixel((1, 0)) == (0, 0, 255)
    r, g, b = out.getpixel((0, 0))
    assert abs(r - 128) <= 1 and g == 0 and abs(b - 127) <= 1
    opaque = Image.new("RGB", (2, 2))
    assert flatten(opaque, (1, 2, 3)) is opaque


def test_colours_and_tags():
    assert parse_color("#0a0B0c") == (10, 11, 12)
    assert parse_color("Gray") == parse_color("grey")
    assert background_tag((250, 250, 250)) == "white background"
    assert background_tag(parse_color("#0000ff")) == "blue background"


def _transparent_folder(tmp_path, n=6):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        character((40, 50), background=None, hue=i).save(src / f"t{i}.png")
    character((40, 50)).save(src / "opaque.png")
    (src / "t0.txt").write_text("kitchan, 1girl\n", encoding="utf-8")
    return src


def test_flatten_cycle_is_deterministic_and_balanced_and_tags(tmp_path):
    src = _transparent_folder(tmp_path)
    report = cli_json("curate", "flatten", src, tmp_path / "a", "--background", "cycle",
                      "--colors", "white,black,#00ff00", "--tag-background")
    items = by_path(report)
    backgrounds = [items[f"t{i}.png"]["background"] for i in range(6)]
    assert backgrounds == ["white background", "black background", "green background"] * 2
    assert items["opaque.png"]["status"] == "copied"
    assert (tmp_path / "a" / "opaque.png").read_bytes() == (src / "opaque.png").read_bytes()
    assert Image.open(tmp_path / "a" / "t1.png").getpixel((0, 0)) == (0, 0, 0)
    assert (tmp_path / "a" / "t0.txt").read_text(encoding="utf-8") == "kitchan, 1girl, white background\n"
    assert (tmp_path / "a" / "t1.txt").read_text(encoding="utf-8") == "black background\n"
    assert not (tmp_path / "a" / "opaque.txt").exists()
    again = by_path(cli_json("curate", "flatten", src, tmp_path / "b", "--background", "cycle",
                             "--colors", "white,black,#00ff00", "--jobs", "1"))
    assert [again[f"t{i}.png"]["background"] for i in range(6)] == backgrounds


def test_flatten_single_colour(tmp_path):
    src = _transparent_folder(tmp_path, 2)
    cli("curate", "flatten", src, tmp_path / "out", "--background", "#102030")
    assert Image.open(tmp_path / "out" / "t1.png").getpixel((0, 0)) == (16, 32, 48)
    cli("curate", "flatten", src, tmp_path / "bad", "--background", "chartreuse-ish", check=2)


def test_resize_math():
    assert fit_within((6000, 3000), 3000) == (3000, 1500)
    assert fit_within((100, 50), 3000) == (100, 50)
    img = downscale(character((3600, 2400)), 3000)
    assert img.size == (3000, 2000)


def test_resize_command(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    character((3600, 2400)).save(src / "huge.jpg", quality=85)
    character((400, 300)).save(src / "small.png")
    character((800, 900)).save(src / "fine.png")
    report = cli_json("curate", "resize", src, tmp_path / "out", "--max-side", "3000",
                      "--min-side", "512")
    items = by_path(report)
    assert Image.open(tmp_path / "out" / "huge.jpg").size == (3000, 2000)
    assert items["huge.jpg"]["status"] == "written"
    assert items["small.png"]["status"] == "copied" and items["small.png"]["upscale_candidate"]
    assert (tmp_path / "out" / "small.png").read_bytes() == (src / "small.png").read_bytes()
    assert "upscale_candidate" not in items["fine.png"]
    section = next(v for k, v in report["sections"].items() if "upscale candidates" in k)
    assert section == [{"image": "small.png", "size": "400x300"}]
