"""Additional embeddings (OneTrainer's pivotal tuning) and textual inversion (A1111): new tokens
whose vectors train while every weight of the model stays as it is (docs/formats.md, "Training").

Each embedding gets `token_count` new tokens in every tokenizer. The text encoders' token
embedding matrices are not resized: their forward is wrapped so that ids past the original
vocabulary read the trained vectors, which live in their own parameters (one [count, dim] per
text encoder: SDXL has two). The placeholder in a caption becomes the embedding's tokens before
tokenising, so a placeholder may be several words and never collides with a real word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.errors import UserError
from lorakit.train.config import EmbeddingConfig
from lorakit.train.embedding_files import read_embedding, vectors_for_encoders
from lorakit.train.families import FAMILIES


def safe_name(text: str) -> str:
    """A1111 splits bundle keys on '.', and a space cannot be typed as one prompt word."""
    return re.sub(r"[^\w-]+", "_", text.strip()).strip("_") or "embedding"


@dataclass
class Embedding:
    config: EmbeddingConfig
    name: str
    tokens: list[str]  # the new token strings, one per vector
    vectors: list[nn.Parameter]  # one [count, dim] per text encoder
    pattern: re.Pattern
    stop_step: int | None = None  # the first step it no longer trains (the pivot)

    @property
    def count(self) -> int:
        return len(self.tokens)

    def trains_at(self, step: int) -> bool:
        return self.config.train and (self.stop_step is None or step < self.stop_step)


def check_encoder_rates(configs: list[EmbeddingConfig], family: str | None) -> None:
    """clip_g_learning_rate on a model with one text encoder would be accepted and do nothing."""
    if family is None or FAMILIES[family].two_encoders:
        return
    for cfg in configs:
        if cfg.clip_g_learning_rate is not None:
            raise UserError(f"embedding {cfg.placeholder!r}: clip_g_learning_rate is for SDXL's second text "
                            f"encoder, and this {family} model has one (its rate: clip_l_learning_rate or "
                            "learning_rate)")


def placeholder_pattern(placeholder: str) -> re.Pattern:
    words = [re.escape(w) for w in placeholder.split()]
    # whole words only, any case and spacing: CLIP lowercases and splits on spaces anyway
    return re.compile(r"(?<![\w])" + r"\s+".join(words) + r"(?![\w])", re.IGNORECASE)


def stop_step(cfg: EmbeddingConfig, steps_per_epoch: int) -> int | None:
    """The first step an embedding no longer trains (its pivot), or None: until the end."""
    after = cfg.stop_training_after
    if after is None:
        return None
    return after * (steps_per_epoch if cfg.stop_training_after_unit == "epochs" else 1)


def _token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


@dataclass
class Embeddings:
    """Every embedding of a run, attached to the tokenizers and text encoders it was built for."""
    items: list[Embedding]
    tokenizers: list
    text_encoders: list
    _hooks: list = field(default_factory=list)
    _targets: list = field(default_factory=list)  # per encoder: median norm of the vocabulary
    _first_ids: list = field(default_factory=list)  # per tokenizer: the id of the first new token

    @classmethod
    def build(cls, configs: list[EmbeddingConfig], tokenizers: list, text_encoders: list) -> "Embeddings":
        items: list[Embedding] = []
        names: set[str] = set()
        first_ids = [len(tok) for tok in tokenizers]
        for index, cfg in enumerate(configs):
            if not cfg.placeholder.strip():
                raise UserError(f"embeddings[{index}]: placeholder is empty; set it to the trigger word of the captions")
            name = safe_name(cfg.name or cfg.placeholder)
            if name in names:
                raise UserError(f"embeddings[{index}]: a second embedding named {name!r}; give it another name")
            names.add(name)
            base = None
            if cfg.base_embedding:
                base = vectors_for_encoders(read_embedding(cfg.base_embedding), text_encoders, cfg.base_embedding)
            count = base[0].shape[0] if base else (cfg.token_count or 1)
            if base and cfg.token_count and cfg.token_count != count:
                raise UserError(f"embeddings[{index}]: token_count = {cfg.token_count}, but "
                                f"{cfg.base_embedding} holds {count} vectors; remove token_count")
            if count < 1:
                raise UserError(f"embeddings[{index}]: token_count must be at least 1")
            tokens = [f"<lkemb{index}_{k}>" for k in range(count)]
            vectors = []
            for e, (tok, encoder) in enumerate(zip(tokenizers, text_encoders)):
                weight = encoder.get_input_embeddings().weight
                if base:
                    init = base[e].to(weight.device, torch.float32)
                else:
                    ids = _token_ids(tok, cfg.init_text)[:count]
                    ids += _token_ids(tok, "*")[:1] * (count - len(ids))  # padded with "*"
                    init = weight.detach()[ids].float()
                vectors.append(nn.Parameter(init.clone(), requires_grad=cfg.train))
            items.append(Embedding(cfg, name, tokens, vectors, placeholder_pattern(cfg.placeholder)))
        for tok, first in zip(tokenizers, first_ids):
            tok.add_tokens([t for item in items for t in item.tokens])
            added = tok.convert_tokens_to_ids([t for item in items for t in item.tokens])
            if added != list(range(first, first + len(added))):
                raise UserError("the tokenizer did not give the new tokens consecutive ids")
        out = cls(items, tokenizers, text_encoders)
        if any(cfg.preserve_norm for cfg in configs):  # read only when used: a value read stalls a GPU
            out._targets = [float(enc.get_input_embeddings().weight.detach().float().norm(dim=1).median())
                            for enc in text_encoders]
        out._first_ids = first_ids
        return out

    # --- captions -------------------------------------------------------------------------

    def substitute(self, text: str) -> str:
        """The placeholders of a caption or prompt replaced by their tokens."""
        for item in self.items:
            text = item.pattern.sub(" ".join(item.tokens), text)
        return text

    def token_cost(self, text: str) -> int:
        """How many CLIP tokens `text` takes once its placeholders are substituted."""
        return len(_token_ids(self.tokenizers[0], self.substitute(text)))

    # --- training -------------------------------------------------------------------------

    def attach(self) -> None:
        for e, encoder in enumerate(self.text_encoders):
            module = encoder.get_input_embeddings()
            original = module.forward
            rows = module.weight.shape[0]
            first = self._first_ids[e]

            def forward(ids, e=e, original=original, rows=rows, first=first):
                extra = torch.cat([item.vectors[e] for item in self.items])
                base = original(ids.clamp(max=rows - 1))
                new = (ids >= first)[..., None]
                added = nn.functional.embedding((ids - first).clamp(0, extra.shape[0] - 1), extra)
                return torch.where(new, added.to(base.dtype), base)
            module.forward = forward
            self._hooks.append((module, original))

    def detach(self) -> None:
        for module, original in self._hooks:
            module.forward = original
        self._hooks.clear()

    def parameters(self) -> list[nn.Parameter]:
        return [v for item in self.items if item.config.train for v in item.vectors]

    def resolve_stops(self, steps_per_epoch: int) -> None:
        for item in self.items:
            item.stop_step = stop_step(item.config, steps_per_epoch)

    def set_step(self, step: int) -> bool:
        """Freeze what has passed its pivot (its gradient stays None, so the optimizer skips it:
        no momentum, no weight decay). True while anything here still trains."""
        training = False
        for item in self.items:
            active = item.trains_at(step)
            for v in item.vectors:
                v.requires_grad_(active)
            training |= active
        return training

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """preserve_norm: every vector back to the median norm of its encoder's vocabulary."""
        for item in self.items:
            if item.config.preserve_norm and item.trains_at(step):
                for e, v in enumerate(item.vectors):
                    v.mul_(self._targets[e] / v.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def state(self) -> list[list[torch.Tensor]]:
        return [[v.detach().cpu().clone() for v in item.vectors] for item in self.items]

    @torch.no_grad()
    def load_state(self, state: list[list[torch.Tensor]]) -> None:
        for item, saved in zip(self.items, state):
            for v, s in zip(item.vectors, saved):
                v.copy_(s)

    def vectors(self, item: Embedding) -> list[torch.Tensor]:
        return [v.detach().float().cpu().contiguous() for v in item.vectors]
