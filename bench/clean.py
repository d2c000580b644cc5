"""AdverseCleaner filter speed: seconds per megapixel, and where the time goes, in one run.

    python bench/clean.py [--sizes 512x512,1024x1024,2048x1024] [--repeat 2]

The 64 bilateral passes are the reference's own cost; the guided filter (built from box filters,
its guide statistics computed once) is what lorakit adds. Both are timed on the same image, so
their ratio holds whatever the machine's load. cv2 uses every core it is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path[0] = str(Path(__file__).resolve().parents[1] / "examples")  # the generators (see curate.py)

from make_sample import character, poison  # noqa: E402

from lorakit.curate.clean import ColorGuidedFilter, FilterParams, adverse_clean  # noqa: E402


def timed(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="512x512,1024x1024,2048x1024")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    p = FilterParams()
    print(f"cv2 threads: {cv2.getNumThreads()}; best of {args.repeat}")
    print(f"{'size':>11}{'MP':>6}{'total s/MP':>12}{'bilateral':>11}{'guided':>9}{'guided share':>14}")
    for size in args.sizes.split(","):
        w, h = map(int, size.split("x"))
        img = np.asarray(poison(character((w, h)), 6))
        f32 = img.astype(np.float32)
        mp = w * h / 1e6

        def bilateral():
            y = f32
            for _ in range(p.bilateral_passes):
                y = cv2.bilateralFilter(y, p.diameter, p.sigma_color, p.sigma_space)

        def guided():
            g = ColorGuidedFilter(f32, p.radius, p.eps)
            y = f32
            for _ in range(p.guided_passes):
                y = g(y)

        total = timed(lambda: adverse_clean(img), args.repeat)
        b, g = timed(bilateral, args.repeat), timed(guided, args.repeat)
        print(f"{size:>11}{mp:>6.2f}{total / mp:>12.2f}{b / mp:>11.2f}{g / mp:>9.2f}{g / (b + g):>13.0%}")


if __name__ == "__main__":
    main()
