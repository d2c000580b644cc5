"""`tag auto`: tag every image with a WD-style ONNX tagger and write its caption.

The probabilities of every run are kept in a compact sidecar per folder
(`.lorakit-tags.npz`: the tags above 0.01, as float16), so `--rethreshold` rewrites captions
at new thresholds without running the model again.
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from lorakit.captions import instance_token
from lorakit.discovery import check_source, discover
from lorakit.errors import UserError
from lorakit.fsio import atomic_path
from lorakit.images import DEFAULT_MAX_PIXELS
from lorakit.locks import folder_lock
from lorakit.parallel import default_jobs, make_progress
from lorakit.report import FAILED, Outcome, Report
from lorakit.shards import Shard
from lorakit.tagging import relations
from lorakit.tagging.compose import Thresholds, Writing, compose, select
from lorakit.tagging.defaults import CHARACTER, GENERAL
from lorakit.tagging.inference import Session, tag_all
from lorakit.tagging.models import TagInfo, quantized, read_tags, resolve
from lorakit.tagging.rewrite import rewrite

SIDECAR = ".lorakit-tags.npz"
FLOOR = 0.01  # probabilities below this are not stored (no threshold or MCut goes that low)


@dataclass
class AutoOptions:
    vocab: str = "danbooru"
    model: str | None = None
    model_dir: Path | None = None
    provider: str = "auto"
    precision: str = "fp32"  # or int8
    batch: int | None = None  # default: 1 on the CPU (batching only adds latency there), 16 on a GPU
    workers: int | None = None  # decode processes; default: 1 on CPU, up to 8 with a GPU
    general: float | None = None  # None: the model's default
    character: float | None = None
    mcut: bool = False
    writing: Writing = field(default_factory=Writing)
    rethreshold: bool = False
    dry_run: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = False
    console: object = None
    only: list[Path] | None = None  # these images (relative to the folder) rather than all of them
    on_progress: Callable[[str, int, int], None] | None = None  # (stage, done, total): the review page's
    share: Shard = Shard()  # this process's share of the folder (--shard K/N, or a launcher's)


# --- the probability sidecars ------------------------------------------------------------------


def save_sidecars(root: Path, probs: dict[Path, np.ndarray], info: TagInfo, model: str) -> None:
    by_folder: dict[Path, dict[str, np.ndarray]] = {}
    for rel, row in probs.items():
        by_folder.setdefault(rel.parent, {})[rel.name] = row
    for folder, rows in by_folder.items():
        path = root / folder / SIDECAR
        stored = load_sidecar(path)
        if stored and stored[0] == info and stored[1] == model:
            rows = {**stored[2], **rows}  # same model: keep the other images' rows
        names = sorted(rows)
        indices = [np.nonzero(rows[n] >= FLOOR)[0].astype(np.uint32) for n in names]
        values = [rows[n][i].astype(np.float16) for n, i in zip(names, indices)]
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(
                    f, model=np.array(model), images=np.array(names), tags=np.array(info.names),
                    categories=np.array(info.categories, np.int16),
                    offsets=np.cumsum([0] + [len(i) for i in indices]),
                    indices=np.concatenate(indices) if indices else np.zeros(0, np.uint32),
                    values=np.concatenate(values) if values else np.zeros(0, np.float16))


def load_sidecar(path: Path, only: str | None = None) -> tuple[TagInfo, str, dict[str, np.ndarray]] | None:
    """The folder's rows by image name; `only`: that image's row alone (the review page asks for
    one image, and a dense row per image of a large folder is hundreds of MB)."""
    if not path.is_file():
        return None
    try:
        _check_sizes(path)
        with np.load(path, allow_pickle=False) as data:
            info = TagInfo(tuple(str(t) for t in data["tags"]), tuple(int(c) for c in data["categories"]))
            offsets, indices, values = data["offsets"], data["indices"], data["values"]
            rows = {}
            for n, name in enumerate(data["images"]):
                if only is not None and str(name) != only:
                    continue
                row = np.zeros(len(info.names), np.float32)
                row[indices[offsets[n]:offsets[n + 1]]] = values[offsets[n]:offsets[n + 1]]
                rows[str(name)] = row
            return info, str(data["model"]), rows
    except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: damaged, or not a sidecar lorakit wrote ({exc}); delete it and run tag auto "
                        "again") from None


def _check_sizes(path: Path) -> None:
    """A sidecar's arrays are at most one value per image and tag: a member that unpacks to more
    was not written by tag auto (a crafted one can unpack to gigabytes), so nothing is unpacked."""
    with zipfile.ZipFile(path) as z:
        sizes = {info.filename: info.file_size for info in z.infolist()}
        for small in ("images.npy", "tags.npy", "categories.npy", "model.npy"):
            if sizes.get(small, 0) > 256 << 20:
                raise ValueError(f"{small} is {sizes[small]} bytes")
    with np.load(path, allow_pickle=False) as data:
        cells = len(data["images"]) * len(data["tags"]) + len(data["images"]) + 1
    for member in ("offsets.npy", "indices.npy", "values.npy"):
        if sizes.get(member, 0) > cells * 8 + 4096:
            raise ValueError(f"{member} holds more than one value per image and tag")


# --- the stage -------------------------------------------------------------------------------


def _run_model(root: Path, rels: list[Path], opts: AutoOptions, report: Report):
    files = resolve(opts.model, opts.vocab, opts.model_dir)
    model = quantized(files.model) if opts.precision == "int8" else files.model
    info = read_tags(files.tags)
    started = time.perf_counter()
    session = Session(model, opts.provider)
    gpu = session.providers[0] != "CPUExecutionProvider"
    workers = opts.workers if opts.workers is not None else (min(8, default_jobs()) if gpu else 1)
    batch = opts.batch or (16 if gpu else 1)
    if session.metadata.get("lorakit_demo") == "1":
        report.notes.append("DEMO MODEL: lorakit's stand-in, not a real tagger. Its tags only show the "
                            "pipeline working; use --model or --model-dir for real tags")
    report.data.update(batch=batch, workers=workers)
    report.data.update(model=files.name, providers=session.providers, input_size=session.size,
                       precision=opts.precision, session_seconds=round(time.perf_counter() - started, 3))
    done = [0]

    def advance(n: int) -> None:
        bar.advance(task, n)
        done[0] += n
        if opts.on_progress is not None:
            opts.on_progress("tagging", done[0], len(rels))

    with make_progress(opts.console, opts.progress) as bar:
        task = bar.add_task(f"tag auto ({files.name})", total=len(rels))
        raw = tag_all(session, [root / r for r in rels], batch, workers, opts.max_pixels,
                      advance, on_first_batch=lambda: report.data.setdefault("first_batch_at", time.time()))
    probs = {rel: raw[root / rel] for rel in rels}
    good = {rel: p for rel, p in probs.items() if not isinstance(p, str)}
    if good and len(next(iter(good.values()))) != len(info.names):
        raise UserError(f"{files.model} has {len(next(iter(good.values())))} outputs but "
                        f"{files.tags} lists {len(info.names)} tags: they do not belong together")
    if not opts.dry_run:  # shares of one folder add their rows to its sidecar one at a time
        with folder_lock(root, "tag auto (probabilities)", wait=120, name="lock-sidecars"):
            save_sidecars(root, good, info, files.name)
    return info, files, probs


def _stored(root: Path, rels: list[Path]):
    probs: dict[Path, np.ndarray | str] = {}
    info = None
    cache: dict[Path, tuple] = {}
    for rel in rels:
        folder = root / rel.parent
        if folder not in cache:
            cache[folder] = load_sidecar(folder / SIDECAR)
        stored = cache[folder]
        if stored is None or rel.name not in stored[2]:
            probs[rel] = "no stored probabilities: run tag auto without --rethreshold first"
            continue
        if info is not None and stored[0] != info:
            raise UserError(f"{folder / SIDECAR} was made by another model than the other folders'")
        info = stored[0]
        probs[rel] = stored[2][rel.name]
    return info, probs


def auto_tag(root: Path, opts: AutoOptions) -> Report:
    root = check_source(root)
    rels = discover(root)
    if opts.only is not None:
        wanted = set(opts.only)
        rels = [r for r in rels if r in wanted]
    if not opts.share.whole:
        rels = [r for r in rels if opts.share.mine(r.as_posix())]
    report = Report("auto", str(root))
    if not opts.share.whole:
        report.data["shard"] = opts.share.describe(len(rels))
    if not rels:
        return report
    spec = None
    if opts.rethreshold:
        info, probs = _stored(root, rels)
        report.data["rethreshold"] = True
    else:
        info, files, probs = _run_model(root, rels, opts, report)
        spec = files.spec
    thresholds = Thresholds(
        general=opts.general if opts.general is not None else (spec.general if spec else GENERAL),
        character=opts.character if opts.character is not None else (spec.character if spec else CHARACTER),
        mcut=opts.mcut)
    rel_data = relations.load(opts.vocab) if opts.writing.prune else None
    found = {rel: select(p, info, thresholds) for rel, p in probs.items() if not isinstance(p, str)}

    def write(image: Path, existing: list[str]) -> list[str] | None:
        if image not in found:
            return None
        return compose(found[image], existing, opts.writing, rel_data, instance_token(image))

    written = rewrite(root, "auto", write, opts.dry_run, create=True, progress=opts.on_progress, share=opts.share)
    report.outcomes = written.outcomes + [
        Outcome(rel.as_posix(), FAILED, p) for rel, p in probs.items() if isinstance(p, str)]
    report.sections = written.sections
    report.notes += written.notes
    report.data["thresholds"] = {"general": thresholds.general, "character": thresholds.character,
                                 "mcut": thresholds.mcut}
    if rel_data is not None:
        report.notes.append(f"implied tags pruned with {opts.vocab} relations ({rel_data.source})")
    return report
