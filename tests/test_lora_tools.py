"""The LoRA file tools beside the trainer: the model card a run writes and `train inspect`
shows, `train resize` (kohya's resize_lora) and `train merge`."""

import json

import pytest
from conftest import train, train_config, train_json
from safetensors import safe_open

from lorakit.train.lora_files import modules, read_lora, write_lora


def test_model_card_is_written_and_inspected(tmp_path, base):
    config = train_config(tmp_path, base, "card", extra='''
[output.metadata]
author = "Ada [studio]"
description = "kitchan, red and blue"
license = "CreativeML Open RAIL-M"
tags = ["character", "kitchan"]
trigger_words = ["kitchan", "red dress"]
usage_hint = "weight 0.8"
''')
    train("run", config, "--set", "training.max_steps=1", "--set", "saving.every_n_epochs=0",
          "--set", "saving.private_metadata=true")
    path = tmp_path / "card" / "out" / "kit.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.author"] == "Ada [studio]" and meta["modelspec.title"] == "kit"
    assert meta["modelspec.license"] == "CreativeML Open RAIL-M"
    assert meta["modelspec.tags"] == "character, kitchan"
    assert meta["modelspec.trigger_phrase"] == "kitchan, red dress"
    assert meta["modelspec.usage_hint"] == "weight 0.8"
    assert "ss_tag_frequency" not in meta  # private: the dataset stays out, the card stays in

    report = train_json("inspect", path)
    assert report["metadata"]["modelspec.description"] == "kitchan, red and blue"
    assert report["modules"]["unet"] > 0 and report["modules"]["te"] > 0
    assert report["ranks"] == {"4": report["modules"]["unet"] + report["modules"]["te"]}
    shown = train("inspect", path).stdout
    assert "Ada [studio]" in shown and "red dress" in shown and "no model card" not in shown


def test_inspect_refuses_what_is_not_a_lora(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 10)
    assert "not a readable .safetensors" in " ".join(train("inspect", tmp_path / "x.safetensors", check=2).stderr.split())
    assert "no such file" in train("inspect", tmp_path / "none.safetensors", check=2).stderr


def _lora(pipe, path, rank=4, alpha=2.0, seed=7, extra=None):
    """A LoCon on every UNet block and the text encoder, as if trained (up is not zero)."""
    import torch

    from lorakit.train.naming import text_encoder_targets, unet_targets
    from lorakit.train.network import LoRANetwork, save

    targets = unet_targets(pipe.unet, locon=True) + text_encoder_targets(pipe.text_encoder)
    net = LoRANetwork(targets, rank=rank, alpha=alpha, conv_rank=rank, conv_alpha=alpha)
    torch.manual_seed(seed)
    for lora in net.loras:
        torch.nn.init.normal_(lora.lora_up.weight, std=0.05)
    save(net, path, {"ss_network_dim": str(rank), "modelspec.architecture": "stable-diffusion-v1/lora",
                     "modelspec.title": path.stem}, dtype=torch.float32, extra=extra)
    return path


def _deltas(path):
    from lorakit.train.lora_files import modules, read_lora

    return {name: m.delta() for name, m in modules(read_lora(path)[0]).items()}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    import make_demo_model as tiny_sd

    return tiny_sd.pipeline(tmp_path_factory.mktemp("pipe"))


def test_resize_to_full_rank_is_exact_and_lower_keeps_the_largest_directions(tmp_path, pipe):
    import torch

    bundle = {"bundle_emb.kit.string_to_param.*": torch.ones(2, 32)}
    source = _lora(pipe, tmp_path / "kit.safetensors", extra=bundle)
    before = _deltas(source)

    full = train_json("resize", source, "--dim", "4", "--precision", "fp32")
    same = _deltas(tmp_path / "kit-dim4.safetensors")
    assert all(torch.allclose(same[k], before[k], atol=1e-6) for k in before)
    assert full["mean_fro_retained"] == pytest.approx(1.0, abs=1e-6)

    low = train_json("resize", source, "--dim", "2", "--out", tmp_path / "low.safetensors", "--precision", "fp32")
    tensors, meta = read_lora(tmp_path / "low.safetensors")
    found = modules(tensors)
    assert {m.rank for m in found.values()} == {2} and {m.alpha for m in found.values()} == {1.0}
    assert torch.equal(tensors["bundle_emb.kit.string_to_param.*"], bundle["bundle_emb.kit.string_to_param.*"])
    assert meta["ss_network_dim"] == "2" and meta["ss_network_alpha"] == "1.0"
    assert json.loads(meta["ss_resize"])["from"] == [4] and "resized from 4 to dim 2" in meta["ss_training_comment"]
    assert meta["sshs_model_hash"] != read_lora(source)[1]["sshs_model_hash"]
    retained = []
    for name, delta in before.items():  # Eckart-Young: the rest is exactly the dropped singular values
        s = torch.linalg.svdvals(delta.flatten(1))
        error = (found[name].delta() - delta).flatten(1).norm()
        assert float(error) == pytest.approx(float(s[2:].norm()), rel=1e-3, abs=1e-6)
        retained.append(float(s[:2].norm() / s.norm()))
    assert low["mean_fro_retained"] == pytest.approx(sum(retained) / len(retained), rel=1e-4)
    assert low["mean_fro_retained"] < 0.99
    assert "Frobenius norm retained" in train("resize", source, "--dim", "2", "--dry-run").stdout

    dynamic = train_json("resize", source, "--dim", "4", "--dynamic", "sv_fro", "--dynamic-param", "0.8",
                         "--out", tmp_path / "dyn.safetensors")
    assert dynamic["min_fro_retained"] >= 0.8 and len(dynamic["ranks"]) > 1  # a rank per module
    assert read_lora(tmp_path / "dyn.safetensors")[1]["ss_network_dim"] == "Dynamic"
    assert "needs --dynamic-param" in train("resize", source, "--dim", "2", "--dynamic", "sv_fro", check=2).stderr


def test_merge_concat_is_exact_and_svd_at_the_summed_rank_too(tmp_path, pipe):
    import torch

    a = _lora(pipe, tmp_path / "a.safetensors", rank=4, alpha=2.0, seed=1)
    b = _lora(pipe, tmp_path / "b.safetensors", rank=2, alpha=2.0, seed=2)
    da, db = _deltas(a), _deltas(b)
    report = train_json("merge", a, b, "--ratios", "1,0.5", "--out", tmp_path / "ab.safetensors",
                        "--precision", "fp32")
    merged = _deltas(tmp_path / "ab.safetensors")
    assert report["modules"] == len(da)
    assert all(torch.allclose(merged[k], da[k] + 0.5 * db[k], atol=1e-6) for k in da)
    meta = read_lora(tmp_path / "ab.safetensors")[1]
    assert [m["ratio"] for m in json.loads(meta["ss_merged_from"])] == [1.0, 0.5]
    assert meta["modelspec.merged_from"] == "a, b" and meta["ss_network_dim"] == "6"

    train("merge", a, b, "--ratios", "1,0.5", "--mode", "svd", "--dim", "6", "--out", tmp_path / "svd.safetensors",
          "--precision", "fp32")
    svd = _deltas(tmp_path / "svd.safetensors")
    assert all(torch.allclose(svd[k], da[k] + 0.5 * db[k], atol=1e-5) for k in da)
    small = train_json("merge", a, b, "--mode", "svd", "--dim", "2", "--out", tmp_path / "s2.safetensors")
    assert small["mean_fro_retained"] < 1

    assert "one per file" in train("merge", a, b, "--ratios", "1", "--out", tmp_path / "x.safetensors", check=2).stderr
    assert "needs --dim" in train("merge", a, b, "--mode", "svd", "--out", tmp_path / "x.safetensors", check=2).stderr
    assert "replace its own source" in train("merge", a, b, "--out", a, check=2).stderr
    xl = tmp_path / "xl.safetensors"
    tensors, meta = read_lora(b)
    write_lora(xl, tensors, {**meta, "modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    assert "different models" in train("merge", a, xl, "--out", tmp_path / "x.safetensors", check=2).stderr


@pytest.mark.parametrize("open_clip", [False, True], ids=["sd1", "sd2-openclip"])
def test_merge_into_a_checkpoint_adds_exactly_the_lora(tmp_path, open_clip):
    """Diffing the merged checkpoint with its base gives the LoRA's change on every layer it
    adapts (SD2's text encoder: inside OpenCLIP's fused q/k/v) and nothing anywhere else."""
    import torch
    from ldm_format import ldm_state_dict
    from safetensors.torch import load_file, save_file
    from test_single_file import _tiny_sd2

    from lorakit.train.single_file import load_single_file

    torch.manual_seed(3)
    pipe, state = _tiny_sd2(tmp_path)
    if not open_clip:
        state = ldm_state_dict(pipe)
    pipe.save_pretrained(tmp_path / "diffusers")
    save_file(state, str(tmp_path / "base.safetensors"))
    lora = _lora(pipe, tmp_path / "kit.safetensors")
    report = train_json("merge", lora, "--into", tmp_path / "base.safetensors", "--ratios", "0.5",
                        "--config", tmp_path / "diffusers", "--out", tmp_path / "merged.safetensors")
    deltas = _deltas(lora)
    assert report["layers_changed"] == len(deltas)

    base, merged = load_file(tmp_path / "base.safetensors"), load_file(tmp_path / "merged.safetensors")
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert base.keys() == merged.keys() and all(merged[k].dtype == base[k].dtype for k in base)
    assert any(k.endswith("in_proj_weight") for k in changed) == open_clip

    def weights(path):
        _, _, encoders, _, unet = load_single_file(path, "auto", False, False, str(tmp_path / "diffusers"))
        from lorakit.train.naming import text_encoder_targets, unet_targets

        return {t.name: t.module.weight.detach().clone()
                for t in unet_targets(unet, locon=True) + text_encoder_targets(encoders[0])}

    before, after = weights(tmp_path / "base.safetensors"), weights(tmp_path / "merged.safetensors")
    for name, delta in deltas.items():
        assert torch.allclose(after[name] - before[name], 0.5 * delta.reshape(before[name].shape), atol=1e-5), name
    untouched = set(before) - set(deltas)
    assert all(torch.equal(before[n], after[n]) for n in untouched)
    assert len(changed) <= len(deltas)  # nothing but the adapted layers' tensors
