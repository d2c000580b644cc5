"""Safe loading: every trap of a raw folder comes out as 8-bit sRGB RGB/RGBA, or a one-line
error that names the problem."""


import numpy as np
import pytest
from conftest import bomb_png, truncated_png
from make_sample import PAPER_LAB, animated_gif, character, cmyk_jpeg, exif_rotated_jpeg, grey16
from PIL import Image

from lorakit.images import ImageError, load_image, read_header


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "g.png"
    grey16((256, 4)).save(path)
    assert Image.open(path).mode == "I;16"
    assert Image.open(path).convert("RGB").getpixel((128, 0)) == (255, 255, 255)  # the trap
    img = load_image(path)
    row = np.asarray(img)[0, :, 0].astype(int)
    assert img.mode == "RGB"
    assert row[0] == 0 and row[-1] == 255
    assert abs(row[128] - 128) <= 1  # a ramp, not a white image
    assert np.all(np.diff(row) >= 0)


def test_cmyk_uses_its_embedded_icc_profile(tmp_path):
    grey = Image.new("RGB", (32, 32), (200, 200, 200))
    with_icc, without = tmp_path / "icc.jpg", tmp_path / "plain.jpg"
    with_icc.write_bytes(cmyk_jpeg(grey, with_profile=True))
    without.write_bytes(cmyk_jpeg(grey, with_profile=False))
    assert Image.open(with_icc).mode == "CMYK"
    managed = load_image(with_icc).getpixel((16, 16))
    naive = load_image(without).getpixel((16, 16))
    assert all(abs(c - 200) <= 2 for c in naive)  # Pillow's plain CMYK -> RGB formula
    # the toy profile's paper is Lab(96, 0, 12), so its light inks come out warm: red well
    # above blue, which the plain formula never gives for equal inks
    assert PAPER_LAB[2] > 0 and managed[0] - managed[2] > 30
    assert load_image(with_icc).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    upright = Image.new("RGB", (40, 20), (255, 255, 255))
    upright.paste((255, 0, 0), (0, 0, 10, 10))  # red in the top-left corner
    path = tmp_path / "phone.jpg"
    path.write_bytes(exif_rotated_jpeg(upright))
    assert Image.open(path).size == (20, 40)  # stored sideways
    img = load_image(path)
    assert img.size == (40, 20)
    r, g, b = img.getpixel((3, 3))
    assert r > 200 and g < 60 and b < 60


def test_palette_and_la_transparency_become_rgba(tmp_path):
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    img = load_image(tmp_path / "p.png")
    assert img.mode == "RGBA" and img.getpixel((5, 5))[3] == 0 and img.getpixel((0, 0)) == (0, 255, 0, 255)
    Image.new("LA", (8, 8), (100, 50)).save(tmp_path / "la.png")
    la = load_image(tmp_path / "la.png")
    assert la.mode == "RGBA" and la.getpixel((0, 0)) == (100, 100, 100, 50)


def test_alpha_that_hides_nothing_is_dropped(tmp_path):
    Image.new("RGBA", (8, 8), (1, 2, 3, 255)).save(tmp_path / "opaque.png")
    assert load_image(tmp_path / "opaque.png").mode == "RGB"


def test_animation_gives_its_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    path.write_bytes(animated_gif(3))
    assert Image.open(path).n_frames == 3
    first = load_image(path)
    expected = character((160, 200), hue=0).convert("P", palette=Image.Palette.ADAPTIVE).convert("RGB")
    assert first.size == (160, 200)
    assert np.abs(np.asarray(first, int) - np.asarray(expected, int)).mean() < 2
    assert read_header(path).frames == 3


@pytest.mark.parametrize("fmt", ["WEBP", "AVIF", "BMP", "TIFF"])
def test_common_formats_load(tmp_path, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    character((64, 80)).save(path, fmt)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (64, 80)


def test_hostile_files_give_one_line_errors(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    truncated_png(tmp_path / "cut.png", character((300, 300)))
    bomb_png(tmp_path / "bomb.png")
    messages = {}
    for name in ("zero.png", "text.jpg", "cut.png", "bomb.png"):
        with pytest.raises(ImageError) as err:
            load_image(tmp_path / name)
        messages[name] = str(err.value)
        assert "\n" not in messages[name]
    assert "empty" in messages["zero.png"]
    assert "not an image" in messages["text.jpg"]
    assert "truncated" in messages["cut.png"]
    assert "900 MP" in messages["bomb.png"] and "--max-pixels" in messages["bomb.png"]


def test_pixel_limit_is_configurable(tmp_path):
    character((100, 100)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageError):
        load_image(tmp_path / "a.png", max_pixels=9_999)
