"""`train plan --captions N`: the exact text the trainer encodes for the first N optimizer steps
of epoch 1, with each text's CLIP token count. The batches come from train/data.epoch_batches,
the step's generator from seeds.rng(seed, "caption", step, micro) and the text from
subset_options.prompt_text, as in train/loop.batch_loss: the preview is what the run reads,
line choice, wildcards, shuffle, dropout, recipe, template and embeddings included."""

from __future__ import annotations

import copy

from lorakit.errors import UserError
from lorakit.report import Section
from lorakit.train import seeds
from lorakit.train.clip_tokens import count, model_tokenizer
from lorakit.train.config import Config, EmbeddingConfig
from lorakit.train.data import Item, epoch_batches
from lorakit.train.subset_options import prompt_text
from lorakit.train.templates import load_template


def preview(config: Config, items: list[Item], steps: int) -> tuple[Section, list[dict], list[str]]:
    """(the table, its rows as dicts for --json, a warning per text cut off past
    data.max_token_length). One process, as plan counts steps (its share of a step is the whole)."""
    seed, limit = config.training.seed, config.data.max_token_length
    templates = load_template(config.data.template) if config.data.template else None
    placeholder = config.embeddings[0].placeholder if config.embeddings else ""
    substitute, tokenizer = _embeddings(config.embeddings, model_tokenizer(config.model.base))
    per_step = config.training.gradient_accumulation_steps
    batches = epoch_batches(items, seed, 0)
    groups = [batches[k:k + per_step] for k in range(0, len(batches), per_step)]
    rows, found, warnings = [], [], []
    for step, group in enumerate(groups[:steps]):
        for micro, batch in enumerate(group):
            rng = seeds.rng(seed, "caption", step, micro)  # train/loop.batch_loss's generator
            for i in batch:
                item = items[i]
                text = prompt_text(item, seed, rng, 0, templates, placeholder, substitute)
                tokens = count(tokenizer, text)
                name = f"{item.image.parent.name}/{item.image.name}"
                rows.append([step + 1, name, text, tokens])
                found.append({"step": step + 1, "image": name, "text": text, "tokens": tokens})
                if tokens > limit:
                    warnings.append(f"step {step + 1}, {name}: {tokens} tokens, past data.max_token_length = {limit}: "
                                    f"the text is cut off there")
    return Section(f"captions of the first {min(steps, len(groups))} steps of epoch 1",
                   ["step", "image", "text", "tokens"], rows, whole=True), found, warnings


def _embeddings(configs: list[EmbeddingConfig], tokenizer):
    """The embeddings' placeholder substitution, and a tokenizer that counts each of their
    vectors as one token, as the run's tokenizer does once train/embeddings.py adds them. The
    Embeddings class itself substitutes; only its vectors, which need the text encoders, are
    left out."""
    if not configs:
        return None, tokenizer
    from lorakit.train.embeddings import Embedding, Embeddings, placeholder_pattern, safe_name

    items = []
    for index, cfg in enumerate(configs):
        if not cfg.placeholder.strip():
            raise UserError(f"embeddings[{index}]: placeholder is empty; set it to the trigger word of the captions")
        # the names Embeddings.build gives its tokens
        tokens = [f"<lkemb{index}_{k}>" for k in range(_vector_count(cfg))]
        items.append(Embedding(cfg, safe_name(cfg.name or cfg.placeholder), tokens, [],
                               placeholder_pattern(cfg.placeholder)))
    counting = copy.deepcopy(tokenizer)  # the shared, cached tokenizer stays as it is
    counting.add_tokens([t for item in items for t in item.tokens])
    return Embeddings(items, [counting], []).substitute, counting


def _vector_count(cfg: EmbeddingConfig) -> int:
    if cfg.token_count:
        return cfg.token_count
    if cfg.base_embedding:
        from lorakit.train.embedding_files import read_embedding

        try:
            found = read_embedding(cfg.base_embedding)
        except UserError:  # the run says what is wrong with the file
            return 1
        return int(next(iter(found[0].vectors.values())).shape[0]) if found else 1
    return 1
