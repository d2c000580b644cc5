"""`train`: the Typer layer of the training stage: init, plan, glossary, run, resume, export,
inspect, resize, merge and embedding inspect."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from lorakit import quiet

quiet.install()  # before any library loads: their notices and bars stay out of our output

from lorakit.errors import UserError
from lorakit.options import DryRun, Json, emit, user_errors

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Train LoRA / LyCORIS networks and embeddings for SD1.x, SD2.x and SDXL from a TOML config.")


@app.command()
def init(
    preset: Annotated[str, typer.Option(help="sd15, sd15-prodigy, sd2, sdxl, sdxl-prodigy, style or ti.")] = "sd15",
    image_root: Annotated[str, typer.Option(help="Folder holding the N_name folders.")] = "dataset",
    base: Annotated[str, typer.Option(help="Base model: diffusers folder, repo id or .safetensors.")] = "",
    trigger: Annotated[Optional[str], typer.Option(
        help="The embedding's placeholder (default: the name of the first N_name folder).")] = None,
) -> None:
    """Print a complete, commented config with the training guide's values: train init > lora.toml"""
    from lorakit.captions import parse_repeats_folder
    from lorakit.train.presets import PRESETS, render

    if preset not in PRESETS:
        raise typer.BadParameter(f"use one of {', '.join(PRESETS)}", param_hint="--preset")
    if trigger is None:
        root = Path(image_root)
        names = [parse_repeats_folder(p.name) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []
        trigger = next((n[1] for n in names if n and n[1]), "trigger")
    typer.echo(render(preset, image_root, base, trigger))


@app.command()
def plan(
    config: Annotated[Path, typer.Argument(help="The training config (TOML).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: training.max_steps=500")] = None,
    captions: Annotated[int, typer.Option(
        "--captions", min=0, help="Also show the exact text trained at each of the first N steps of epoch 1, with its "
                                  "CLIP token count.")] = 0,
    json: Json = False,
) -> None:
    """Check the config and the dataset without loading a model: images, repeats, buckets,
    steps, saves, and warnings."""
    from lorakit.train.config_toml import load
    from lorakit.train.plan import plan as make_plan

    with user_errors():
        report = make_plan(load(config, set_ or []), captions)
    emit(report, json)


@app.command()
def glossary(json: Json = False) -> None:
    """The LoRA parameter glossary's terms and the config key each maps to (or why none)."""
    from lorakit.report import Report, Section
    from lorakit.train.glossary import GLOSSARY

    report = Report("glossary", "the LoRA parameter glossary", about_files=False)
    report.sections.append(Section("terms", ["term", "lorakit config"],
                                   [[t, v.lstrip("- ")] for t, v in GLOSSARY.items()], whole=True))
    emit(report, json)


def _train(config, out_dir: Path, stop_at: int | None, json: bool, state: dict | None) -> None:
    """Run (or resume, from `state`) with the run log: log.jsonl, the display (rich on a terminal,
    JSON lines on stderr elsewhere) and TensorBoard; under `accelerate launch` only the first
    process shows, writes and reports. Stopped by a signal, it exits 128 + the signal (130, 143)."""
    from lorakit.options import err_console, out_console
    from lorakit.report import print_report
    from lorakit.train.distributed import is_main_process
    from lorakit.train.loop import run as train_run
    from lorakit.train.progress import RunLog

    main = is_main_process()
    run_log = RunLog(out_dir, Path(config.output.log_dir or out_dir) / "tensorboard", config.output.tensorboard) \
        if main else None
    try:
        result = train_run(config, out_dir, stop_at, run_log or (lambda line: None), state=state,
                           progress=run_log.step if run_log else None)
    except KeyboardInterrupt:  # Ctrl-C while the models load: no step yet, so nothing to save
        err_console.print("interrupted before the first step: nothing was saved", highlight=False)
        raise typer.Exit(130) from None
    finally:
        if run_log:
            run_log.close()
    signum = result["interrupted"]
    if main and signum:
        print_report(_report(result, out_dir), json, out_console, err_console)
        saved = ", ".join(Path(p).name for p in result["saved"][-1:]) or "nothing new"
        err_console.print(f"interrupted at step {result['step']} of {result['total']}: saved {saved} and the "
                          f"state; `train resume {out_dir}` continues", highlight=False, soft_wrap=True)
    if signum:
        raise typer.Exit(128 + signum)
    if main:
        emit(_report(result, out_dir), json)


def _report(result: dict, out_dir: Path):
    from lorakit.report import WRITTEN, Outcome, Report

    report = Report("train", str(out_dir))
    report.data.update(result)
    report.outcomes = [Outcome(Path(p).name, WRITTEN) for p in result["saved"]]
    report.about_files = bool(report.outcomes)  # a stop between saves wrote no file: no empty file table
    done = result["step"] >= result["total"]
    report.notes.append(f"step {result['step']} of {result['total']}: " +
                        ("finished" + ("" if report.outcomes else "; nothing left to do") if done
                         else f"stopped; `train resume {out_dir}` continues"))
    return report


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="The training config (TOML).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: training.max_steps=500")] = None,
    stop_at: Annotated[Optional[int], typer.Option(help="Stop after this step, keeping the state to resume.")] = None,
    json: Json = False,
) -> None:
    """Train a LoRA / LoCon, additional embeddings, or textual inversion alone (network.module = "none")."""
    from lorakit.train.config_toml import load
    from lorakit.train.distributed import is_main_process
    from lorakit.train.outputs import claimed

    with user_errors():
        cfg = load(config, set_ or [])
        with claimed(Path(cfg.output.dir), "train run", is_main_process()):
            _train(cfg, Path(cfg.output.dir), stop_at, json, state=None)


@app.command()
def resume(
    output_dir: Annotated[Path, typer.Argument(help="The output folder of a run that kept its state.")],
    stop_at: Annotated[Optional[int], typer.Option(help="Stop after this step, keeping the state.")] = None,
    json: Json = False,
) -> None:
    """Continue a run from its saved state, exactly where it stopped."""
    from lorakit.train.distributed import is_main_process
    from lorakit.train.outputs import claimed, read_state, saved_config

    with user_errors(), claimed(output_dir, "train resume", is_main_process(), create=False):
        config = saved_config(output_dir)  # both read and checked before anything is written
        _train(config, output_dir, stop_at, json, read_state(output_dir))


@app.command()
def export(
    lora: Annotated[Path, typer.Argument(help="A LoRA .safetensors written by train run.")],
    for_: Annotated[str, typer.Option("--for", help="a1111, diffusers or comfyui.")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: export-TARGET beside the LoRA).")] = None,
    json: Json = False,
) -> None:
    """Write the files a UI needs from a LoRA with embeddings: bundled for A1111; a clean LoRA
    plus standalone embeddings for diffusers and ComfyUI (they reject or ignore bundled ones)."""
    from lorakit.train.export import export as do_export

    with user_errors():
        report = do_export(lora, for_, out)
    emit(report, json)


@app.command("inspect")
def inspect_lora(
    lora: Annotated[Path, typer.Argument(help="A LoRA .safetensors (ours, kohya's, or any UI's).")],
    json: Json = False,
) -> None:
    """The file's model card (title, author, license, trigger words, …), how it was trained, and
    what it holds: modules, ranks, bundled embeddings, the most frequent tags."""
    from lorakit.train.lora_files import inspect_lora as do_inspect

    with user_errors():
        report = do_inspect(lora)
    emit(report, json)


@app.command()
def resize(
    lora: Annotated[Path, typer.Argument(help="A LoRA / LoCon .safetensors.")],
    dim: Annotated[int, typer.Option(help="The new rank (modules of a lower rank keep theirs).")],
    out: Annotated[Optional[Path], typer.Option(help="Output file (default: NAME-dimN.safetensors beside it).")] = None,
    dynamic: Annotated[Optional[Literal["sv_ratio", "sv_fro", "sv_cumulative"]], typer.Option(
        help="sv_ratio, sv_fro or sv_cumulative: a rank per module, at most --dim (kohya's resize_lora).")] = None,
    dynamic_param: Annotated[Optional[float], typer.Option(help="sv_ratio: >= 1; sv_fro, sv_cumulative: 0..1.")] = None,
    precision: Annotated[Optional[Literal["fp16", "bf16", "fp32"]], typer.Option(
        help="default: the file's.")] = None,
    dry_run: DryRun = False,
    json: Json = False,
) -> None:
    """A smaller LoRA by SVD, keeping each module's alpha/rank (kohya's resize_lora), with the
    share of the Frobenius norm each module keeps."""
    from lorakit.options import err_console
    from lorakit.train.resize import resize as do_resize

    with user_errors():
        report = do_resize(lora, dim, out or lora.with_name(f"{lora.stem}-dim{dim}.safetensors"), dynamic,
                           dynamic_param, precision, dry_run, show_progress=err_console.is_terminal and not json)
    emit(report, json)


@app.command()
def merge(
    loras: Annotated[list[Path], typer.Argument(help="LoRA / LoCon .safetensors files.")],
    out: Annotated[Path, typer.Option(help="The file to write.")],
    ratios: Annotated[Optional[str], typer.Option(help="One weight per file, e.g. 1,0.5 (default: 1 each).")] = None,
    mode: Annotated[Literal["concat", "svd"], typer.Option(help="concat: exact, ranks add up; svd: at --dim.")
                    ] = "concat",
    dim: Annotated[Optional[int], typer.Option(help="The merged rank, with --mode svd.")] = None,
    into: Annotated[Optional[Path], typer.Option(
        help="A base model's single-file .safetensors: merge the LoRAs into its weights instead.")] = None,
    precision: Annotated[Literal["fp16", "bf16", "fp32"], typer.Option(help="LoRA outputs' dtype.")] = "fp16",
    config: Annotated[Optional[Path], typer.Option(
        help="With --into: the base's diffusers-layout config folder, for another architecture (as model.config).")
                      ] = None,
    json: Json = False,
) -> None:
    """LoRAs into one LoRA (concatenated, or SVD at a rank), or into a base checkpoint."""
    from lorakit.train.merge import merge_into, merge_loras

    try:
        weights = [float(r) for r in ratios.split(",")] if ratios else None
    except ValueError:
        raise typer.BadParameter(f"{ratios!r}: numbers separated by commas", param_hint="--ratios") from None
    with user_errors():
        if into is not None:
            if mode != "concat" or dim is not None or precision != "fp16":  # accepted and ignored is worse
                raise UserError("--into writes the base's own layout and dtypes: --mode, --dim and --precision "
                                "are for LoRA outputs")
            report = merge_into(into, loras, out, weights, config)
        elif config is not None:
            raise UserError("--config describes the --into checkpoint; without --into there is none")
        else:
            report = merge_loras(loras, out, weights, mode, dim, precision)
    emit(report, json)


import_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Configs from other trainers.")
app.add_typer(import_app, name="import")


@import_app.command("kohya")
def import_kohya(
    config: Annotated[Path, typer.Argument(help="kohya's training config: its --config_file TOML, or kohya_ss's JSON.")],
    out: Annotated[Path, typer.Option(help="The lorakit config to write.")],
    dataset: Annotated[Optional[Path], typer.Option(
        help="kohya's dataset config (default: the config's dataset_config).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
    json: Json = False,
) -> None:
    """A kohya sd-scripts / kohya_ss training config as a lorakit config, with every key reported:
    where it went, or why it went nowhere."""
    from lorakit.train.kohya_import import import_kohya as do_import

    with user_errors():
        report = do_import(config, out, dataset, force)
    emit(report, json)


embedding_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Embedding files.")
app.add_typer(embedding_app, name="embedding")


@embedding_app.command("inspect")
def embedding_inspect(
    file: Annotated[Path, typer.Argument(help=".safetensors, A1111 .pt, diffusers .bin, a PNG with an "
                                              "embedding, or a LoRA with bundled embeddings.")],
    json: Json = False,
) -> None:
    """Vectors, dimension, norms, the model family it fits, and the base model it was trained on."""
    from lorakit.train.export import inspect

    with user_errors():
        report = inspect(file)
    emit(report, json)
