"""convert + flatten + resize: lorakit with --jobs 1, with all cores, and a plain single-process
Pillow loop doing the same three stages, on the same generated images, in one run.

    python bench/curate.py [--images 48] [--repeat 3]

Targets (issue 2): all cores >= 1.8x --jobs 1 on 2 cores; --jobs 1 within 15% of the plain loop.
Each variant is run --repeat times and the best time is kept (the machines are noisy).

The run also measures the machine's ceiling for this work: the plain loop as independent
processes, one per core, on a size-balanced split of the images, with no coordination at all. No
engine can beat that ratio, so lorakit's parallel speed-up is also printed as a share of it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

# the examples folder (for the image generator) in place of this script's own folder, which holds
# nothing to import
sys.path[0] = str(Path(__file__).resolve().parents[1] / "examples")

from make_sample import character  # noqa: E402

from lorakit.curate.convert import ConvertStage  # noqa: E402
from lorakit.curate.flatten import FlattenStage  # noqa: E402
from lorakit.curate.resize import ResizeStage  # noqa: E402
from lorakit.engine import RunOptions, run_stage  # noqa: E402
from lorakit.parallel import default_jobs  # noqa: E402

MAX_SIDE = 3000


def make_images(root: Path, count: int) -> float:
    """A raw folder like a real one: transparent PNGs, webps, jpegs, a few huge scans."""
    root.mkdir(parents=True)
    pixels = 0
    for i in range(count):
        kind = i % 4
        if kind == 0:
            img, name, kw = character((1100, 1400), background=None, hue=i), f"{i:03d}.png", {}
        elif kind == 1:
            img, name, kw = character((1200, 1300), hue=i), f"{i:03d}.webp", {"quality": 90}
        elif kind == 2 and i % 12 == 2:
            img, name, kw = character((4000, 3000), hue=i), f"{i:03d}.jpg", {"quality": 90}
        else:
            img, name, kw = character((1250, 1250), hue=i), f"{i:03d}.jpg", {"quality": 92}
        img.save(root / name, **kw)
        pixels += img.width * img.height
    return pixels / 1e6


def lorakit(raw: Path, out: Path, jobs: int) -> None:
    options = RunOptions(jobs=jobs, progress=False)
    run_stage(ConvertStage(), raw, out / "1", options)
    run_stage(FlattenStage(), out / "1", out / "2", options)
    run_stage(ResizeStage(max_side=MAX_SIDE), out / "2", out / "3", options)


def plain_loop(raw: Path, out: Path) -> None:
    """What a careful user's own script does, one image after another."""
    for stage in ("1", "2", "3"):
        (out / stage).mkdir(parents=True)
    for src in sorted(raw.iterdir()):
        png = out / "1" / (src.stem + ".png")
        with Image.open(src) as img:
            img = ImageOps.exif_transpose(img)
            img = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB")
            img.save(png, compress_level=1)
        flat = out / "2" / png.name
        with Image.open(png) as img:
            if img.mode == "RGBA":
                back = Image.new("RGBA", img.size, (255, 255, 255, 255))
                Image.alpha_composite(back, img).convert("RGB").save(flat, compress_level=1)
            else:
                shutil.copyfile(png, flat)
        final = out / "3" / png.name
        with Image.open(flat) as img:
            if max(img.size) > MAX_SIDE:
                img.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS, reducing_gap=3.0)
                img.save(final, compress_level=1)
            else:
                shutil.copyfile(flat, final)


def ideal_split(raw: Path, out: Path, cores: int) -> None:
    """The plain loop on `cores` size-balanced shares of the images, one process each."""
    files = sorted(raw.iterdir(), key=lambda p: -p.stat().st_size)
    shares = [raw.parent / f"share{i}" for i in range(cores)]
    for share in shares:
        share.mkdir(exist_ok=True)
    for i, f in enumerate(files):
        target = shares[i % cores] / f.name
        if not target.exists():
            shutil.copyfile(f, target)
    start = time.perf_counter()
    procs = [multiprocessing.Process(target=plain_loop, args=(share, out / share.name))
             for share in shares]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    return time.perf_counter() - start


def best_of(repeat: int, fn, *args) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
        shutil.rmtree(args[1])
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cores = default_jobs()
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "raw", Path(tmp) / "out"
        megapixels = make_images(raw, args.images)
        print(f"{args.images} images, {megapixels:.0f} MP, {cores} cores; best of {args.repeat}")
        results = {}
        # interleaved, so that drifts in machine load hit every variant alike
        for _ in range(args.repeat):
            for name, fn, extra in (("plain Pillow loop", plain_loop, ()),
                                    ("lorakit --jobs 1", lorakit, (1,)),
                                    (f"lorakit --jobs {cores}", lorakit, (cores,))):
                results[name] = min(results.get(name, float("inf")), best_of(1, fn, raw, out, *extra))
            ceiling = ideal_split(raw, out, cores)
            shutil.rmtree(out)
            results[f"ideal split x{cores}"] = min(results.get(f"ideal split x{cores}", float("inf")), ceiling)
    print(f"{'variant':<22}{'seconds':>9}{'images/s':>10}")
    for name, seconds in results.items():
        print(f"{name:<22}{seconds:>9.2f}{args.images / seconds:>10.1f}")
    plain, one, many, ideal = results.values()
    print(f"all cores vs --jobs 1: {one / many:.2f}x (target >= 1.8x on 2 cores)")
    print(f"machine ceiling (ideal split vs plain loop): {plain / ideal:.2f}x; "
          f"lorakit reaches {(one / many) / (plain / ideal) * 100:.0f}% of it")
    print(f"--jobs 1 vs plain loop: {(one / plain - 1) * 100:+.1f}% time (target within +15%)")


if __name__ == "__main__":
    main()
