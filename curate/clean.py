"""`curate clean`: remove Glaze/Nightshade-style adversarial noise.

Method "filter" is AdverseCleaner (lllyasviel's `clean.py`, docs/formats.md, "Images"): 64 bilateral
passes, then 4 guided-filter passes guided by the ORIGINAL image, which restores the edges the
bilateral passes softened. `cv2.ximgproc.guidedFilter` needs opencv-contrib, so the colour guided
filter of He et al. (ECCV 2010, eq. 19-21) is built here from box filters; a grey guide per
channel is not equivalent. Method "upscale" is the training guide's recipe: shrink, then let an
AI upscaler rebuild the image at its original size. "both" runs the filter, then the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lorakit.curate.scan import noise_score
from lorakit.engine import Result, Stage, Task
from lorakit.images import load_image, natural_format, natural_output_name, save_image


@dataclass(frozen=True)
class FilterParams:
    """Defaults are AdverseCleaner's."""

    bilateral_passes: int = 64
    diameter: int = 5
    sigma_color: float = 8.0
    sigma_space: float = 8.0
    guided_passes: int = 4
    radius: int = 4
    eps: float = 16.0  # in 0..255^2 units, as ximgproc takes it for 0..255 images

    def with_strength(self, strength: float) -> FilterParams:
        """`--strength` scales the number of passes: 1 is the reference, 0.5 half as many."""
        return replace(self, bilateral_passes=max(1, round(self.bilateral_passes * strength)),
                       guided_passes=max(1, round(self.guided_passes * strength)))


def _symmetric_inverse(s00, s01, s02, s11, s12, s22):
    """Inverse of per-pixel symmetric 3x3 matrices, by cofactors: six arrays in, six out.
    Computed in float64: the entries are up to 255^2 and their products cancel."""
    c00, c01, c02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
    c11, c12, c22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
    det = s00 * c00 + s01 * c01 + s02 * c02
    return [(c / det).astype(np.float32) for c in (c00, c01, c02, c11, c12, c22)]


class ColorGuidedFilter:
    """He et al.'s guided filter with a 3-channel guide I: for each source channel p,
    a = (Σ + εE)⁻¹ (mean(I·p) − mean(I)·mean(p)), b = mean(p) − aᵀmean(I),
    q = mean(a)ᵀI + mean(b), all means over (2r+1)² boxes. The guide's means and inverse
    covariance are computed once and reused for every channel and every pass."""

    def __init__(self, guide: np.ndarray, radius: int, eps: float):
        self.size = (2 * radius + 1, 2 * radius + 1)
        self.channels = [np.ascontiguousarray(guide[:, :, i]) for i in range(3)]
        self.mean = [self.box(c) for c in self.channels]
        pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
        sigma = []
        # float64: on near-grey images Σ is nearly singular and float32 cancellation moves the
        # result by up to 0.4 grey levels (measured); float64 costs ~0.5 s per megapixel, once.
        for i, j in pairs:
            var = self.box(self.channels[i] * self.channels[j]).astype(np.float64)
            var -= self.mean[i].astype(np.float64) * self.mean[j]
            sigma.append(var + eps if i == j else var)
        inv = _symmetric_inverse(*sigma)
        # full 3x3 lookup of the symmetric inverse: row i, column j
        index = {pair: k for k, pair in enumerate(pairs)}
        self.inverse = [[inv[index[(min(i, j), max(i, j))]] for j in range(3)] for i in range(3)]

    def box(self, x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, cv2.CV_32F, self.size, normalize=True,
                             borderType=cv2.BORDER_REFLECT)

    def __call__(self, src: np.ndarray) -> np.ndarray:
        out = np.empty_like(src)
        for c in range(src.shape[2]):
            p = np.ascontiguousarray(src[:, :, c])
            mean_p = self.box(p)
            cov = [self.box(self.channels[i] * p) - self.mean[i] * mean_p for i in range(3)]
            a = [sum(self.inverse[i][j] * cov[j] for j in range(3)) for i in range(3)]
            b = mean_p - sum(a[i] * self.mean[i] for i in range(3))
            out[:, :, c] = sum(self.box(a[i]) * self.channels[i] for i in range(3)) + self.box(b)
        return out


def adverse_clean(rgb: np.ndarray, params: FilterParams = FilterParams()) -> np.ndarray:
    """uint8 HxWx3 -> uint8 HxWx3. Channel order does not matter: every step treats the three
    channels alike."""
    img = rgb.astype(np.float32)
    y = img.copy()
    for _ in range(params.bilateral_passes):
        y = cv2.bilateralFilter(y, params.diameter, params.sigma_color, params.sigma_space)
    guided = ColorGuidedFilter(img, params.radius, params.eps)
    for _ in range(params.guided_passes):
        y = guided(y)
    return np.clip(y, 0, 255).astype(np.uint8)


def clean_image(img: Image.Image, params: FilterParams) -> Image.Image:
    """Filter the colour channels; an alpha channel is kept as it is."""
    cleaned = Image.fromarray(adverse_clean(np.asarray(img.convert("RGB")), params), "RGB")
    if img.mode == "RGBA":
        cleaned.putalpha(img.getchannel("A"))
    return cleaned


METHODS = ("filter", "upscale", "both")


@dataclass
class CleanStage(Stage):
    method: str = "filter"
    params: FilterParams = field(default_factory=FilterParams)
    upscale: object | None = None  # UpscaleSettings, for the "upscale" and "both" methods
    downscale: float = 0.5
    only_flagged: float | None = None  # clean only images whose scan score reaches this
    name = "clean"

    def __post_init__(self) -> None:
        self._upscaler = None
        # The upscale methods run a torch model: one process with torch's own threads.
        self.parallel = self.method == "filter"

    def prepare(self) -> None:
        if self.method != "filter":
            self._upscaler = self.upscale.load()

    def output_name(self, rel: Path) -> Path:
        return natural_output_name(rel)

    def process(self, task: Task) -> Result:
        from lorakit.curate.upscale.stage import upscale_image

        img = load_image(task.src, self.max_pixels)
        if self.only_flagged is not None:
            score = noise_score(img)
            if score is None or score < self.only_flagged:
                return self.pass_through(task, img, "not flagged by scan")
        if self.method in ("filter", "both"):
            img = clean_image(img, self.params)
        if self.method in ("upscale", "both"):
            img = upscale_image(img, self._upscaler, scale=1.0, downscale_first=self.downscale)
        save_image(img, task.dst, natural_format(task.dst))
        return Result(details={"method": self.method})
