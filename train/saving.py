"""What a run writes, and where (README "train run"):

- with a network: `NAME.safetensors` (+ `NAME-000004.safetensors` per epoch save) in kohya's
  format; embeddings inside it (`bundle_emb.*`, the default) or, unbundled, as standalone files
  in `NAME_embeddings/` next to every save, incremental ones included (OneTrainer's layout);
- without one (`network.module = "none"`, textual inversion): `EMB.safetensors` (or A1111 `.pt`)
  per embedding, `EMB-000004.safetensors` per save: A1111 uses the file name as the prompt word;
- with `output.log_dir`: at every save a copy of each embedding as `embeddings/EMB-STEP.ext`,
  sample images in `images/`, and with `saving.embedding_in_png` a sample PNG that carries the
  embedding in `image_embeddings/` (A1111's textual-inversion log);
- samples every N steps or epochs (`[sampling]`) go to `images/` of the log dir, else `sample/`;
- `state.pt` and `config.json`, what `train resume` continues from (with `saving.save_state` at
  every save, and always when a run stops early); the state each replaces is kept as
  `state-LABEL.pt` beside its checkpoint for as long as `saving.keep_last_n` keeps that;
- `.lorakit/saves.json`: which of these files this run wrote (train/outputs.py), the only ones
  `saving.keep_last_n` deletes.

Every file is written atomically; one that cannot be (a full disk) stops the run with an error
naming it, and the file it would have replaced is kept.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from lorakit.errors import UserError
from lorakit.fsio import atomic_path
from lorakit.train.config import Config
from lorakit.train.embedding_files import bundle_keys, save_png_with_embedding, save_standalone
from lorakit.train.metadata import metadata
from lorakit.train.network import save
from lorakit.train.network_kinds import KINDS
from lorakit.train.outputs import STATE, Record, landing, write_state
from lorakit.train.precision import DTYPES
from lorakit.train.sampling import generate, prompts_for, save_sample


class Saver:
    def __init__(self, config: Config, out_dir: Path, record: Record, items, network, embeddings, models, parking,
                 plan: dict, fallback_prompt: str):
        self.config, self.out_dir, self.record, self.items = config, out_dir, record, items
        self.parking = parking  # sampling borrows back the models parked off the device
        self.network, self.embeddings, self.models = network, embeddings, models
        self.plan = plan  # steps_per_epoch, total, started
        self.fallback_prompt = fallback_prompt
        self.saved: list[str] = []
        self.has_network = KINDS[config.network.module].builder is not None
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
        with landing(path):
            save(self.network, path, meta, DTYPES[self.config.saving.precision], extra)
        self.saved.append(str(path))

    def _embedding(self, item, path: Path, step: int) -> None:
        with landing(path):
            save_standalone(path, item.name, self.embeddings.vectors(item), step, self.base_name)
        self.saved.append(str(path))

    def final_files(self) -> list[Path]:
        """The files the end of the run writes (the final LoRA, or each embedding)."""
        if self.has_network:
            return [self.out_dir / f"{self.config.output.name}.safetensors"]
        return [self.out_dir / f"{item.name}{self.ext}" for item in self._embedding_items()]

    def checkpoint(self, step: int, label: str | None = None) -> None:
        """label None: the final files; else an intermediate save (`000004`, `step00000010`),
        recorded as this run's and pruned to saving.keep_last_n."""
        suffix = f"-{label}" if label else ""
        name = self.config.output.name
        before = len(self.saved)
        if self.has_network:
            self._lora(self.out_dir / f"{name}{suffix}.safetensors", step)
            if not self.config.saving.bundle_embeddings:
                for item in self._embedding_items():
                    self._embedding(item, self.out_dir / f"{name}{suffix}_embeddings" / f"{item.name}{self.ext}", step)
        else:
            for item in self._embedding_items():
                self._embedding(item, self.out_dir / f"{item.name}{suffix}{self.ext}", step)
        if label:
            self.record.wrote(label, step, [Path(p) for p in self.saved[before:]])
            self.record.prune(self.config.saving.keep_last_n)
        else:
            self.record.finished(self.final_files())
        self.record.write()
        if self.config.output.log_dir:
            self._log(step)

    def keep_state(self, state: dict, label: str) -> None:
        """The state `train resume` continues from, as state.pt (with config.json). The state it
        replaces stays as `state-LABEL.pt` while its checkpoint is kept."""
        previous, step = self.record.state, state["step"]
        if previous and previous["step"] == step:
            return  # already saved at this step (a save, then a stop)
        if previous and self.record.has(previous["label"]) and (self.out_dir / STATE).is_file():
            kept = self.out_dir / f"state-{previous['label']}.pt"
            with landing(kept), atomic_path(kept) as tmp:
                try:
                    os.link(self.out_dir / STATE, tmp)  # the same bytes under a second name: no copy
                except OSError:  # a file system without hard links
                    shutil.copyfile(self.out_dir / STATE, tmp)
            self.record.add(previous["label"], kept)
        write_state(state, json.dumps(asdict(self.config)), self.out_dir)
        self.record.state = {"label": self.record.label_at(step) or label, "step": step}
        self.record.write()

    def _log(self, step: int) -> None:
        log_dir = Path(self.config.output.log_dir)
        for item in self._embedding_items():
            path = log_dir / "embeddings" / f"{item.name}-{step}{self.ext}"
            with landing(path):
                save_standalone(path, item.name, self.embeddings.vectors(item), step, self.base_name)
        samples = self.sample(step)
        if self.config.saving.embedding_in_png and samples:
            image = samples[0][1]
            for item in self._embedding_items():
                path = log_dir / "image_embeddings" / f"{item.name}-{step}.png"
                with landing(path):
                    save_png_with_embedding(image, path, item.name, self.embeddings.vectors(item), step, self.base_name)

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
            path = folder / f"{prefix}-{step:06d}-{k:02d}-{prompt.seed}.png"
            with landing(path):
                save_sample(image, parameters, path)
        self._sampled_at, self._last_samples = step, samples
        return samples

