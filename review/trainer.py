"""What the trainer will see of the dataset, for the review page: each image's bucket and the
scale that brings it there, its caption's CLIP token count against data.max_token_length, and
per folder its images x repeats and a bucket histogram. From train's own code, so the page and
`train plan` agree: the folders and their options come from train/data.subsets, the bucket from
train/data.bucket_of, the tokens from the tokenizer train counts with (train/clip_tokens.py).

The settings are a train config's (`lorakit review DIR --config lora.toml`), else lorakit's
defaults with data.image_root = DIR. An image no folder of the config trains (a plain folder, or
one the config does not name) is still given the bucket [data]'s settings would give it, and
marked as not trained.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

from lorakit.errors import UserError
from lorakit.train.caption_lines import caption_lines, lines_rule
from lorakit.train.clip_tokens import count, model_tokenizer
from lorakit.train.config import Config
from lorakit.train.data import Subset, bucket_of, resolution_pair, subsets, trained_caption
from lorakit.train.subset_options import buckets, caption_options


def _real(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop: no folder of the config holds it
        return None


def default_config(root: Path) -> Config:
    config = Config()
    config.data.image_root = str(root)
    return config


class TrainerView:
    def __init__(self, root: Path, config: Config | None = None, source: str = ""):
        self.root = root
        self.config = config or default_config(root)
        self.source = source or "lorakit's defaults"
        data = self.config.data
        try:
            found = subsets(self.config)
        except UserError as exc:  # nothing trains as configured: every image gets [data]'s bucket
            found, self.problem = [], str(exc)
        else:
            self.problem = ""
        self.by_image = {real: s for s in found for image in s.images if (real := _real(image)) is not None}
        self.fallback = Subset(root, 0, None, False, resolution_pair(data.resolution), data.batch_size,
                               data.caption_extension, captions=caption_options(data), buckets=buckets(data))
        self._tokenizer = None
        self._making = threading.Lock()

    def warm(self) -> None:
        """Make the tokenizer in the background (importing transformers takes a second or two),
        so the first image the page opens does not wait on it."""
        threading.Thread(target=lambda: self.tokenizer, daemon=True).start()

    @property
    def tokenizer(self):
        with self._making:
            if self._tokenizer is None:
                self._tokenizer = model_tokenizer(self.config.model.base)
            return self._tokenizer

    def settings(self) -> dict:
        d = self.config.data
        b = buckets(d)
        return {"source": self.source, "resolution": list(resolution_pair(d.resolution)),
                "buckets": b.enable, "min": b.min_reso, "max": b.max_reso, "step": b.reso_steps,
                "no_upscale": b.no_upscale, "max_tokens": d.max_token_length, "problem": self.problem}

    def _subset(self, rel: str) -> Subset | None:
        return self.by_image.get(_real(self.root / rel))

    def bucket(self, rel: str, width: int, height: int) -> tuple[int, int]:
        return bucket_of((width, height), self._subset(rel) or self.fallback, self.config)

    def image(self, rel: str, width: int, height: int, text: str | None) -> dict:
        """This image as the trainer sees it: bucket, scale (over 1: enlarged), repeats, the
        caption it trains with (train/data.trained_caption: line 1, or without one the folder's
        name) and its CLIP tokens; the further lines' tokens apart, and what trains of them (line 1
        only, unless the config's enable_wildcard or caption_recipe reads them: "lines_rule").
        `text`: the caption as the page holds it (None: no caption file)."""
        subset = self._subset(rel)
        bw, bh = self.bucket(rel, width, height)
        scale = max(bw / width, bh / height)  # train/data.pixels: scaled to cover the bucket, then cropped
        trained = trained_caption(text, self.root / rel, subset or self.fallback, self.config)
        first = text.split("\n", 1)[0].strip() if text else ""
        source = "line 1" if first else "the file name's words" if self.config.data.template else "the folder's name"
        further = [line.strip() for line in text.split("\n")[1:] if line.strip()] if text else []
        options, token = (subset or self.fallback).captions, (subset or self.fallback).token
        # with enable_wildcard or a caption recipe the further lines train too: said instead of "not trained"
        rule = lines_rule(options.wildcard, options.recipe, caption_lines(text), token) if text else None
        return {"trains": subset is not None, "repeats": subset.repeats if subset else 0,
                "regularisation": bool(subset and subset.is_reg), "bucket": [bw, bh], "scale": round(scale, 3),
                "upscaled": scale > 1, "caption": trained, "source": source,
                "tokens": count(self.tokenizer, trained) if trained else 0,
                "other_lines": [count(self.tokenizer, line) for line in further], "lines_rule": rule,
                "max_tokens": self.config.data.max_token_length}

    def folders(self, sizes: dict[str, tuple[str, int, int]]) -> list[dict]:
        """Per top folder of DIR: images, repeats, images x repeats, how many are enlarged, and a
        bucket histogram. `sizes`: rel -> (folder, width, height) of the readable images."""
        out: dict[str, dict] = {}
        for rel, (folder, width, height) in sizes.items():
            subset = self._subset(rel)
            row = out.setdefault(folder, {"folder": folder, "images": 0, "trained": 0, "weighted": 0,
                                          "upscaled": 0, "buckets": Counter()})
            bw, bh = self.bucket(rel, width, height)
            row["images"] += 1
            if subset is not None:
                row["trained"] += 1
                row["weighted"] += subset.repeats
                row["repeats"] = subset.repeats
            row["upscaled"] += max(bw / width, bh / height) > 1
            row["buckets"][f"{bw}x{bh}"] += 1
        for row in out.values():
            row["buckets"] = sorted(row["buckets"].items(), key=lambda kv: -kv[1])
        return [out[f] for f in sorted(out)]
