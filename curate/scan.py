"""`curate scan`: score every image for adversarial (Glaze/Nightshade-like) noise.

The score is the median, over 32x32 tiles, of the RMS residual left after edge-preserving
smoothing of the luminance, in grey levels. Drawn and painted images are mostly flat or smooth
between edges, and the bilateral smoothing keeps edges, so their residual is near 0 in most
tiles; poison adds noise to every tile, and the median over tiles ignores the few tiles where
real texture lives. What it can and cannot tell apart is in the README ("Finding poisoned
images"); the threshold was calibrated on the images `tests/test_scan.py` makes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lorakit.curate.defaults import SCAN_THRESHOLD
from lorakit.engine import RunOptions, analyse
from lorakit.images import ImageError, load_image
from lorakit.report import FAILED, OK, Outcome, Report, Section

DEFAULT_THRESHOLD = SCAN_THRESHOLD
TILE = 32
MAX_SIDE = 1024  # analyse a centre crop at most this large: noise is everywhere if present
# Below this short side, edges fill every tile and the score says nothing (measured: clean
# 48x60 drawings score up to 10, as high as poison).
MIN_SIDE = 128
SUSPICIOUS, TOO_SMALL = "suspicious", "too small"


def noise_score(img: Image.Image) -> float | None:
    """Noise in grey levels (RMS), or None for images too small to judge."""
    if min(img.size) < MIN_SIDE:
        return None
    grey = np.asarray(img.convert("L"), dtype=np.float32)
    h, w = grey.shape
    top, left = max(0, (h - MAX_SIDE) // 2), max(0, (w - MAX_SIDE) // 2)
    grey = grey[top:top + MAX_SIDE, left:left + MAX_SIDE]
    smooth = grey
    for _ in range(3):
        smooth = cv2.bilateralFilter(smooth, 5, 24, 3)
    residual = (grey - smooth) ** 2
    th, tw = grey.shape[0] // TILE, grey.shape[1] // TILE
    tiles = residual[:th * TILE, :tw * TILE].reshape(th, TILE, tw, TILE).mean(axis=(1, 3))
    return float(np.sqrt(np.median(tiles)))


class _Scorer:
    """(score, "") or (None, error message) for one file."""

    def __init__(self, max_pixels: int):
        self.max_pixels = max_pixels

    def __call__(self, path: Path) -> tuple[float | None, str]:
        try:
            return noise_score(load_image(path, self.max_pixels)), ""
        except ImageError as exc:
            return None, str(exc)
        except OSError as exc:
            return None, f"{type(exc).__name__}: {exc}"


def scan_folder(src: Path, options: RunOptions, threshold: float = DEFAULT_THRESHOLD) -> Report:
    _, rels, results = analyse(src, _Scorer(options.max_pixels), options, "scan")
    report = Report("scan", str(src))
    for rel, (score, error) in zip(rels, results):
        if error:
            report.outcomes.append(Outcome(rel.as_posix(), FAILED, error))
        elif score is None:
            report.outcomes.append(Outcome(rel.as_posix(), TOO_SMALL,
                                           f"short side under {MIN_SIDE} px: not scored",
                                           {"score": None}))
        else:
            status = SUSPICIOUS if score >= threshold else OK
            report.outcomes.append(Outcome(rel.as_posix(), status, details={"score": round(score, 3)}))
    suspicious = sorted((o for o in report.outcomes if o.status == SUSPICIOUS),
                        key=lambda o: -o.details["score"])
    report.sections.append(Section(
        f"possibly poisoned (noise score >= {threshold}): try curate clean",
        ["image", "score"], [[o.path, f"{o.details['score']:.2f}"] for o in suspicious]))
    report.data["threshold"] = threshold
    return report
