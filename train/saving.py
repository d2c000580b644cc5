"""What a run writes, and where (README "train run"):

- with a network: `NAME.safetensors` (+ `NAME-000004.safetensors` per epoch save) in kohya's
  format; embeddings inside it (`bundle_emb.*`, the default) or, unbundled, as standalone files
  in `NAME_embeddings/` next to every save, incremental ones included (OneTrainer's layout);
- without one (`network.module = "none"`, textual inversion): `EMB.safetensors` (or A1111 `.pt`)
  per embedding, `EMB-000004.safetensors` per save: A1111 uses the file name as the prompt word;
- with `output.log_dir`: at every save a copy of each embedding as `embeddings/EMB-STEP.ext`,
  sample images in `images/`, and with `saving.embedding_in_png` a sample PNG that carries the
  embedding in `image_embeddings/` (A1111's textual-inversion log);
- samples every N steps or epochs (`[sampling]`) go to `images/` of the log dir, else `sample/`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from lorakit.errors import UserError
from lorakit.fsio import atomic_path, write_text
from lorakit.train.config import Config
from lorakit.train.embedding_files import bundle_keys, save_png_with_embedding, save_standalone
from lorakit.train.metadata import metadata
from lorakit.train.network import save
from lorakit.train.precision import DTYPES
from lorakit.train.sampling import generate, prompts_for, save_sample


class Saver:
    def __init__(self, config: Config, out_dir: Path, items, network, embeddings, models, parking, plan: dict,
                 fallback_prompt: str):
        self.config, self.out_dir, self.items = config, out_dir, items
        self.parking = parking  # sampling borrows back the models parked off the device
        self.network, self.embeddings, self.models = network, embeddings, models
        self.plan = plan  # steps_per_epoch, total, started
        self.fallback_prompt = fallback_prompt
        self.saved: list[str] = []
        self.has_network = config.network.module != "none"
        self.ext = "." + config.saving.embedding_format
        if not self.has_network and any(f"{i.name}{self.ext}" == "state.pt" for i in self._embedding_items()):
            raise UserError("an embedding named 'state' would be saved over the run's state.pt: give it another name")
        self._sampled_at: int | None = None
        self._last_samples: list = []
        base = config.model.base  # recorded in embedding files: a folder's name, or the hub id
        self.base_name = Path(base).name if Path(base).exists() else base

    def _embedding_items(self):
        return self.embeddings.items if self.embeddings else []

    def _lora(self, path: Path, step: int) -> None:
        extra = {}
        if self.config.saving.bundle_embeddings:
            for item in self._embedding_items():
                extra.update(bundle_keys(item.name, self.embeddings.vectors(item)))
        meta = metadata(self.config, self.items, step, self.plan["steps_per_epoch"], self.plan["total"],
                        self.plan["started"], self.models.family)
        save(self.network, path, meta, DTYPES[self.config.saving.precision], extra)
        self.saved.append(str(path))

    def _embedding(self, item, path: Path, step: int) -> None:
        save_standalone(path, item.name, self.embeddings.vectors(item), step, self.base_name)
        self.saved.append(str(path))

    def checkpoint(self, step: int, label: str | None = None) -> None:
        """label None: the final files; else an intermediate save (`000004`, `step00000010`)."""
        suffix = f"-{label}" if label else ""
        name = self.config.output.name
        if self.has_network:
            self._lora(self.out_dir / f"{name}{suffix}.safetensors", step)
            if not self.config.saving.bundle_embeddings:
                for item in self._embedding_items():
                    self._embedding(item, self.out_dir / f"{name}{suffix}_embeddings" / f"{item.name}{self.ext}", step)
        else:
            for item in self._embedding_items():
                self._embedding(item, self.out_dir / f"{item.name}{suffix}{self.ext}", step)
        if label:
            self._prune()
        if self.config.output.log_dir:
            self._log(step)

    def _prune(self) -> None:
        keep = self.config.saving.keep_last_n
        if not keep:
            return
        stems = [self.config.output.name] if self.has_network else [i.name for i in self._embedding_items()]
        ext = ".safetensors" if self.has_network else self.ext
        for stem in stems:
            older = sorted(self.out_dir.glob(f"{stem}-*{ext}"), key=lambda p: p.stat().st_mtime_ns)
            for path in older[:-keep]:
                path.unlink()
                shutil.rmtree(path.with_name(path.name[:-len(ext)] + "_embeddings"), ignore_errors=True)

    def _log(self, step: int) -> None:
        log_dir = Path(self.config.output.log_dir)
        for item in self._embedding_items():
            save_standalone(log_dir / "embeddings" / f"{item.name}-{step}{self.ext}", item.name,
                            self.embeddings.vectors(item), step, self.base_name)
        samples = self.sample(step)
        if self.config.saving.embedding_in_png and samples:
            image = samples[0][1]
            for item in self._embedding_items():
                save_png_with_embedding(image, log_dir / "image_embeddings" / f"{item.name}-{step}.png", item.name,
                                        self.embeddings.vectors(item), step, self.base_name)

    def sample(self, step: int) -> list:
        """Sample images at this step (once, however many triggers fire at it)."""
        if self._sampled_at == step:
            return self._last_samples
        log_dir = self.config.output.log_dir
        folder = Path(log_dir) / "images" if log_dir else self.out_dir / "sample"
        prefix = self._embedding_items()[0].name if not self.has_network and self.embeddings else self.config.output.name
        substitute = self.embeddings.substitute if self.embeddings else (lambda text: text)
        self.network.eval()  # no dropout while sampling
        try:
            with self.parking.borrowed():
                samples = generate(self.models, self.config, prompts_for(self.config, self.fallback_prompt), substitute)
        finally:
            self.network.train()
        for k, (prompt, image, parameters) in enumerate(samples):
            save_sample(image, parameters, folder / f"{prefix}-{step:06d}-{k:02d}-{prompt.seed}.png")
        self._sampled_at, self._last_samples = step, samples
        return samples


def save_state(network, optimizer, embeddings, scaler, step: int, config: Config, path: Path) -> None:
    """What `train resume` continues from: the trained weights, the optimizer's moments, the fp16
    loss scale (without it a resumed fp16 run would restart at the initial scale) and the step."""
    state = {"network": network.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "embeddings": embeddings.state() if embeddings else [], "scaler": scaler.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    write_text(path.with_name("config.json"), json.dumps(asdict(config)))
