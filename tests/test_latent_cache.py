"""data.cache_latents_to_disk: latents kept between runs under a key of everything they depend on
(image bytes, bucket, flip, VAE weights), so a changed input is encoded again, never read stale."""

import torch
from conftest import train_config, train_json
from PIL import Image

from lorakit.train.config_toml import load
from lorakit.train.data import load_items
from lorakit.train.latents import Latents
from lorakit.train.models import load_models
from lorakit.train.precision import vae_dtype


class CountingVAE:
    """The VAE, counting encodes: what the cache saves is VAE work."""

    def __init__(self, vae):
        self.vae, self.calls = vae, 0
        self.config, self.encoder, self.dtype = vae.config, vae.encoder, vae.dtype

    def encode(self, x):
        self.calls += 1
        return self.vae.encode(x)


def test_disk_cache_is_reused_and_keyed(tmp_path, base):
    cache = tmp_path / "cache"
    cfg = load(train_config(tmp_path, base, "c"), ["data.cache_latents_to_disk=true", f'data.latent_cache_dir="{cache}"',
                                                   "data.flip_aug=true"])
    models = load_models(cfg)
    items = load_items(cfg)
    cpu = torch.device("cpu")

    def latents(config, vae):
        counting = CountingVAE(vae)
        return Latents(load_items(config), counting, cpu, config), counting.calls

    first, calls = latents(cfg, models.vae)
    assert calls == 4 and len(list(cache.rglob("*.safetensors"))) == 4  # 2 images x 2 orientations
    plain = Latents(items, models.vae, cpu, load(train_config(tmp_path, base, "p"), ["data.flip_aug=true"]))
    for key, (latent, size) in plain.cache.items():
        assert torch.equal(first.cache[key][0], latent) and torch.equal(first.cache[key][1], size)

    again, calls = latents(cfg, models.vae)
    assert calls == 0  # a second run reads every latent
    assert all(torch.equal(again.cache[k][0], first.cache[k][0]) for k in first.cache)

    image = items[0].image  # a changed image: only its own latents are encoded again
    Image.new("RGB", (64, 64), (10, 200, 10)).save(image)
    changed, calls = latents(cfg, models.vae)
    assert calls == 2 and not torch.equal(changed.cache[0, False][0], first.cache[0, False][0])

    bigger = load(train_config(tmp_path, base, "c2"), ["data.cache_latents_to_disk=true", f'data.latent_cache_dir="{cache}"',
                                                      "data.resolution=128"])
    assert latents(bigger, models.vae)[1] == 2  # another bucket: new keys

    other = load_models(cfg).vae
    with torch.no_grad():
        other.encoder.conv_in.weight.add_(0.01)  # another VAE: new keys
    assert latents(cfg, other)[1] == 4

    for path in cache.rglob("*.safetensors"):  # damaged files are encoded again, not trusted
        path.write_bytes(path.read_bytes()[:20])
    repaired, calls = latents(cfg, models.vae)
    assert calls > 0 and all(torch.isfinite(v[0]).all() for v in repaired.cache.values())


def test_run_with_the_disk_cache(tmp_path, base):
    cache = tmp_path / "cache"
    args = ["--set", "data.cache_latents_to_disk=true", "--set", f'data.latent_cache_dir="{cache}"',
            "--set", "training.max_steps=2"]
    one = train_json("run", train_config(tmp_path, base, "a"), *args)
    assert len(list(cache.rglob("*.safetensors"))) == 2
    two = train_json("run", train_config(tmp_path, base, "b"), *args)  # same images: read from the cache
    assert one["losses"] == two["losses"]


def test_a_half_vae_on_request_latents_and_samples_still_float32(tmp_path, base):
    """training.no_half_vae = false: the VAE in the mixed-precision dtype (kohya's rule), on every
    device; the latents trained on stay float32, and samples decode in float32."""
    from lorakit.train.sampling import generate, parse_prompt

    cpu = torch.device("cpu")
    path = train_config(tmp_path, base, "h")
    cfg = load(path, ["training.no_half_vae=false", 'training.mixed_precision="bf16"'])
    assert vae_dtype("bf16", no_half_vae=False) == torch.bfloat16
    assert vae_dtype("fp16", no_half_vae=False) == torch.float16
    assert vae_dtype("fp16", no_half_vae=True) == torch.float32  # the default
    assert vae_dtype("no", no_half_vae=False) == torch.float32
    models = load_models(cfg)
    items = load_items(cfg)
    full = Latents(items, models.vae, cpu, cfg)
    models.vae.to(torch.bfloat16)  # what the loop does on a GPU with this config
    half = Latents(items, models.vae, cpu, cfg)
    for key, (latent, _) in full.cache.items():
        assert half.cache[key][0].dtype == torch.float32
        assert torch.allclose(half.cache[key][0], latent, atol=0.05 * latent.abs().max().item())
        assert not torch.equal(half.cache[key][0], latent)  # really encoded in bfloat16
    [(_, image, _)] = generate(models, cfg, [parse_prompt("kitchan --w 64 --h 64 --s 2 --d 1")])
    assert image.size == (64, 64) and models.vae.dtype == torch.bfloat16
