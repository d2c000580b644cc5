"""The GPU path, exercised on the CPU: bf16 and fp16 autocast with the GradScaler (SD1 and SDXL,
with an embedding, a half VAE and its float32 round trip for samples, resumed once, the LoRA
loading in diffusers after), every tensor of a step on the model's device, and bench/gpu.py's
code path in its --tiny mode."""

import json
import subprocess
import sys

import make_demo_model as tiny_sd
import numpy as np
import pytest
import torch
from conftest import ROOT, train_config
from safetensors.torch import load_file

from lorakit.train.config_toml import load

EMB = '''
[[embeddings]]
placeholder = "kitchan"
token_count = 2
init_text = "red"
'''
DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("family,precision", [("sd1", "bf16"), ("sd1", "fp16"), ("sdxl", "bf16"), ("sdxl", "fp16")])
def test_mixed_precision_runs_resumes_and_loads(tmp_path, base, base_xl, family, precision):
    from lorakit.train.loop import train
    from lorakit.train.setup import setup

    model = base_xl if family == "sdxl" else base
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("kitchan, smile --s 3\n")  # 3 sampling steps: fp16 kernels are slow on a CPU
    args = [f'training.mixed_precision="{precision}"', "training.no_half_vae=false", "training.max_steps=4",
            "saving.every_n_epochs=0", "saving.bundle_embeddings=false", "sampling.every_n_steps=2",
            f'sampling.prompts="{prompts}"']
    whole = setup(load(train_config(tmp_path, model, "whole", EMB), args), log=lambda line: None)
    dtype = DTYPE[precision]
    assert whole.models.vae.dtype == dtype  # no_half_vae = false: the VAE in the training dtype
    assert all(latent.dtype == torch.float32 for latent, _ in whole.latents.cache.values())  # latents stay float32
    outputs = []
    whole.models.unet.register_forward_hook(  # training forwards only (samples run without gradients)
        lambda module, args, out: outputs.append(out.sample.dtype) if torch.is_grad_enabled() else None)
    result = train(whole)
    assert set(outputs) == {dtype}  # the UNet ran under autocast
    assert all(p.dtype == torch.float32 for p in whole.trained())  # what trains stays float32
    assert {whole.models.unet.dtype, *(te.dtype for te in whole.models.text_encoders)} == {dtype}  # frozen: halved
    assert whole.models.vae.dtype == dtype  # back after sampling decoded in float32
    assert len(list((tmp_path / "whole" / "out" / "sample").glob("*.png"))) == 2
    assert whole.scaler.is_enabled() == (precision == "fp16")
    assert all(np.isfinite(result["losses"]))

    parts = load(train_config(tmp_path, model, "parts", EMB), args)
    train(setup(parts, log=lambda line: None), stop_at=2)
    train(setup(parts, resume=True, log=lambda line: None))
    out_a, out_b = tmp_path / "whole" / "out", tmp_path / "parts" / "out"
    for name in ("kit.safetensors", "kit_embeddings/kitchan.safetensors"):
        a, b = load_file(str(out_a / name)), load_file(str(out_b / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    pipe = (StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline).from_pretrained(model)
    before = tiny_sd.sample(pipe)
    pipe.load_lora_weights(str(out_a / "kit.safetensors"))
    assert np.abs(tiny_sd.sample(pipe) - before).max() > 0


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_every_tensor_of_a_step_follows_the_model_device(tmp_path, base, base_xl, family):
    from lorakit.train.placement import check_step

    model = base_xl if family == "sdxl" else base
    cfg = load(train_config(tmp_path, model, "p", EMB), ['training.mixed_precision="bf16"', "data.batch_size=2",
                                                         "training.gradient_accumulation_steps=2"])
    done = check_step(cfg)
    assert done == {"device": "meta", "batches": 2, "trained": done["trained"], "on_device": True,
                    "parked": ["AutoencoderKL"]}  # latents cached: the VAE waits on the CPU


@pytest.mark.parametrize("module", ["locon", "dylora", "loha", "lokr", "ia3", "glora", "diag-oft"])
def test_every_network_module_steps_on_the_model_device(tmp_path, base, module):
    """With the dropouts it takes (rank_dropout where its kind does not refuse it: train/network_kinds.py)."""
    from lorakit.train.network_kinds import KINDS
    from lorakit.train.placement import check_step

    dropouts = ["network.module_dropout=0.1"] + ([] if KINDS[module].rank_dropout else ["network.rank_dropout=0.1"])
    args = [f'network.module="{module}"', "network.conv_dim=4", *dropouts] + \
        (["network.args={unit = 2}"] if module == "dylora" else [])
    assert check_step(load(train_config(tmp_path, base, "m"), args))["on_device"]


def test_the_placement_check_catches_token_ids_left_on_the_cpu(tmp_path, base, monkeypatch):
    """The bug a GPU found before: the tokenizer's ids never moved to the text encoder's device."""
    import lorakit.train.models as models
    from lorakit.train.placement import DevicePlacementError, check_step

    made_on_cpu = models.token_ids
    monkeypatch.setattr(models, "token_ids", lambda tok, captions, limit, device: made_on_cpu(tok, captions, limit, "cpu"))
    with pytest.raises(DevicePlacementError, match="embedding mixes devices: .* on cpu, .* on meta"):
        check_step(load(train_config(tmp_path, base, "bug")))


def test_device_placement_mode():
    from lorakit.train.placement import DevicePlacement, DevicePlacementError

    weight = torch.ones(4, 2, device="meta")
    with DevicePlacement():
        assert (torch.ones(3, device="meta") * torch.tensor(2.0)).device.type == "meta"  # a CPU scalar is fine
        torch.ones(3, device="meta").copy_(torch.ones(3))  # copies move data between devices
        for mixed in (lambda: torch.ones(2, 4) @ weight,  # PyTorch itself lets these two through on meta
                      lambda: torch.nn.functional.embedding(torch.tensor([0, 1]), weight),
                      lambda: torch.ones(4, 2) + weight):
            with pytest.raises(DevicePlacementError):
                mixed()


def test_gpu_bench_runs_in_its_tiny_mode():
    """bench/gpu.py on the CPU with the tiny models: the code that measures a GPU cannot rot."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--steps", "4"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = {row["run"]: row for row in report["rows"]}
    assert set(runs) == {"sd15 64px b2 bf16", "sd15 64px b2 fp16", "sdxl 64px b2 bf16", "sdxl 64px b1 bf16 ckpt"}
    assert all(row["ms_per_step"] > 0 and "error" not in row for row in runs.values())
    assert all(row["estimated_vram_gb"] > 0 for row in runs.values())  # beside the measured peak on a GPU
    assert runs["sd15 64px b2 bf16"]["resume_equal"] and runs["sdxl 64px b2 bf16"]["resume_equal"]
    assert "train run on" in proc.stderr  # the table


def test_lokr_rank_dropout_is_refused_before_a_gpu_would_fail(tmp_path, base):
    from conftest import train

    proc = train("plan", train_config(tmp_path, base, "k"), "--set", 'network.module="lokr"',
                 "--set", "network.rank_dropout=0.1", check=2)
    assert "draws LoKr's rank mask on the CPU" in proc.stderr


def test_fp16_gradients_are_unscaled_before_they_are_clipped(tmp_path, base, monkeypatch):
    """The scaler multiplies fp16 losses by 65536; clipping must see the true gradients, so the
    first step's gradient norm under fp16 is the float32 run's, not 65536 times it."""
    from lorakit.train.loop import optimizer_step, step_groups
    from lorakit.train.setup import setup

    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording(params, max_norm, *args, **kwargs):
        norms.append(float(clip(params, max_norm, *args, **kwargs)))
        return norms[-1]
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    for k, precision in enumerate(("no", "fp16")):
        run = setup(load(train_config(tmp_path, base, f"c{k}"), [f'training.mixed_precision="{precision}"']),
                    log=lambda line: None)
        optimizer_step(run, step_groups(run, 0)[0], 0, 0)
    assert run.scaler.get_scale() == 65536.0  # the fp16 run did scale its loss
    assert 0.5 < norms[1] / norms[0] < 2.0, norms


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_weights_train_in_their_dtype(tmp_path, base, dtype):
    """training.weights_dtype (kohya's full_bf16 / full_fp16): the network's weights, gradients and
    optimizer moments in the half dtype; fp16 gradients are unscaled (torch's scaler refuses
    them), the weights move, the loss stays finite; the file saves as usual."""
    from lorakit.train.loop import train
    from lorakit.train.setup import setup

    run = setup(load(train_config(tmp_path, base, f"w{dtype}", EMB), [
        f'training.mixed_precision="{dtype}"', f'training.weights_dtype="{dtype}"', "training.max_steps=3",
        "saving.every_n_epochs=0", "optimizer.weight_decay=0.0", "optimizer.args={eps = 1e-6}"]),
        log=lambda line: None)
    network = [p for p in run.network.parameters() if p.requires_grad]
    assert {p.dtype for p in network} == {DTYPE[dtype]}
    assert {p.dtype for item in run.embeddings.items for p in item.vectors} == {torch.float32}  # embeddings: float32
    start = [p.detach().clone() for p in network]
    result = train(run)
    assert all(np.isfinite(result["losses"]))
    assert any(not torch.equal(a, p.detach()) for a, p in zip(start, network))
    moments = [s["exp_avg"] for s in run.optimizer.state.values() if "exp_avg" in s]
    assert DTYPE[dtype] in {m.dtype for m in moments}
    saved = load_file(str(tmp_path / f"w{dtype}" / "out" / "kit.safetensors"))
    assert {v.dtype for k, v in saved.items() if k.endswith("weight")} == {torch.float16}  # saving.precision


def test_half_precision_weights_need_their_autocast(tmp_path, base):
    from conftest import train as train_cli

    config = train_config(tmp_path, base, "wmix")
    for weights, mixed in (("fp16", "bf16"), ("bf16", "no"), ("fp16", "no")):
        proc = train_cli("plan", config, "--set", f'training.weights_dtype="{weights}"',
                         "--set", f'training.mixed_precision="{mixed}"', check=2)
        assert f'needs training.mixed_precision = "{weights}"' in " ".join(proc.stderr.split())
    proc = train_cli("plan", config, "--set", 'training.weights_dtype="fp16"', "--set", 'training.mixed_precision="fp16"',
                     check=2)
    assert "eps 1e-08 is 0 in fp16" in " ".join(proc.stderr.split())
    train_cli("plan", config, "--set", 'training.weights_dtype="fp16"', "--set", 'training.mixed_precision="fp16"',
              "--set", "optimizer.args={eps = 1e-6}")


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_cached_latents_and_text_outputs_leave_their_models_off_the_device(tmp_path, base, base_xl, family):
    """With every latent and every caption's text-encoder outputs cached, the VAE and the text
    encoders are moved to the CPU; a step then runs on the model's device (meta here) without
    them: the placement mode would refuse any call mixing the two."""
    from lorakit.train.placement import check_step

    model = base_xl if family == "sdxl" else base
    args = ["data.cache_text_encoder_outputs=true", "network.train_text_encoder=false", "data.shuffle_caption=false"]
    done = check_step(load(train_config(tmp_path, model, "park"), args))
    encoders = ["CLIPTextModel", "CLIPTextModelWithProjection"] if family == "sdxl" else ["CLIPTextModel"]
    assert done["on_device"] and done["parked"] == ["AutoencoderKL", *encoders]
    kept = check_step(load(train_config(tmp_path, model, "keep"), ["data.cache_latents=false"]))
    assert kept["parked"] == []  # latents encoded per step: the VAE stays


def test_parked_models_are_borrowed_back_for_sampling_and_validation():
    from lorakit.train.offload import Parking

    vae, encoder = torch.nn.Linear(2, 2, device="meta"), torch.nn.Linear(2, 2, device="meta")
    parking = Parking(torch.device("meta"))
    parking.park(vae, encoder)
    assert vae.weight.device.type == "cpu" and not parking.on_device(encoder)
    with parking.borrowed():
        assert vae.weight.device.type == "meta" and encoder.weight.device.type == "meta"
    assert vae.weight.device.type == "cpu" and encoder.weight.device.type == "cpu"
    Parking(torch.device("cpu")).park(vae)  # on the CPU there is nothing to move
