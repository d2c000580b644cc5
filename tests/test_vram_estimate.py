"""train plan's peak-VRAM estimate (train/memory.py): its counts are the model's and the
network's real ones, and each setting moves the part it should."""

import pytest
from conftest import train_config, train_json

from lorakit.train.config import Config
from lorakit.train.config_toml import load
from lorakit.train.memory import OVERHEAD, estimate


def test_counts_are_the_real_models_and_networks(tmp_path, base):
    from lorakit.train.setup import setup

    for module in ("lora", "locon"):
        config = load(train_config(tmp_path, base, module), [f'network.module="{module}"', "network.conv_dim=2",
                                                             'training.mixed_precision="bf16"'])
        found = estimate(config, "sd1")
        run = setup(config, log=lambda line: None)
        assert found["trained_parameters"] == sum(p.numel() for p in run.network.parameters() if p.requires_grad)
        assert found["parts"]["UNet (frozen)"] == sum(p.numel() for p in run.models.unet.parameters()) * 2
        encoders = sum(p.numel() for e in run.models.text_encoders for p in e.parameters())
        assert found["parts"]["text encoders"] == encoders * 2
        assert found["parts"]["VAE"] == 0  # latents cached: it waits on the CPU
        assert found["total"] == sum(found["parts"].values())


def _sd15(**settings) -> dict:
    config = Config()
    config.model.base, config.model.family = "model.safetensors", "sd1"  # the shipped SD1.5 configs
    for key, value in settings.items():
        section, name = key.split("__")
        setattr(getattr(config, section), name, value)
    return estimate(config, "sd1")


def test_each_setting_moves_its_part():
    plain = _sd15()
    parts = plain["parts"]
    assert parts["UNet (frozen)"] == pytest.approx(859.5e6 * 2, rel=0.01)  # SD1.5's UNet, bf16
    assert plain["trained_parameters"] == pytest.approx(18.9e6, rel=0.01)  # kohya's rank-32 file: 37.9 MB in fp16
    activations = lambda e: next(v for k, v in e["parts"].items() if k.startswith("activations"))  # noqa: E731
    assert activations(_sd15(data__batch_size=4)) == pytest.approx(4 * activations(plain), rel=0.01)
    assert activations(_sd15(training__gradient_checkpointing=True)) < activations(plain) / 2
    assert _sd15(data__cache_latents=False)["parts"]["VAE"] == pytest.approx(83.7e6 * 4, rel=0.01)  # float32
    assert _sd15(data__cache_text_encoder_outputs=True)["parts"]["text encoders"] == 0
    assert _sd15(optimizer__type="prodigy")["total"] - plain["total"] == 8 * plain["trained_parameters"]
    assert _sd15(training__mixed_precision="no")["parts"]["UNet (frozen)"] == 2 * parts["UNet (frozen)"]
    assert parts["CUDA context and workspaces"] == OVERHEAD


def test_plan_shows_it(tmp_path, base):
    report = train_json("plan", train_config(tmp_path, base, "p"))
    rows = report["sections"]["VRAM estimate"]
    assert 0 < report["vram_estimate_gb"] < 2 and len(rows) == 7 and rows[0]["part"] == "UNet (frozen)"
