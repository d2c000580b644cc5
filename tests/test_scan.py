"""curate scan: the noise score, calibrated here. Clean drawn images of 128 px and more score
under 1 (flat, shaded, gradients, JPEG at quality 60, downscaled art); images carrying
Glaze-like noise of 2 grey levels or more score above 2. The threshold 1.5 sits between."""

import io

import numpy as np
import pytest
from conftest import by_path, cli_json
from make_sample import character, poison
from PIL import Image, ImageFilter

from lorakit.curate.scan import DEFAULT_THRESHOLD, noise_score


def _jpeg(img, quality):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _gradient(size):
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.dstack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255]).astype(np.uint8))


SIZES = [(256, 320), (640, 800), (1200, 900)]
CLEAN = {
    "flat": lambda s: character(s),
    "shaded": lambda s: character(s).filter(ImageFilter.GaussianBlur(2)),
    "gradient": _gradient,
    "jpeg60": lambda s: _jpeg(character(s), 60),
    "downscaled": lambda s: character((s[0] * 3, s[1] * 3)).resize(s, Image.LANCZOS),
}


@pytest.mark.parametrize("kind", CLEAN)
def test_clean_images_score_low(kind):
    for size in SIZES:
        assert noise_score(CLEAN[kind](size)) < 1.0, (kind, size)


@pytest.mark.parametrize("strength", [2, 4, 8])
def test_poisoned_images_score_high(strength):
    for size in SIZES:
        for kind in ("flat", "shaded", "gradient"):
            score = noise_score(poison(CLEAN[kind](size), strength, seed=strength))
            assert score > 2.0, (kind, size, strength)
            assert score > DEFAULT_THRESHOLD


def test_score_grows_with_the_noise():
    scores = [noise_score(poison(character((400, 400)), s)) for s in (2, 4, 8)]
    assert scores == sorted(scores)


def test_tiny_images_are_not_judged():
    assert noise_score(poison(character((100, 300)), 8)) is None


def test_scan_command(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    character((300, 300)).save(src / "clean.png")
    poison(character((300, 300)), 5).save(src / "glazed.png")
    character((60, 60)).save(src / "tiny.png")
    (src / "broken.png").write_bytes(b"\x89PNG nope")
    report = cli_json("curate", "scan", src, check=1)
    items = by_path(report)
    assert items["clean.png"]["status"] == "ok" and items["clean.png"]["score"] < 1
    assert items["glazed.png"]["status"] == "suspicious" and items["glazed.png"]["score"] > 3
    assert items["tiny.png"]["status"] == "too small" and items["tiny.png"]["score"] is None
    assert items["broken.png"]["status"] == "failed"
    flagged = next(v for k, v in report["sections"].items() if "poisoned" in k)
    assert [row["image"] for row in flagged] == ["glazed.png"]
