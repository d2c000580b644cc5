"""`curate inspect`: the first command to run on a raw folder. One pass decodes every image
once and reports formats and modes, transparency, animation, sizes, corrupt files, missing
captions and near-duplicates, with the command that fixes each problem."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorakit.captions import caption_files
from lorakit.curate.dedupe import DEFAULT_THRESHOLD, Fingerprint, group_duplicates
from lorakit.engine import RunOptions, analyse
from lorakit.images import ImageError, load_image, read_header
from lorakit.report import FAILED, OK, Outcome, Report, Section

SIZE_BANDS = [(0, 512, "< 512"), (512, 1024, "512-1023"), (1024, 2048, "1024-2047"),
              (2048, 3001, "2048-3000"), (3001, 10**9, "> 3000")]
LISTED = 10  # problem lists show this many names, then a count


@dataclass
class Facts:
    format: str
    mode: str
    width: int
    height: int
    frames: int
    transparent: bool
    captioned: bool
    fingerprint: Fingerprint | None
    error: str = ""


class Inspector:
    def __init__(self, max_pixels: int):
        self.max_pixels = max_pixels

    def __call__(self, path: Path) -> Facts:
        captioned = bool(caption_files(path))
        try:
            header = read_header(path, self.max_pixels)
        except ImageError as exc:
            return Facts("?", "?", 0, 0, 0, False, captioned, None, str(exc))
        try:
            img = load_image(path, self.max_pixels)
        except ImageError as exc:
            return Facts(header.format, header.mode, header.width, header.height, header.frames,
                         header.has_alpha, captioned, None, str(exc))
        fingerprint = Fingerprint.of(img, path.stat().st_size)
        # load_image drops an alpha channel that hides nothing, so RGBA means real transparency
        return Facts(header.format, header.mode, img.width, img.height, header.frames,
                     img.mode == "RGBA", captioned, fingerprint)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown + (f" … and {len(names) - LISTED} more" if len(names) > LISTED else "")


def inspect_folder(src: Path, options: RunOptions, min_side: int = 512, max_side: int = 3000,
                   threshold: int = DEFAULT_THRESHOLD) -> Report:
    _, rels, facts = analyse(src, Inspector(options.max_pixels), options, "inspect")
    report = Report("inspect", str(src))
    names = [rel.as_posix() for rel in rels]
    for name, f in zip(names, facts):
        report.outcomes.append(Outcome(
            name, FAILED if f.error else OK, f.error,
            {"format": f.format, "mode": f.mode, "width": f.width, "height": f.height,
             "frames": f.frames, "transparent": f.transparent, "captioned": f.captioned}))
    good = [(n, f) for n, f in zip(names, facts) if not f.error]

    formats = Counter((f.format, f.mode) for _, f in good)
    report.sections.append(Section("formats", ["format", "mode", "images"],
                                   [[fm, mode, n] for (fm, mode), n in sorted(formats.items())]))
    if good:
        long_sides = np.array([max(f.width, f.height) for _, f in good])
        megapixels = np.array([f.width * f.height / 1e6 for _, f in good])
        bands = [[label, int(((long_sides >= lo) & (long_sides < hi)).sum())]
                 for lo, hi, label in SIZE_BANDS]
        report.sections.append(Section("long side (px)", ["band", "images"], bands))
        report.data["size"] = {
            "long_side": {"min": int(long_sides.min()), "median": float(np.median(long_sides)),
                          "max": int(long_sides.max())},
            "megapixels": {"min": float(megapixels.min()), "median": float(np.median(megapixels)),
                           "max": float(megapixels.max())},
        }
    prints = [f.fingerprint for _, f in good]
    groups = group_duplicates(prints, threshold)
    problems = {
        "corrupt or unreadable": ([n for n, f in zip(names, facts) if f.error], "remove or re-download"),
        "transparent": ([n for n, f in good if f.transparent], "curate flatten"),
        "animated (first frame used)": ([n for n, f in good if f.frames > 1], "curate convert"),
        "not png/jpeg": ([n for n, f in good if f.format not in ("PNG", "JPEG")], "curate convert"),
        f"too small (short side < {min_side})":
            ([n for n, f in good if min(f.width, f.height) < min_side], "curate upscale"),
        f"too large (long side > {max_side})":
            ([n for n, f in good if max(f.width, f.height) > max_side], "curate resize"),
        "no caption file": ([n for n, f in zip(names, facts) if not f.captioned], "tag auto"),
        "near-duplicates": ([good[i][0] for g in groups for i in g[1:]], "curate dedupe"),
    }
    report.sections.append(Section(
        f"{len(names)} images: problems", ["problem", "images", "fix with", "which"],
        [[what, len(found), fix, _listed(found)] for what, (found, fix) in problems.items() if found]))
    report.data["problems"] = {what: found for what, (found, _) in problems.items()}
    report.data["duplicate_groups"] = [[good[i][0] for i in g] for g in groups]
    return report
