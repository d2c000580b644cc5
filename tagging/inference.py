"""Running a WD-style ONNX tagger: preprocessing exactly as SmilingWolf's reference app does
(docs/formats.md, "Tagging"), an onnxruntime session with explicitly chosen providers, and a decode pool
that runs ahead of inference so the model never waits for the disk or the JPEG decoder.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from lorakit.errors import UserError
from lorakit.images import DEFAULT_MAX_PIXELS, ImageError, flatten, load_image
from lorakit.shards import local_device_index

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def prepare(img: Image.Image, size: int) -> np.ndarray:
    """RGB/RGBA -> float32 [size, size, 3], BGR, 0..255: alpha over white, padded to a centred
    white square, resized with bicubic."""
    img = flatten(img).convert("RGB")  # alpha over white
    side = max(img.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1].copy()


@dataclass(frozen=True)
class Prepared:
    path: Path
    array: np.ndarray | None
    error: str = ""


class _Preparer:
    def __init__(self, size: int, max_pixels: int):
        self.size, self.max_pixels = size, max_pixels

    def __call__(self, path: Path) -> Prepared:
        try:
            return Prepared(path, prepare(load_image(path, self.max_pixels), self.size))
        except ImageError as exc:
            return Prepared(path, None, str(exc))
        except OSError as exc:
            return Prepared(path, None, f"{type(exc).__name__}: {exc}")


def _init_decoder() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"


def prepared_stream(paths: list[Path], size: int, workers: int,
                    max_pixels: int = DEFAULT_MAX_PIXELS, ahead: int = 64) -> Iterator[Prepared]:
    """Images decoded and preprocessed by `workers` processes, in order, at most `ahead` in
    flight (a 448 px image is 2.4 MB as float32: an unbounded queue would fill the memory)."""
    fn = _Preparer(size, max_pixels)
    if workers <= 0:
        yield from map(fn, paths)
        return
    import multiprocessing

    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_decoder) as pool:
        queue: list[Future] = []
        feed = iter(paths)
        for path in feed:
            queue.append(pool.submit(fn, path))
            if len(queue) >= ahead:
                break
        while queue:
            done = queue.pop(0).result()
            nxt = next(feed, None)
            if nxt is not None:
                queue.append(pool.submit(fn, nxt))
            yield done


class Session:
    """An onnxruntime session over a WD-shaped model: NHWC float32 in, [N, tags] sigmoid out."""

    def __init__(self, model: Path, provider: str = "auto", threads: int = 0):
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # no warnings about providers that are not there
        available = ort.get_available_providers()
        if provider == "auto":
            wanted = PROVIDERS["cuda"] if "CUDAExecutionProvider" in available else PROVIDERS["cpu"]
        elif provider in PROVIDERS:
            wanted = PROVIDERS[provider]
            if wanted[0] not in available:
                raise UserError(f"--provider {provider}: {wanted[0]} is not in this onnxruntime "
                                f"(available: {', '.join(available)}); install onnxruntime-gpu "
                                "(pip install lorakit[gpu]) or use --provider cpu")
        else:
            raise UserError(f"unknown provider {provider!r}: use auto, {', '.join(PROVIDERS)}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        gpu = local_device_index()  # under torchrun / accelerate launch: this process's own GPU
        if gpu:
            wanted = [(p, {"device_id": str(gpu)}) if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
                      else p for p in wanted]
        try:
            self.session = ort.InferenceSession(str(model), options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserError(f"{model}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
        self.providers = self.session.get_providers()
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        inp = self.session.get_inputs()[0]
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
        shape = inp.shape
        if len(shape) != 4 or not isinstance(shape[1], int) or shape[3] != 3:
            raise UserError(f"{model}: input {inp.name} has shape {shape}, not [N, size, size, 3]")
        self.size = shape[1]
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None  # some v2 exports: 1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch and len(batch) != self.fixed_batch:
            return np.concatenate([self(batch[i:i + self.fixed_batch])
                                   for i in range(0, len(batch), self.fixed_batch)])
        return self.session.run([self.output_name], {self.input_name: batch})[0]


def tag_all(session: Session, paths: list[Path], batch: int, workers: int, max_pixels: int,
            progress: Callable[[int], None] = lambda n: None,
            on_first_batch: Callable[[], None] = lambda: None) -> dict[Path, np.ndarray | str]:
    """Probabilities per image (or the error that stopped it), in batches."""
    out: dict[Path, np.ndarray | str] = {}
    pending: list[Prepared] = []

    def flush() -> None:
        if pending:
            on_first_batch()  # the start-up benchmark reads when the first batch began
            probs = session(np.stack([p.array for p in pending]))
            for item, row in zip(pending, probs):
                out[item.path] = row.astype(np.float32)
            progress(len(pending))
            pending.clear()

    for item in prepared_stream(paths, session.size, workers, max_pixels):
        if item.array is None:
            out[item.path] = item.error
            progress(1)
            continue
        pending.append(item)
        if len(pending) >= batch:
            flush()
    flush()
    return out
