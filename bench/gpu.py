"""The trainer on a CUDA GPU, in one command, with no network: random-weight SD1.5 and SDXL with
the real architectures (the configs lorakit ships for single-file checkpoints), a generated
dataset, and train run's own code (train.setup / train.loop), measured side by side in one run.

    python bench/gpu.py [--json results.json] [--steps 20] [--peak-tflops 989]
    python bench/gpu.py --tiny          # the same code on the CPU with the tests' tiny models

Runs, each 20 steps after building the models and caching the latents:
  sd15  512 px, batch 4, bf16 and fp16
  sdxl 1024 px, batch 4, bf16 and fp16; batch 1 with gradient checkpointing (bf16)
and reports per run: ms per step after 5 warm-up steps; the share of the compute floor (a LoRA
step costs about 2.15x the forward pass: SD1.5 0.803 TFLOP per 512 px image, SDXL 6.76 TFLOP per
1024 px image, divided by the GPU's dense bf16 peak); peak VRAM (torch.cuda.max_memory_allocated);
and, for each family's bf16 run, whether a run stopped at step 10 and resumed to 20 equals 20
straight (the largest difference of any LoRA weight).

Targets (issue 11): >= 40% of the floor for both families with SDPA attention; SDXL batch 1 with
gradient checkpointing <= 12 GB.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path[0] = str(Path(__file__).resolve().parents[1] / "examples")  # the generators (see curate.py)

from lorakit.train.config_toml import load  # noqa: E402
from lorakit.train.loop import train  # noqa: E402
from lorakit.train.setup import setup  # noqa: E402

# forward TFLOP per image at the family's native size, and a LoRA step's cost in forwards
# (forward + backward through activations, no weight gradients for the frozen base)
FORWARD_TFLOP = {"sd15": 0.803, "sdxl": 6.76}
STEP_FACTOR = 2.15
# dense bf16 tensor-core peaks (TFLOP/s) by the device name CUDA reports; --peak-tflops for others
PEAKS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
         "L40": 181.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.2, "RTX 3090": 71.0}
WARMUP = 5


@dataclass
class Case:
    family: str  # sd15 or sdxl
    size: int
    batch: int
    precision: str
    checkpointing: bool = False
    resume_check: bool = False

    @property
    def name(self) -> str:
        return f"{self.family} {self.size}px b{self.batch} {self.precision}" + (" ckpt" if self.checkpointing else "")


def cases(tiny: bool) -> list[Case]:
    if tiny:
        return [Case("sd15", 64, 2, "bf16", resume_check=True), Case("sd15", 64, 2, "fp16"),
                Case("sdxl", 64, 2, "bf16", resume_check=True), Case("sdxl", 64, 1, "bf16", checkpointing=True)]
    return [Case("sd15", 512, 4, "bf16", resume_check=True), Case("sd15", 512, 4, "fp16"),
            Case("sdxl", 1024, 4, "bf16", resume_check=True), Case("sdxl", 1024, 4, "fp16"),
            Case("sdxl", 1024, 1, "bf16", checkpointing=True)]


def build_models(family: str, tiny: bool, device: torch.device):
    """Random weights, built on the device (no 10 GB copy through the CPU for SDXL)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from lorakit.train.models import Models, scheduler

    if tiny:
        import make_demo_model as tiny_sd

        pipe = (tiny_sd.pipeline_xl if family == "sdxl" else tiny_sd.pipeline)(Path(tempfile.mkdtemp()) / "tok")
        encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
        tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
        return Models(tokenizers, encoders, pipe.vae, pipe.unet, scheduler(False, False),
                      "sdxl" if family == "sdxl" else "sd1")
    from lorakit.train.single_file import config_folder

    folder = config_folder("sdxl" if family == "sdxl" else "sd1")
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2")))
    tokenizers = [CLIPTokenizer.from_pretrained(folder / "tokenizer", model_max_length=77)]
    if family == "sdxl":
        tokenizers.append(CLIPTokenizer.from_pretrained(folder / "tokenizer_2", model_max_length=77))
    return Models(tokenizers, encoders, vae, unet, scheduler(False, False), "sdxl" if family == "sdxl" else "sd1")


def dataset(root: Path, size: int, images: int = 8) -> Path:
    folder = root / "10_kit"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(images):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text(f"kit, picture {k}, smile\n")
    return root


def config_file(tmp: Path, case: Case, data: Path, steps: int, out: str) -> Path:
    path = tmp / f"{out}.toml"
    path.write_text(f'''[model]
base = "random-{case.family}"
[network]
dim = 32
alpha = 32.0
[data]
image_root = "{data}"
resolution = {case.size}
min_bucket_reso = {case.size}
max_bucket_reso = {case.size}
batch_size = {case.batch}
num_workers = 0
[training]
max_steps = {steps}
mixed_precision = "{case.precision}"
gradient_checkpointing = {str(case.checkpointing).lower()}
attention = "sdpa"
log_every_n_steps = {steps}
[saving]
every_n_epochs = 0
save_state = true
precision = "fp32"
[output]
dir = "{tmp / out}"
name = "bench"
''')
    return path


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_run(config_path: Path, models, device: torch.device, stop_at: int | None = None, resume: bool = False):
    """(result, per-step times in seconds) of train run's own loop."""
    stamps = []

    def progress(step, total, epoch, images):
        synchronize(device)
        stamps.append(time.perf_counter())
    run = setup(load(config_path), resume=resume, log=lambda line: None, device=device, models=models)
    synchronize(device)
    start = time.perf_counter()
    result = train(run, stop_at, progress)
    run.network.detach()  # the same models serve the next run
    if run.config.training.gradient_checkpointing:
        run.models.unet.disable_gradient_checkpointing()
        for encoder in run.models.text_encoders:
            encoder.gradient_checkpointing_disable()
    return result, np.diff([start] + stamps)


def lora_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAKS.items() if key in name), None)


def measure(case: Case, models, device: torch.device, tmp: Path, steps: int, peak: float | None) -> dict:
    data = tmp / f"data-{case.size}"
    if not data.exists():  # one dataset per size, shared by the runs at that size
        dataset(data, case.size)
    tag = case.name.replace(" ", "-")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    row = {"run": case.name, "family": case.family, "size": case.size, "batch": case.batch,
           "precision": case.precision, "checkpointing": case.checkpointing}
    try:
        result, times = timed_run(config_file(tmp, case, data, steps, tag), models, device)
    except Exception as exc:  # a NaN loss in fp16 on random weights, out of memory...: reported, not fatal
        return {**row, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    measured = times[WARMUP:] if len(times) > WARMUP else times
    ms = float(np.mean(measured)) * 1000
    row.update(ms_per_step=round(ms, 2), loss=result["losses"][-1] if result["losses"] else None)
    if peak:
        native = 512 if case.family == "sd15" else 1024  # the size FORWARD_TFLOP is counted at
        image_tflop = STEP_FACTOR * FORWARD_TFLOP[case.family] * (case.size / native) ** 2
        floor_ms = case.batch * image_tflop / peak * 1000
        row.update(floor_ms=round(floor_ms, 2), share_of_floor=round(floor_ms / ms, 3))
    if device.type == "cuda":
        row["peak_vram_gb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    row["estimated_vram_gb"] = estimated_vram(case, models, config_file(tmp, case, data, steps, tag))
    if case.resume_check:
        half = steps // 2
        path = config_file(tmp, case, data, steps, tag + "-resumed")
        timed_run(path, models, device, stop_at=half)
        timed_run(path, models, device, resume=True)
        straight = lora_weights(tmp / tag / "bench.safetensors")
        resumed = lora_weights(tmp / (tag + "-resumed") / "bench.safetensors")
        diff = max(float((straight[k].float() - resumed[k].float()).abs().max()) for k in straight)
        row.update(resume_equal=diff == 0.0, resume_max_diff=diff)
    return row


def estimated_vram(case: Case, models, config_path: Path) -> float:
    """train plan's estimate for the same run, less its fixed CUDA-context part, which
    max_memory_allocated does not see: the two columns compare like for like."""
    from lorakit.train.config_toml import load
    from lorakit.train.memory import GIB, OVERHEAD, estimate

    configs = {"unet": dict(models.unet.config), "vae": dict(models.vae.config)}
    for name, encoder in zip(("text_encoder", "text_encoder_2"), models.text_encoders):
        configs[name] = encoder.config.to_dict()
    found = estimate(load(config_path), models.family, configs)
    return round((found["total"] - OVERHEAD) / GIB, 2)


def table(rows: list[dict], device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title=f"train run on {device}")
    for column in ("run", "ms/step", "floor ms", "share of floor", "peak VRAM GB", "estimate GB",
                   "resume after half = straight"):
        out.add_column(column)
    for r in rows:
        if "error" in r:
            out.add_row(r["run"], r["error"], "", "", "", "", "")
            continue
        resume = "" if "resume_equal" not in r else ("yes" if r["resume_equal"] else f"no (max diff {r['resume_max_diff']:.2e})")
        out.add_row(r["run"], f"{r['ms_per_step']:.1f}", str(r.get("floor_ms", "n/a")),
                    f"{r['share_of_floor']:.0%}" if "share_of_floor" in r else "n/a",
                    str(r.get("peak_vram_gb", "n/a")), str(r.get("estimated_vram_gb", "n/a")), resume)
    Console(stderr=True).print(out)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny models on the CPU (a check, not a benchmark)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 20; --tiny: 4)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not known")
    parser.add_argument("--only", default=None, help="sd15 or sdxl")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    device = torch.device("cpu") if args.tiny else torch.device("cuda")
    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run with --tiny to check the code on the CPU")
    steps = args.steps or (4 if args.tiny else 20)
    peak = peak_tflops(device, args.peak_tflops)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("sd15", "sdxl"):
            if args.only and args.only != family:
                continue
            models = build_models(family, args.tiny, device)
            for case in (c for c in cases(args.tiny) if c.family == family):
                rows.append(measure(case, models, device, Path(tmp), steps, peak))
            del models
            if device.type == "cuda":
                torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU (--tiny: tiny models)"
    table(rows, name)
    report = {"device": name, "peak_tflops": peak, "steps": steps, "warmup": WARMUP, "torch": torch.__version__,
              "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return rows


if __name__ == "__main__":
    main()
