"""train run's per-step cost against a bare PyTorch loop doing the same work, in one run, on the
tiny demo model (examples/make_demo_model.py): the same LoRA on the same cached latents, the same
captions encoded by the same text encoder, forward, backward, gradient clipping, AdamW step.

    python bench/train.py [--steps 60] [--batch 4]

Target (issue 4): train run's overhead <= 10% per step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path[0] = str(Path(__file__).resolve().parents[1] / "examples")  # the generators (see curate.py)

import make_demo_model  # noqa: E402

from lorakit.train.config_toml import load  # noqa: E402
from lorakit.train.loop import run  # noqa: E402
from lorakit.train.models import encode_text, load_models  # noqa: E402
from lorakit.train.naming import text_encoder_targets, unet_targets  # noqa: E402
from lorakit.train.network import LoRANetwork  # noqa: E402


def setup(tmp: Path, steps: int, batch: int) -> Path:
    make_demo_model.pipeline(tmp / "build").save_pretrained(tmp / "model")
    folder = tmp / "data" / "1_kit"
    folder.mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (64, 64), (30 * i, 100, 200 - 20 * i)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"kit, color {i}, smile\n")
    config = tmp / "lora.toml"
    config.write_text(f'''[model]\nbase = "{tmp / 'model'}"\nfamily = "sd1"\n[network]\ndim = 8\nalpha = 8.0
[data]\nimage_root = "{tmp / 'data'}"\nresolution = 64\nmin_bucket_reso = 64\nmax_bucket_reso = 64
batch_size = {batch}\nshuffle_caption = false\n[optimizer]\nlearning_rate = 1e-4\n[scheduler]\ntype = "constant"
[training]\nmixed_precision = "no"\nmax_steps = {steps}\nlog_every_n_steps = 10\n[saving]\nevery_n_epochs = 1000\n[output]\ndir = "{tmp / 'out'}"\n''')
    return config


def time_train_run(config_path: Path, steps: int) -> float:
    stamps = {}

    def log(line: str) -> None:
        import json

        stamps[json.loads(line)["step"]] = time.perf_counter()

    run(load(config_path), log=log)
    return (stamps[steps] - stamps[10]) / (steps - 10) * 1000


def time_bare_loop(config_path: Path, steps: int, batch: int) -> float:
    config = load(config_path)
    torch.manual_seed(0)
    models = load_models(config)
    text_encoder, vae, unet, scheduler = models.text_encoders[0], models.vae, models.unet, models.scheduler
    for m in (text_encoder, vae, unet):
        m.requires_grad_(False)
    net = LoRANetwork(unet_targets(unet) + text_encoder_targets(text_encoder), 8, 8.0)
    net.attach()
    images = sorted(Path(config.data.image_root).rglob("*.png"))
    with torch.no_grad():
        latents = torch.cat([vae.encode(torch.from_numpy(
            (__import__("numpy").asarray(Image.open(p).convert("RGB"), dtype="float32") / 127.5 - 1)
        ).permute(2, 0, 1)[None]).latent_dist.mean * vae.config.scaling_factor for p in images])
    captions = [p.with_suffix(".txt").read_text().strip() for p in images]
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1)
    start = None
    for step in range(steps):
        if step == 10:
            start = time.perf_counter()
        idx = [(step * batch + k) % len(images) for k in range(batch)]
        text, _ = encode_text(models, [captions[i] for i in idx], 1)
        x = latents[idx]
        noise = torch.randn_like(x)
        t = torch.randint(0, 1000, (batch,))
        pred = unet(scheduler.add_noise(x, noise, t), t, text).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / (steps - 10) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = setup(Path(tmp), args.steps, args.batch)
        bare, ours = [], []
        for _ in range(2):  # interleaved, best of 2
            bare.append(time_bare_loop(config, args.steps, args.batch))
            ours.append(time_train_run(config, args.steps))
    b, o = min(bare), min(ours)
    print(f"tiny SD1.5-shaped model, 64 px, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"steps 10-{args.steps} timed, best of 2")
    print(f"| bare PyTorch loop | {b:.1f} ms/step |")
    print(f"| train run | {o:.1f} ms/step ({(o / b - 1) * 100:+.1f}%; target <= +10%) |")


if __name__ == "__main__":
    main()
