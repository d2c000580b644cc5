"""`lorakit curate|tag|train …`: the umbrella command over the three stage programs.

The stage CLIs are found by module name, so this package imports none of them until asked.
"""

from __future__ import annotations

import importlib

import typer

from lorakit import quiet

quiet.install()  # before any library loads: their notices and bars stay out of our output

STAGE_CLIS = {
    "curate": ("lorakit.curate.cli", "Prepare raw images: convert, flatten, resize, upscale, clean, scan, dedupe, inspect."),
    "tag": ("lorakit.tagging.cli", "Autotag, prune implied tags, edit captions, balance folder repeats."),
    "train": ("lorakit.train.cli", "Train a LoRA / LyCORIS / embedding."),
}

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="lorakit: from a folder of raw images to a trained LoRA.")

for _name, (_module, _help) in STAGE_CLIS.items():
    app.add_typer(importlib.import_module(_module).app, name=_name, help=_help)

# one command, not a stage: the dataset in a browser
app.command("review")(importlib.import_module("lorakit.review.cli").review)
