"""`curate`: the Typer layer. Each command parses options, calls its stage, prints the report.
Modules that import torch are imported inside the commands that need them, so `--help` is fast."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit import quiet

quiet.install()  # before any library loads: their notices and bars stay out of our output

from lorakit.curate.colors import DEFAULT_CYCLE, parse_color
from lorakit.curate.defaults import DEDUPE_DISTANCE, SCAN_THRESHOLD
from lorakit.engine import run_stage
from lorakit.errors import UserError
from lorakit.options import (
    DEFAULT_JOBS,
    DEFAULT_PIXELS,
    DryRun,
    Force,
    Jobs,
    Json,
    MaxPixels,
    emit,
    run_options,
    user_errors,
)

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Prepare raw images for training: every command reads SRC and, where it "
                       "writes images, writes them to a new folder DST mirroring SRC's tree.")

Src = Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")]
Dst = Annotated[Path, typer.Argument(help="Output folder (created; must not overlap SRC).")]


@app.command()
def convert(
    src: Src, dst: Dst,
    format: Annotated[str, typer.Option("--format", "-f", help="png, jpg or webp.")] = "png",
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG/WebP quality.")] = 95,
    background: Annotated[Optional[str], typer.Option(
        help="Colour to put behind transparency when the format cannot hold it (jpg).")] = None,
    jobs: Jobs = DEFAULT_JOBS, force: Force = False, dry_run: DryRun = False,
    max_pixels: MaxPixels = DEFAULT_PIXELS, json: Json = False,
) -> None:
    """Convert any image format (webp, avif, gif, bmp, tiff, heic...) to png, jpg or webp:
    EXIF rotation applied, 16-bit scaled, CMYK colour-managed, first frame of animations."""
    from lorakit.curate.convert import ConvertStage
    from lorakit.images import OUTPUT_FORMATS

    with user_errors():
        if format not in OUTPUT_FORMATS:
            raise typer.BadParameter(f"use one of {', '.join(OUTPUT_FORMATS)}", param_hint="--format")
        stage = ConvertStage(format=format, quality=quality,
                             background=parse_color(background) if background else None)
        report = run_stage(stage, src, dst, run_options(jobs, force, dry_run, max_pixels, json))
    emit(report, json)


@app.command()
def flatten(
    src: Src, dst: Dst,
    background: Annotated[str, typer.Option(
        help="white, black, any name, #rrggbb, or 'cycle' to rotate through --colors.")] = "white",
    colors: Annotated[str, typer.Option(help="Comma-separated colours for --background cycle.")]
        = ",".join(DEFAULT_CYCLE),
    tag_background: Annotated[bool, typer.Option(
        "--tag-background", help="Append the matching tag ('white background') to the caption.")] = False,
    jobs: Jobs = DEFAULT_JOBS, force: Force = False, dry_run: DryRun = False,
    max_pixels: MaxPixels = DEFAULT_PIXELS, json: Json = False,
) -> None:
    """Composite transparent images onto solid backgrounds; opaque images pass through."""
    from lorakit.curate.flatten import FlattenStage

    with user_errors():
        names = colors.split(",") if background == "cycle" else [background]
        stage = FlattenStage(colors=[parse_color(n) for n in names if n.strip()],
                             tag_background=tag_background)
        report = run_stage(stage, src, dst, run_options(jobs, force, dry_run, max_pixels, json))
    emit(report, json)


@app.command()
def resize(
    src: Src, dst: Dst,
    max_side: Annotated[int, typer.Option(min=16, help="Downscale images whose long side exceeds this.")] = 3000,
    min_side: Annotated[Optional[int], typer.Option(
        min=1, help="List images whose short side is below this as upscale candidates.")] = None,
    jobs: Jobs = DEFAULT_JOBS, force: Force = False, dry_run: DryRun = False,
    max_pixels: MaxPixels = DEFAULT_PIXELS, json: Json = False,
) -> None:
    """Downscale (never enlarge) with a high-quality filter, keeping the aspect ratio."""
    from lorakit.curate.resize import ResizeStage

    with user_errors():
        report = run_stage(ResizeStage(max_side=max_side, min_side=min_side), src, dst,
                           run_options(jobs, force, dry_run, max_pixels, json))
    emit(report, json)


@app.command()
def flip(
    src: Src, dst: Dst,
    only: Annotated[Optional[list[str]], typer.Option(
        help="Images to mirror: a path under SRC, a file name or a stem; wildcards allowed; repeatable.")] = None,
    only_from: Annotated[Optional[Path], typer.Option(help="A file listing them, one per line.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Mirror every image.")] = False,
    swap_sides: Annotated[bool, typer.Option(
        "--swap-sides", help="In the mirrored images' captions, swap left and right.")] = False,
    jobs: Jobs = DEFAULT_JOBS, force: Force = False, dry_run: DryRun = False,
    max_pixels: MaxPixels = DEFAULT_PIXELS, json: Json = False,
) -> None:
    """Mirror the chosen images (an asymmetric subject drawn facing the wrong way); the others
    are copied, so DST is the whole folder."""
    from lorakit.curate.geometry import FlipStage, read_names

    with user_errors():
        names = list(only or []) + (read_names(only_from) if only_from is not None else [])
        if not names and not all_:
            raise UserError("name the images to mirror with --only / --only-from, or pass --all")
        if names and all_:
            raise UserError("--all mirrors every image: drop --only / --only-from, or --all")
        report = run_stage(FlipStage(only=tuple(names), swap_sides=swap_sides), src, dst,
                           run_options(jobs, force, dry_run, max_pixels, json))
    emit(report, json)


@app.command()
def crop(
    src: Src, dst: Dst,
    boxes: Annotated[Path, typer.Option(
        help="CSV (image,left,top,right,bottom; a row per box) or JSON ({image: [l,t,r,b] or a list of them}).")],
    jobs: Jobs = DEFAULT_JOBS, force: Force = False, dry_run: DryRun = False,
    max_pixels: MaxPixels = DEFAULT_PIXELS, json: Json = False,
) -> None:
    """Cut the listed boxes out of their images (several boxes: NAME, NAME-2, …, each with the
    captions); images without a box are copied."""
    from lorakit.curate.geometry import CropStage, read_boxes

    with user_errors():
        report = run_stage(CropStage(boxes=read_boxes(boxes)), src, dst,
                           run_options(jobs, force, dry_run, max_pixels, json))
    emit(report, json)


@app.command()
def split(
    src: Src, dst: Dst,
    tiles: Annotated[Optional[str], typer.Option(help="COLUMNSxROWS: every image into this grid (2x1, 1x3…).")] = None,
    auto: Annotated[Optional[float], typer.Option(
        help="Split only images whose long side is over this many times the short one, into near-squares.")] = None,
    jobs: Jobs = DEFAULT_JOBS, force: Force = False, dry_run: DryRun = False,
    max_pixels: MaxPixels = DEFAULT_PIXELS, json: Json = False,
) -> None:
    """Cut reference sheets and very wide scans into pieces (NAME, NAME-2, …), captions copied
    to each; images left whole are copied."""
    from lorakit.curate.geometry import SplitStage, auto_ratio, parse_tiles

    with user_errors():
        if (tiles is None) == (auto is None):
            raise UserError("give --tiles COLUMNSxROWS or --auto RATIO (one of them)")
        stage = SplitStage(*parse_tiles(tiles)) if tiles else SplitStage(auto=auto_ratio(auto))
        report = run_stage(stage, src, dst, run_options(jobs, force, dry_run, max_pixels, json))
    emit(report, json)


# --- upscaling and cleaning (torch) ----------------------------------------------------------

Model = Annotated[str, typer.Option(
    "--model", "-m", help="A known name (RealESRGAN_x4plus, RealESRGAN_x4plus_anime_6B, "
    "RealESRGAN_x2plus, realesr-animevideov3, realesr-general-x4v3), a file in the cache, or a "
    ".pth/.safetensors path (4x-UltraSharp, 4x_foolhardy_Remacri...).")]
Tile = Annotated[int, typer.Option(min=0, help="Tile size in px (0: whole image at once).")]
TilePad = Annotated[int, typer.Option(min=0, help="Context around each tile, in px.")]
PrePad = Annotated[int, typer.Option(min=0, help="Reflect-pad the image by this before upscaling.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1...")]
Precision = Annotated[str, typer.Option(help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16.")]


def _settings(model: str, device: str, precision: str, tile: int, tile_pad: int, pre_pad: int):
    from lorakit.curate.upscale.inference import PRECISIONS
    from lorakit.curate.upscale.stage import UpscaleSettings

    if precision != "auto" and precision not in PRECISIONS:
        raise typer.BadParameter(f"use auto or one of {', '.join(PRECISIONS)}", param_hint="--precision")
    return UpscaleSettings(model, device, precision, tile, tile_pad, pre_pad)


@app.command()
def upscale(
    src: Src, dst: Dst, model: Model,
    scale: Annotated[Optional[float], typer.Option(
        min=0.1, help="Final scale (default: the model's); other scales end with a Lanczos resize.")] = None,
    only_below: Annotated[Optional[int], typer.Option(
        min=1, help="Upscale only images whose short side is below this; copy the rest.")] = None,
    tile: Tile = 512, tile_pad: TilePad = 10, pre_pad: PrePad = 0,
    downscale_first: Annotated[float, typer.Option(
        min=0.05, max=1.0, help="Shrink by this factor before upscaling (cleans noise).")] = 1.0,
    device: Device = "auto", precision: Precision = "auto",
    force: Force = False, dry_run: DryRun = False, max_pixels: MaxPixels = DEFAULT_PIXELS,
    json: Json = False,
) -> None:
    """Upscale with Real-ESRGAN-family networks (RRDBNet, SRVGGNetCompact), tiled."""
    from lorakit.curate.upscale.stage import UpscaleStage

    with user_errors():
        stage = UpscaleStage(settings=_settings(model, device, precision, tile, tile_pad, pre_pad),
                             scale=scale, only_below=only_below, downscale_first=downscale_first)
        report = run_stage(stage, src, dst, run_options(1, force, dry_run, max_pixels, json))
    emit(report, json)


@app.command()
def clean(
    src: Src, dst: Dst,
    method: Annotated[str, typer.Option(
        help="filter (AdverseCleaner), upscale (shrink then AI-upscale), or both.")] = "filter",
    strength: Annotated[float, typer.Option(
        min=0.05, help="Scales the number of filter passes (1 = AdverseCleaner's 64 + 4).")] = 1.0,
    bilateral_passes: Annotated[Optional[int], typer.Option(min=0)] = None,
    diameter: Annotated[int, typer.Option(min=1, help="Bilateral filter diameter.")] = 5,
    sigma_color: Annotated[float, typer.Option(help="Bilateral sigma in colour.")] = 8.0,
    sigma_space: Annotated[float, typer.Option(help="Bilateral sigma in space.")] = 8.0,
    guided_passes: Annotated[Optional[int], typer.Option(min=0)] = None,
    radius: Annotated[int, typer.Option(min=1, help="Guided filter radius.")] = 4,
    eps: Annotated[float, typer.Option(help="Guided filter regularisation (0..255² units).")] = 16.0,
    model: Annotated[str, typer.Option("--model", "-m", help="Upscaler for --method upscale/both.")]
        = "RealESRGAN_x4plus_anime_6B",
    downscale: Annotated[float, typer.Option(
        min=0.1, max=1.0, help="Shrink factor before upscaling (the guide: 0.5-0.75).")] = 0.5,
    only_flagged: Annotated[bool, typer.Option(
        "--only-flagged", help="Clean only images that curate scan flags; copy the rest.")] = False,
    threshold: Annotated[float, typer.Option(help="Scan score that flags an image.")] = SCAN_THRESHOLD,
    tile: Tile = 512, device: Device = "auto", precision: Precision = "auto",
    jobs: Jobs = DEFAULT_JOBS, force: Force = False, dry_run: DryRun = False,
    max_pixels: MaxPixels = DEFAULT_PIXELS, json: Json = False,
) -> None:
    """Remove Glaze/Nightshade-style adversarial noise (all images, or --only-flagged ones)."""
    from lorakit.curate.clean import METHODS, CleanStage, FilterParams

    with user_errors():
        if method not in METHODS:
            raise typer.BadParameter(f"use one of {', '.join(METHODS)}", param_hint="--method")
        params = FilterParams(diameter=diameter, sigma_color=sigma_color, sigma_space=sigma_space,
                              radius=radius, eps=eps).with_strength(strength)
        if bilateral_passes is not None:
            params = replace(params, bilateral_passes=bilateral_passes)
        if guided_passes is not None:
            params = replace(params, guided_passes=guided_passes)
        stage = CleanStage(method=method, params=params, downscale=downscale,
                           upscale=_settings(model, device, precision, tile, 10, 0),
                           only_flagged=threshold if only_flagged else None)
        report = run_stage(stage, src, dst, run_options(jobs, force, dry_run, max_pixels, json))
    emit(report, json)


# --- read-only commands ----------------------------------------------------------------------


@app.command()
def scan(
    src: Src,
    threshold: Annotated[float, typer.Option(help="Noise score (grey levels) that flags an image.")] = SCAN_THRESHOLD,
    jobs: Jobs = DEFAULT_JOBS, max_pixels: MaxPixels = DEFAULT_PIXELS, json: Json = False,
) -> None:
    """Score every image for adversarial noise and list the suspicious ones."""
    from lorakit.curate.scan import scan_folder

    with user_errors():
        report = scan_folder(src, run_options(jobs, max_pixels=max_pixels, as_json=json), threshold)
    emit(report, json)


@app.command()
def dedupe(
    src: Src,
    threshold: Annotated[int, typer.Option(min=0, max=64, help="Max hash distance (of 64 bits).")] = DEDUPE_DISTANCE,
    move_to: Annotated[Optional[Path], typer.Option(
        help="Move the duplicates (and their captions) here, mirroring the tree.")] = None,
    jobs: Jobs = DEFAULT_JOBS, dry_run: DryRun = False, max_pixels: MaxPixels = DEFAULT_PIXELS,
    json: Json = False,
) -> None:
    """Find near-duplicate images (mirror images too); keep the largest of each group."""
    from lorakit.curate.dedupe import dedupe_folder

    with user_errors():
        report = dedupe_folder(src, run_options(jobs, dry_run=dry_run, max_pixels=max_pixels,
                                                as_json=json), threshold, move_to)
    emit(report, json)


@app.command()
def inspect(
    src: Src,
    min_side: Annotated[int, typer.Option(min=1, help="Short side below this is 'too small'.")] = 512,
    max_side: Annotated[int, typer.Option(min=1, help="Long side above this is 'too large'.")] = 3000,
    jobs: Jobs = DEFAULT_JOBS, max_pixels: MaxPixels = DEFAULT_PIXELS, json: Json = False,
) -> None:
    """One table for a whole folder: formats, transparency, sizes, corrupt files, missing
    captions, duplicates. Run it first on a raw folder."""
    from lorakit.curate.inspect import inspect_folder

    with user_errors():
        report = inspect_folder(src, run_options(jobs, max_pixels=max_pixels, as_json=json),
                                min_side, max_side)
    emit(report, json)
