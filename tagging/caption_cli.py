"""`tag caption`'s Typer command (tagging/cli.py holds the other tag commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit.options import DryRun, Json, emit, user_errors
from lorakit.tagging.captioners import CAPTIONERS, DEFAULT_CAPTIONER
from lorakit.tagging.cli import Dir, ShardOption, app


@app.command("caption")
def caption_command(
    dir: Dir,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help=f"Captioner: {', '.join(CAPTIONERS)} (default {DEFAULT_CAPTIONER}). With "
        "--model-dir: the captioner whose files the folder holds (its prompt and settings).")] = None,
    model_dir: Annotated[Optional[Path], typer.Option(
        help="A local folder saved by transformers (config.json, weights, processor files).")] = None,
    prompt: Annotated[Optional[Path], typer.Option(
        "--prompt", help="A text file holding the prompt, with {tags}, {trigger} and {folder}; a line whose "
        "placeholder is empty for an image is left out.")] = None,
    with_tags: Annotated[Optional[bool], typer.Option(
        "--with-tags/--no-with-tags", help="Put each image's tags (line 1) into its prompt (default: on for "
        "captioners that take instructions).")] = None,
    trigger: Annotated[Optional[str], typer.Option(
        help="The name the sentence gives the subject (default: the N_name folder's).")] = None,
    to_extension: Annotated[Optional[str], typer.Option(
        help="Write the sentence to a file of its own with this suffix (.caption or .txt) instead of line 2.")] = None,
    mode: Annotated[str, typer.Option(
        help="skip (captions with a sentence), overwrite (line 2) or merge (a further line).")] = "skip",
    batch_size: Annotated[Optional[int], typer.Option(
        min=1, help="Images per generate call (default: 1 on the CPU, 8 on a GPU).")] = None,
    precision: Annotated[Optional[str], typer.Option(
        help="bf16, fp16, fp32 or int8 (default: bf16 or fp16 on a GPU, fp32 on the CPU).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(
        min=1, max=4096, help="The longest sentence, in tokens (default: the captioner's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the captioners that sample (JoyCaption).")] = 0,
    shard: ShardOption = None,
    dry_run: DryRun = False, json: Json = False,
) -> None:
    """Write a sentence per image with a vision-language model (JoyCaption, Qwen2.5-VL,
    Florence-2, BLIP), given the image's tags, to line 2 of its caption."""
    from lorakit.errors import UserError
    from lorakit.options import err_console
    from lorakit.shards import shard as parse_shard
    from lorakit.tagging.caption import SentenceOptions, caption

    with user_errors():
        template = None
        if prompt is not None:
            try:
                template = prompt.read_text(encoding="utf-8-sig").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"--prompt {prompt}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
            if len(template) > 20_000:
                raise UserError(f"--prompt {prompt}: {len(template)} characters; a prompt is a few lines")
        opts = SentenceOptions(model, model_dir, template, with_tags, trigger, to_extension, mode, batch_size,
                               precision, max_new_tokens, seed, parse_shard(shard), dry_run,
                               progress=err_console.is_terminal and not json, console=err_console)
        report = caption(dir, opts)
    emit(report, json)
