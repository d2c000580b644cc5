"""Aspect-ratio buckets, as kohya's trainer makes them (docs/formats.md, "Training", kohya
`library/model_util.make_bucket_resolutions` and `BucketManager`): a set of resolutions of about
the training area, each image assigned to the one closest to its aspect ratio (or, with
`no_upscale`, to its own size rounded down to the step, never enlarged)."""

from __future__ import annotations

import math
from functools import lru_cache


@lru_cache(maxsize=64)  # per settings: the same list for every image (the review page asks per image)
def resolutions(resolution: tuple[int, int], min_size: int = 256, max_size: int = 1024,
                step: int = 64) -> tuple[tuple[int, int], ...]:
    """The square of the training area, then for each width from min to max every (w, h) and
    (h, w) whose area fits."""
    max_area = resolution[0] * resolution[1]
    side = int(math.sqrt(max_area) // step) * step
    found = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // step) * step)
        if height >= min_size:
            found.add((width, height))
            found.add((height, width))
        width += step
    return tuple(sorted(found))  # a tuple: the cached list is shared, so nobody may change it


def closest(size: tuple[int, int], buckets: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's."""
    aspect = size[0] / size[1]
    return min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))


def _round(x: float, step: int) -> int:
    """kohya's round_to_steps: to the nearest pixel, then down to the step (so a bucket never
    exceeds the area it was fitted to)."""
    x = int(x + 0.5)
    return x - x % step


def no_upscale(size: tuple[int, int], resolution: tuple[int, int], step: int = 64) -> tuple[int, int]:
    """kohya's bucket_no_upscale: images larger than the training area shrink to it (aspect
    kept as closely as the step allows); smaller ones keep their size; both round down to the
    step."""
    width, height = size
    max_area = resolution[0] * resolution[1]
    aspect = width / height
    if width * height > max_area:
        w = math.sqrt(max_area * aspect)
        h = max_area / w
        w_rounded = _round(w, step)
        by_width = w_rounded / _round(w_rounded / aspect, step)
        h_rounded = _round(h, step)
        by_height = _round(h_rounded * aspect, step) / h_rounded
        if abs(by_width - aspect) < abs(by_height - aspect):
            width, height = w_rounded, int(w_rounded / aspect + 0.5)
        else:
            width, height = int(h_rounded * aspect + 0.5), h_rounded
    return max(step, width - width % step), max(step, height - height % step)


def assign(size: tuple[int, int], resolution: tuple[int, int], min_size: int, max_size: int,
           step: int, upscale: bool = True) -> tuple[int, int]:
    if not upscale:
        return no_upscale(size, resolution, step)
    return closest(size, resolutions(resolution, min_size, max_size, step))
