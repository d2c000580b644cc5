"""The training guide's values that mean something else in kohya's scripts, and so here: `train
plan` says so where a config uses them, once each, in the guide's words (its users copy its
numbers into kohya_ss's fields; the fields count differently than the guide's sentences say)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lorakit.train.config import Config


@dataclass(frozen=True)
class GuideNote:
    applies: Callable[[Config, bool], bool]  # (config, whether it has regularisation images)
    text: Callable[[Config], str]


NOTES = (
    GuideNote(
        lambda c, reg: c.data.shuffle_caption and c.data.keep_tokens >= 4 and c.data.keep_tokens % 2 == 0,
        lambda c: f"data.keep_tokens = {c.data.keep_tokens}: the guide keeps \"4 or 6, to keep the first 2-3 tokens "
                  "from being shuffled, including the commas\"; kohya (and lorakit) count tags between commas, not "
                  f"the commas: {c.data.keep_tokens} keeps the first {c.data.keep_tokens} tags (set "
                  f"{c.data.keep_tokens // 2} for the guide's {c.data.keep_tokens // 2})"),
    GuideNote(
        lambda c, reg: c.data.prior_loss_weight != 1 and not reg,
        lambda c: f"data.prior_loss_weight = {c.data.prior_loss_weight} weighs the loss of regularisation images, and "
                  "this config has none (data.reg_root, or a subset with is_reg = true): it does nothing"),
    GuideNote(
        lambda c, reg: c.data.prior_loss_weight != 1 and reg,
        lambda c: f"data.prior_loss_weight = {c.data.prior_loss_weight}: the guide says \"specifically for "
                  "regularisation datasets, 1 is a good value\"; kohya multiplies the regularisation images' loss by "
                  "it, so under 1 they hold the model back less, over 1 more"),
)


def guide_notes(config: Config, has_reg: bool) -> list[str]:
    return [note.text(config) for note in NOTES if note.applies(config, has_reg)]
