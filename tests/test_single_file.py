"""Single-file checkpoints: the shipped configs are the real architectures, the family is read
from the keys, tiny SD1, SD2 and SDXL checkpoints in the original (LDM / SGM) layouts load to the
very weights they were made from and train; .ckpt pickles load only when allowed."""

import json

import make_demo_model as tiny_sd
import pytest
import torch
from conftest import train, train_config, train_json
from ldm_format import ldm_state_dict
from safetensors.torch import save_file

from lorakit.train.config_toml import load
from lorakit.train.models import load_models
from lorakit.train.single_file import config_folder, family_of


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, unet, text", [("sd1", 859_520_964, 123_060_480), ("sd2", 865_910_724, 340_387_840),
                                              ("sdxl", 2_567_463_684, 123_060_480)])
def test_shipped_configs_are_the_real_architectures(name, unet, text):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = config_folder(name)
    with torch.device("meta"):  # shapes only, no memory
        u = UNet2DConditionModel.from_config(json.loads((folder / "unet" / "config.json").read_text()))
        v = AutoencoderKL.from_config(json.loads((folder / "vae" / "config.json").read_text()))
        t = CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder / "text_encoder")))
    assert (_count(u), _count(v), _count(t)) == (unet, 83_653_863, text)
    tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's own ids
    assert tok.pad_token == ("!" if name == "sd2" else "<|endoftext|>")
    if name == "sdxl":
        from transformers import CLIPTextModelWithProjection
        with torch.device("meta"):
            t2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(folder / "text_encoder_2")))
        assert _count(t2) == 694_659_840
        assert CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2")).pad_token == "!"


def test_family_from_keys():
    assert family_of(["conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.out.0.weight"]) == "sdxl"
    assert family_of(["cond_stage_model.model.ln_final.weight"]) == "sd2"
    assert family_of(["cond_stage_model.transformer.text_model.final_layer_norm.weight"]) == "sd1"
    with pytest.raises(Exception, match="no text encoder"):
        family_of(["model.diffusion_model.out.0.weight"])
    with pytest.raises(Exception, match="not a Stable Diffusion checkpoint"):
        family_of(["lora_unet_x.lora_down.weight"])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny SD1 pipeline (2 layers per block, as SD's), its diffusers folder and its single file."""
    from diffusers import UNet2DConditionModel

    folder = tmp_path_factory.mktemp("single")
    pipe = tiny_sd.pipeline(folder / "build")
    pipe.register_modules(unet=UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")))
    pipe.save_pretrained(folder / "diffusers")
    save_file(ldm_state_dict(pipe), str(folder / "tiny.safetensors"))
    torch.save({"state_dict": ldm_state_dict(pipe), "global_step": 1}, folder / "tiny.ckpt")
    return folder


def test_single_file_loads_the_same_weights_and_trains(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    folder = tiny_checkpoint
    cfg = train_config(tmp_path, folder / "tiny.safetensors", "sf")
    text = cfg.read_text().replace('family = "sd1"', f'family = "sd1"\nconfig = "{folder / "diffusers"}"')
    cfg.write_text(text)
    single = load_models(load(cfg))
    reference = load_models(load(cfg, [f'model.base="{folder / "diffusers"}"']))
    for name in ("unet", "vae"):
        ours, theirs = getattr(single, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    ours, theirs = single.text_encoders[0].state_dict(), reference.text_encoders[0].state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    result = train_json("run", cfg, "--set", "training.max_steps=2")
    assert result["step"] == 2 and all(v == v for v in result["losses"])

    proc = train("run", cfg, "--set", f'model.base="{folder / "tiny.ckpt"}"', check=2)
    assert "a .ckpt file is a pickle" in proc.stderr and "model.allow_pickle = true" in proc.stderr
    from_ckpt = load_models(load(cfg, [f'model.base="{folder / "tiny.ckpt"}"', "model.allow_pickle=true"]))
    assert all(torch.equal(from_ckpt.unet.state_dict()[k], v) for k, v in reference.unet.state_dict().items())
    assert len(list((tmp_path / "cache" / "checkpoints").glob("tiny-*.safetensors"))) == 1  # converted once

    proc = train("run", cfg, "--set", 'model.family="sdxl"', check=2)
    assert "is an sd1 checkpoint" in proc.stderr


def _tiny_sd2(folder):
    """A tiny SD2-shaped pipeline (2 layers per block and linear projections, as SD2's), its
    text encoder written in SD2's OpenCLIP layout."""
    from diffusers import UNet2DConditionModel

    pipe = tiny_sd.pipeline(folder / "build")
    pipe.register_modules(unet=UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=(2, 4), use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")))
    return pipe, ldm_state_dict(pipe, open_clip=True)


def _tiny_sdxl(folder):
    """The tiny SDXL pipeline with a wider second text encoder: diffusers tells SDXL's two
    encoders apart by width, as the real ones are (768 and 1280)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    pipe = tiny_sd.pipeline_xl(folder / "build")
    first = pipe.text_encoder.config
    wide = CLIPTextConfig(hidden_size=48, projection_dim=48, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=37, vocab_size=first.vocab_size, max_position_embeddings=77,
                          bos_token_id=first.bos_token_id, eos_token_id=first.eos_token_id,
                          pad_token_id=first.pad_token_id)
    config = dict(pipe.unet.config, cross_attention_dim=32 + 48, projection_class_embeddings_input_dim=48 + 6 * 8)
    pipe.register_modules(text_encoder_2=CLIPTextModelWithProjection(wide),
                          unet=UNet2DConditionModel.from_config(config))
    return pipe, ldm_state_dict(pipe)


@pytest.mark.parametrize("family,make", [("sd2", _tiny_sd2), ("sdxl", _tiny_sdxl)])
def test_sd2_and_sdxl_single_files_load_the_same_weights_and_train(tmp_path, monkeypatch, family, make):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(5)
    pipe, state = make(tmp_path)
    pipe.save_pretrained(tmp_path / "diffusers")
    save_file(state, str(tmp_path / "tiny.safetensors"))
    assert family_of(state) == family
    cfg = train_config(tmp_path, tmp_path / "tiny.safetensors", "sf")
    cfg.write_text(cfg.read_text().replace('family = "sd1"', f'family = "{family}"\nconfig = "{tmp_path / "diffusers"}"'))
    single = load_models(load(cfg))
    reference = load_models(load(cfg, [f'model.base="{tmp_path / "diffusers"}"']))
    pairs = [("unet", single.unet, reference.unet), ("vae", single.vae, reference.vae)]
    pairs += [(f"text encoder {i}", a, b) for i, (a, b) in enumerate(zip(single.text_encoders, reference.text_encoders))]
    assert len(single.text_encoders) == (2 if family == "sdxl" else 1)
    for name, ours, theirs in pairs:
        ours, theirs = ours.state_dict(), theirs.state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    result = train_json("run", cfg, "--set", "training.max_steps=2")
    assert result["step"] == 2 and all(v == v for v in result["losses"])
