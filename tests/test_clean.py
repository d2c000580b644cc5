"""curate clean: the AdverseCleaner filter, its colour guided filter, and the command."""

from pathlib import Path

import cv2
import numpy as np
import torch
from conftest import by_path, cli, cli_json
from make_sample import character, poison
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from test_upscale import srvgg

from lorakit.curate.clean import ColorGuidedFilter, FilterParams, adverse_clean


def reference_guided(I, p, r, eps):  # noqa: E741  (I: the guide image, as in the paper)
    """He et al.'s guided filter, straight from the definition: per window, the least-squares
    linear model p ≈ aᵀI + b with ridge eps, then q = mean over windows of (aᵀI + b).
    Borders reflect like OpenCV's BORDER_REFLECT (numpy's 'symmetric')."""
    k = 2 * r + 1

    def windows(x):
        pad = [(r, r), (r, r)] + [(0, 0)] * (x.ndim - 2)
        return sliding_window_view(np.pad(x, pad, mode="symmetric"), (k, k), axis=(0, 1))

    Iw = windows(I.astype(np.float64))  # H, W, 3, k, k
    pw = windows(p.astype(np.float64))  # H, W, k, k
    h, w = p.shape
    Iv = Iw.reshape(h, w, 3, k * k)
    pv = pw.reshape(h, w, k * k)
    mu = Iv.mean(-1)
    centred = Iv - mu[..., None]
    sigma = np.einsum("hwin,hwjn->hwij", centred, centred) / (k * k)
    cov = np.einsum("hwin,hwn->hwi", centred, pv) / (k * k)
    a = np.linalg.solve(sigma + eps * np.eye(3), cov[..., None])[..., 0]
    b = pv.mean(-1) - np.einsum("hwi,hwi->hw", a, mu)
    mean_a = windows(a).reshape(h, w, 3, k * k).mean(-1)
    mean_b = windows(b).reshape(h, w, k * k).mean(-1)
    return np.einsum("hwi,hwi->hw", mean_a, I) + mean_b


def test_colour_guided_filter_matches_the_definition():
    rng = np.random.default_rng(0)
    guide = np.asarray(character((23, 19)), np.float32) + rng.normal(0, 3, (19, 23, 3)).astype(np.float32)
    src = np.clip(guide + rng.normal(0, 10, guide.shape), 0, 255).astype(np.float32)
    ours = ColorGuidedFilter(guide, radius=2, eps=16)(src)
    for c in range(3):
        expected = reference_guided(guide, src[:, :, c], 2, 16)
        assert np.abs(ours[:, :, c] - expected).max() < 0.01


def test_colour_guide_is_not_a_grey_guide():
    """docs/formats.md, "AdverseCleaner": filtering each channel with a grey guide is not equivalent."""
    img = np.asarray(poison(character((64, 64)), 8), np.float32)
    colour = ColorGuidedFilter(img, 4, 16)(img)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    # three equal guide channels with eps x3 is exactly the grey-guided filter with eps
    per_channel = np.dstack([reference_guided(np.dstack([grey] * 3), img[:, :, c], 4, 16 * 3)
                             for c in range(3)])
    assert np.abs(colour - per_channel).mean() > 0.5


def test_matches_ximgproc_recorded():
    """cv2.ximgproc.guidedFilter (opencv-contrib 5.0, which cannot be installed beside the headless
    build) on a poisoned 64 px picture, recorded once: tests/data/ximgproc_guided.npz holds the
    input and its output, made by `cv2.ximgproc.guidedFilter(img, img, 4, 16)` on float32."""
    recorded = np.load(Path(__file__).parent / "data" / "ximgproc_guided.npz")
    img = recorded["image"].astype(np.float32)
    ours = ColorGuidedFilter(img, 4, 16)(img)
    assert np.abs(ours - recorded["guided"]).max() < 1
    assert np.abs(ours - recorded["guided"]).mean() < 0.01


def test_adverse_clean_removes_noise_and_keeps_edges():
    clean = character((160, 200))
    noisy = poison(clean, strength=6)
    cleaned = adverse_clean(np.asarray(noisy))
    err_noisy = np.abs(np.asarray(noisy, int) - np.asarray(clean, int)).mean()
    err_cleaned = np.abs(cleaned.astype(int) - np.asarray(clean, int)).mean()
    assert err_cleaned < err_noisy / 2
    # edges survive: a plain blur that removes as much noise loses far more at the edges
    blurred = cv2.GaussianBlur(np.asarray(noisy), (0, 0), 2)
    edges = cv2.Canny(np.asarray(clean), 50, 150) > 0
    edge_err = lambda x: np.abs(x.astype(int) - np.asarray(clean, int))[edges].mean()  # noqa: E731
    assert edge_err(cleaned) < edge_err(blurred)


def test_strength_scales_the_passes():
    assert FilterParams().with_strength(0.5) == FilterParams(bilateral_passes=32, guided_passes=2)
    assert FilterParams().with_strength(1.0) == FilterParams()


def _folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    character((200, 240)).save(src / "clean.png")
    poison(character((200, 240), hue=1), 6).save(src / "glazed.png")
    (src / "glazed.txt").write_text("kitchan\n", encoding="utf-8")
    return src


def test_clean_command_only_flagged(tmp_path):
    src = _folder(tmp_path)
    items = by_path(cli_json("curate", "clean", src, tmp_path / "out", "--only-flagged",
                             "--strength", "0.25"))
    assert items["clean.png"]["status"] == "copied"
    assert items["glazed.png"]["status"] == "written"
    assert (tmp_path / "out" / "clean.png").read_bytes() == (src / "clean.png").read_bytes()
    assert (tmp_path / "out" / "glazed.txt").read_text(encoding="utf-8") == "kitchan\n"
    before = np.asarray(Image.open(src / "glazed.png"), int)
    after = np.asarray(Image.open(tmp_path / "out" / "glazed.png"), int)
    target = np.asarray(character((200, 240), hue=1), int)
    assert np.abs(after - target).mean() < np.abs(before - target).mean()


def test_clean_command_upscale_and_both_methods_keep_the_size(tmp_path):
    src = _folder(tmp_path)
    torch.save({"params": srvgg()}, tmp_path / "tiny.pth")
    for method in ("upscale", "both"):
        report = cli_json("curate", "clean", src, tmp_path / method, "--method", method,
                          "--model", tmp_path / "tiny.pth", "--strength", "0.1")
        assert report["counts"] == {"written": 2}
        assert Image.open(tmp_path / method / "glazed.png").size == (200, 240)
    cli("curate", "clean", src, tmp_path / "x", "--method", "magic", check=2)
