"""`train`: the Typer layer of the training stage. `init` and `plan` are here; `run` and
`resume` arrive with the trainer itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit.options import Json, emit, user_errors

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Train LoRA / LyCORIS networks and embeddings for SD1.x, SD2.x and SDXL from a TOML config.")


@app.command()
def init(
    preset: Annotated[str, typer.Option(help="sd15, sd15-prodigy, sdxl, sdxl-prodigy or style.")] = "sd15",
    image_root: Annotated[str, typer.Option(help="Folder holding the N_name folders.")] = "dataset",
    base: Annotated[str, typer.Option(help="Base model: diffusers folder, repo id or .safetensors.")] = "",
) -> None:
    """Print a complete, commented config with the training guide's values: train init > lora.toml"""
    from train.presets import PRESETS, render

    if preset not in PRESETS:
        raise typer.BadParameter(f"use one of {', '.join(PRESETS)}", param_hint="--preset")
    typer.echo(render(preset, image_root, base))


@app.command()
def plan(
    config: Annotated[Path, typer.Argument(help="The training config (TOML).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: training.max_steps=500")] = None,
    json: Json = False,
) -> None:
    """Check the config and the dataset without loading a model: images, repeats, buckets,
    steps, saves, and warnings."""
    from train.config import load
    from train.plan import plan as make_plan

    with user_errors():
        report = make_plan(load(config, set_ or []))
    emit(report, json)


@app.command()
def glossary(json: Json = False) -> None:
    """The LoRA parameter glossary's terms and the config key each maps to (or why none)."""
    from lorakit.report import Report, Section
    from train.glossary import GLOSSARY

    report = Report("glossary", "the LoRA parameter glossary")
    report.sections.append(Section("terms", ["term", "lorakit config"],
                                   [[t, v.lstrip("- ")] for t, v in GLOSSARY.items()]))
    emit(report, json)
