"""Additional embeddings (pivotal tuning) and textual inversion on the tiny SD1.5 / SDXL models."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train, train_config, train_json
from PIL import Image
from safetensors import safe_open

from lorakit.errors import UserError

EMB = '''
[[embeddings]]
placeholder = "kitchan"
token_count = 3
init_text = "red"
'''


def tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def tiny_text_model(base):
    from transformers import CLIPTextModel, CLIPTokenizer

    return (CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", model_max_length=77),
            CLIPTextModel.from_pretrained(base, subfolder="text_encoder"))


# --- the parts -------------------------------------------------------------------------------


def test_a1111_learning_rate_schedule():
    from lorakit.train.schedule import parse_piecewise, piecewise_rate

    pieces = parse_piecewise("0.005:100, 1e-3:1000, 1e-5")
    rates = [piecewise_rate(pieces, s) for s in (0, 99, 100, 999, 1000, 10**6)]
    assert rates == [0.005, 0.005, 1e-3, 1e-3, 1e-5, 1e-5]
    assert [piecewise_rate(parse_piecewise("0.01"), s) for s in (0, 10**6)] == [0.01, 0.01]
    for bad in ("0.005, 1e-3:10", "0.1:100, 0.2:50", "fast", ""):
        with pytest.raises(UserError):
            parse_piecewise(bad)


def test_filewords_and_templates(tmp_path):
    from lorakit.train.templates import filewords_from_name, fill, load_template

    name = Path("000001-1-a man in suit.png")
    assert filewords_from_name(name, None, " ") == "a man in suit"
    assert filewords_from_name(name, r"\w+", ", ") == "a, man, in, suit"
    for shipped in ("subject", "style"):
        lines = load_template(shipped)
        assert len(lines) >= 10 and all("[name]" in line for line in lines)
        assert not any(line.startswith("#") for line in lines)
    own = tmp_path / "mine.txt"
    own.write_text("# a comment\n\n[filewords] by [name]\n")
    assert load_template(str(own)) == ["[filewords] by [name]"]
    assert fill(load_template(str(own))[0], "kitchan", "a man in suit") == "a man in suit by kitchan"
    with pytest.raises(UserError, match="style, subject"):
        load_template("nope")


def test_init_text_is_padded_or_truncated_and_placeholders_are_whole_words(base):
    from lorakit.train.config import EmbeddingConfig
    from lorakit.train.embeddings import Embeddings

    tokenizer, encoder = tiny_text_model(base)
    rows = encoder.get_input_embeddings().weight.detach()
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    star, red = ids("*"), ids("red")
    assert len(red) == 1 and len(ids("kitchan red smile")) > 3
    embeddings = Embeddings.build([EmbeddingConfig(placeholder="kitchan", token_count=3, init_text="red"),
                                   EmbeddingConfig(placeholder="my cat.v2", token_count=2, init_text="kitchan red smile")],
                                  [tokenizer], [encoder])
    short, long = embeddings.items
    assert torch.equal(short.vectors[0], rows[red + star + star])  # fewer tokens: padded with "*"
    assert torch.equal(long.vectors[0], rows[ids("kitchan red smile")[:2]])  # more: truncated
    assert long.name == "my_cat_v2"  # a name A1111's parser and prompts can take
    text = embeddings.substitute("Kitchan, kitchans, my  cat.v2, red")
    assert text == "<lkemb0_0> <lkemb0_1> <lkemb0_2>, kitchans, <lkemb1_0> <lkemb1_1>, red"
    assert embeddings.token_cost("kitchan, red") == 3 + len(ids(", red"))
    first = len(rows)
    assert tokenizer(text, add_special_tokens=False).input_ids[:3] == [first, first + 1, first + 2]


def test_train_switch_and_stop_units(base):
    from lorakit.train.config import EmbeddingConfig
    from lorakit.train.embeddings import Embeddings

    embeddings = Embeddings.build([EmbeddingConfig(placeholder="a", train=False),
                                   EmbeddingConfig(placeholder="b", stop_training_after=2, stop_training_after_unit="epochs"),
                                   EmbeddingConfig(placeholder="c", stop_training_after=3)], *[[m] for m in tiny_text_model(base)])
    fixed, by_epochs, by_steps = embeddings.items
    assert embeddings.parameters() == by_epochs.vectors + by_steps.vectors  # train = false: not optimised
    embeddings.resolve_stops(steps_per_epoch=5)
    assert (by_epochs.stop_step, by_steps.stop_step) == (10, 3)
    assert embeddings.set_step(9) and by_epochs.vectors[0].requires_grad and not by_steps.vectors[0].requires_grad
    assert not embeddings.set_step(10) and not fixed.vectors[0].requires_grad


def test_base_embedding_continues_from_a_file(tmp_path, base):
    from safetensors.torch import save_file

    from lorakit.train.config import EmbeddingConfig
    from lorakit.train.embeddings import Embeddings

    vectors = torch.randn(2, 32)
    save_file({"emb_params": vectors}, str(tmp_path / "old.safetensors"))
    torch.save({"string_to_param": {"*": vectors}, "name": "old"}, tmp_path / "old.pt")
    for file in ("old.safetensors", "old.pt"):
        tokenizer, encoder = tiny_text_model(base)
        (item,) = Embeddings.build([EmbeddingConfig(placeholder="old", base_embedding=str(tmp_path / file))],
                                   [tokenizer], [encoder]).items
        assert item.count == 2 and torch.equal(item.vectors[0].detach(), vectors)
    with pytest.raises(UserError, match="holds 2 vectors"):
        Embeddings.build([EmbeddingConfig(placeholder="old", token_count=3, base_embedding=str(tmp_path / "old.pt"))],
                         *[[m] for m in tiny_text_model(base)])


# --- runs --------------------------------------------------------------------------------------


def test_embedding_only_run_changes_only_the_new_vectors_and_learns(tmp_path, base):
    """network = "none": the loss on fixed noise falls, every model weight stays bit-identical,
    and diffusers' load_textual_inversion gives the prompt the same encoding as training did."""
    from lorakit.train.config_toml import load
    from lorakit.train.data import load_items
    from lorakit.train.latents import Latents
    from lorakit.train.loop import train, training_step
    from lorakit.train.models import encode_text, load_models
    from lorakit.train.setup import setup

    cfg = load(train_config(tmp_path, base, "ti", EMB), [
        'network.module="none"', "training.max_steps=20", "training.log_every_n_steps=10",
        "optimizer.learning_rate=0.05", "saving.every_n_epochs=0", "saving.save_state=false"])
    seen = {}

    def inspect(models, network, embeddings):
        items = load_items(cfg)
        latents = Latents(items, models.vae, torch.device("cpu"), cfg).batch(list(range(len(items))), None)[0]

        def fixed_loss():
            with torch.no_grad():
                text, _ = encode_text(models, [embeddings.substitute(i.caption) for i in items], 1)
                return np.mean([float(training_step(latents, text, torch.ones(2), models.unet, models.scheduler,
                                                    cfg, torch.Generator().manual_seed(s))) for s in range(16)])
        seen["after"] = fixed_loss()
        with torch.no_grad():
            seen["encoded"] = encode_text(models, [embeddings.substitute("kitchan, red")], 1)[0]
        embeddings.detach()
        seen["weights"] = {f"{name}.{k}": v.clone() for name, model in
                           (("unet", models.unet), ("vae", models.vae), ("te", models.text_encoders[0]))
                           for k, v in model.state_dict().items()}
        embeddings.attach()
        tok, rows = models.tokenizers[0], models.text_encoders[0].get_input_embeddings().weight.detach()
        init = rows[tok("red", add_special_tokens=False).input_ids + tok("*", add_special_tokens=False).input_ids * 2]
        seen["init"] = init.clone()
        embeddings.load_state([[init]])
        seen["before"] = fixed_loss()

    run = setup(cfg, log=lambda line: None)
    result = train(run)
    inspect(run.models, run.network, run.embeddings)
    assert result["step"] == 20 and result["saved"] == [str(Path(cfg.output.dir) / "kitchan.safetensors")]
    assert seen["after"] < seen["before"] * 0.99  # it learned
    fresh = load_models(cfg)
    for name, model in (("unet", fresh.unet), ("vae", fresh.vae), ("te", fresh.text_encoders[0])):
        for key, value in model.state_dict().items():
            assert torch.equal(seen["weights"][f"{name}.{key}"], value), f"{name}.{key} changed"
    saved = tensors(Path(cfg.output.dir) / "kitchan.safetensors")
    assert list(saved) == ["emb_params"] and saved["emb_params"].shape == (3, 32)
    assert not torch.equal(saved["emb_params"], seen["init"])  # the new vectors did train

    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(Path(cfg.output.dir) / "kitchan.safetensors"), token="kitchan")
    assert pipe.maybe_convert_prompt("kitchan, red", pipe.tokenizer) == "kitchan kitchan_1 kitchan_2, red"
    encoded, _ = pipe.encode_prompt("kitchan, red", "cpu", 1, False)
    assert torch.allclose(encoded, seen["encoded"], atol=1e-6)


def test_textual_inversion_a1111_pt_log_dir_png_and_exact_resume(tmp_path, base):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# one prompt\nkitchan, smile --w 64 --h 128 --s 2 --d 7 --l 5.5\n")
    extra = EMB + f'''learning_rate = "0.05:3, 0.01"
[sampling]
prompts = "{prompts}"
'''
    settings = ['network.module="none"', 'saving.embedding_format="pt"', "saving.embedding_in_png=true",
                'data.template="subject"']
    args = [a for s in settings for a in ("--set", s)]
    whole_cfg = train_config(tmp_path, base, "whole", extra)
    log = tmp_path / "whole" / "log"
    whole = train_json("run", whole_cfg, *args, "--set", f'output.log_dir="{log}"')
    out = tmp_path / "whole" / "out"
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # the rate each step trained at: A1111's "0.05:3" is 0.05 for the first three steps
    assert [line["lr"] for line in logged] == [0.05, 0.05, 0.05, 0.01, 0.01, 0.01]
    assert sorted(p.name for p in out.glob("kitchan*")) == ["kitchan-000002.pt", "kitchan.pt"]
    data = torch.load(out / "kitchan.pt", weights_only=True)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert data["string_to_param"]["*"].shape == (3, 32) and data["name"] == "kitchan" and data["step"] == 6
    assert data["sd_checkpoint_name"] == "sd15"
    # the log: a copy of the embedding and sample images at every save, the embedding in a PNG
    assert sorted(p.name for p in (log / "embeddings").iterdir()) == ["kitchan-4.pt", "kitchan-6.pt"]
    samples = sorted((log / "images").iterdir())
    assert [p.name for p in samples] == ["kitchan-000004-00-7.png", "kitchan-000006-00-7.png"]
    with Image.open(samples[-1]) as image:
        assert image.size == (64, 128)  # the prompt's --w / --h
        assert "Steps: 2, Sampler: Euler a, CFG scale: 5.5, Seed: 7" in image.text["parameters"]
    from lorakit.train.embedding_files import read_embedding
    (from_png,) = read_embedding(log / "image_embeddings" / "kitchan-6.png")
    assert from_png.name == "kitchan" and from_png.step == 6
    assert torch.equal(from_png.vectors["emb_params"], data["string_to_param"]["*"])
    info = train_json("embedding", "inspect", out / "kitchan.pt")
    assert info["embeddings"][0]["vectors"] == 3 and info["embeddings"][0]["step"] == 6
    assert info["embeddings"][0]["kind"] == "A1111 .pt" and info["embeddings"][0]["base_model"] == "sd15"

    parts_cfg = train_config(tmp_path, base, "parts", extra)
    train_json("run", parts_cfg, *args, "--stop-at", "3")
    resumed = train_json("resume", tmp_path / "parts" / "out")
    assert resumed["step"] == 6 and resumed["losses"] == whole["losses"][3:]
    again = torch.load(tmp_path / "parts" / "out" / "kitchan.pt", weights_only=True)
    assert again["step"] == 6 and torch.equal(again["string_to_param"]["*"], data["string_to_param"]["*"])

    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(out / "kitchan.pt"))  # A1111's file: the token is its name
    assert pipe.maybe_convert_prompt("kitchan", pipe.tokenizer) == "kitchan kitchan_1 kitchan_2"


def test_pivotal_tuning_stops_the_embedding_keeps_its_norm_and_exports(tmp_path, base):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("kitchan, red --s 2 --d 5\nkitchan, blue --n red --s 2 --w 100 --h 60\n")
    extra = EMB + f"stop_training_after = 2\npreserve_norm = true\nlearning_rate = 0.05\n" \
                  f'[sampling]\nevery_n_steps = 2\nprompts = "{prompts}"\n'
    cfg = train_config(tmp_path, base, "pivot", extra)
    result = train_json("run", cfg, "--set", "saving.every_n_steps=1", "--set", "saving.every_n_epochs=0",
                      "--set", "saving.bundle_embeddings=false", "--set", "training.max_steps=4")
    assert result["step"] == 4
    out = tmp_path / "pivot" / "out"
    samples = sorted(p.name for p in (out / "sample").iterdir())
    assert samples == ["kit-000002-00-5.png", "kit-000002-01-4.png", "kit-000004-00-5.png", "kit-000004-01-4.png"]
    with Image.open(out / "sample" / "kit-000004-01-4.png") as image:
        assert image.size == (128, 64)  # 100 x 60 at the bucket step of 64
        assert image.text["parameters"].startswith("kitchan, blue\nNegative prompt: red\nSteps: 2, Sampler: Euler a")
    vectors = {s: tensors(out / f"kit-step{s:08d}_embeddings" / "kitchan.safetensors")["emb_params"] for s in (1, 2, 3)}
    vectors[4] = tensors(out / "kit_embeddings" / "kitchan.safetensors")["emb_params"]
    assert not torch.equal(vectors[1], vectors[2])  # trained for 2 steps
    assert torch.equal(vectors[2], vectors[3]) and torch.equal(vectors[3], vectors[4])  # then frozen
    lora = {s: tensors(out / f"kit-step{s:08d}.safetensors") for s in (2, 3)}
    assert not any(k.startswith("bundle_emb") for k in lora[2])
    assert any(not torch.equal(lora[2][k], lora[3][k]) for k in lora[2] if "lora_up" in k)  # the LoRA went on
    _, encoder = tiny_text_model(base)
    target = float(encoder.get_input_embeddings().weight.detach().norm(dim=1).median())
    assert torch.allclose(vectors[4].norm(dim=1), torch.full((3,), target), rtol=0.01)  # preserve_norm

    # export: A1111 gets them bundled; diffusers a clean LoRA and standalone embeddings
    a1111 = train_json("export", out / "kit.safetensors", "--for", "a1111")
    bundled = tensors(out / "export-a1111" / "kit.safetensors")
    assert a1111["embeddings"] == ["kitchan"]
    assert torch.equal(bundled["bundle_emb.kitchan.string_to_param.*"], vectors[4])
    train_json("export", out / "export-a1111" / "kit.safetensors", "--for", "diffusers", "--out", tmp_path / "d")
    comfy = train_json("export", out / "kit.safetensors", "--for", "comfyui", "--out", tmp_path / "c")
    assert sorted(i["path"] for i in comfy["items"]) == ["embeddings/kitchan.safetensors", "loras/kit.safetensors"]
    clean = tensors(tmp_path / "d" / "kit.safetensors")
    assert set(clean) == {k for k in bundled if not k.startswith("bundle_emb")}
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    with pytest.raises(ValueError, match="Invalid LoRA checkpoint"):  # why export exists: diffusers rejects bundled keys
        pipe.load_lora_weights(str(out / "export-a1111" / "kit.safetensors"))
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(tmp_path / "d" / "kit.safetensors"))
    pipe.load_textual_inversion(str(tmp_path / "d" / "kit_embeddings" / "kitchan.safetensors"), token="kitchan")
    train("export", out / "kit.safetensors", "--for", "a1111", "--out", out, check=2)  # never over the source


def test_sdxl_bundled_embedding_with_a_unet_lora_and_standalone_clip_l_clip_g(tmp_path, base_xl):
    cfg = train_config(tmp_path, base_xl, "xl", EMB)
    result = train_json("run", cfg, "--set", 'model.family="auto"', "--set", "training.max_steps=2",
                      "--set", "network.train_text_encoder=false", "--set", "saving.every_n_epochs=0")
    assert result["step"] == 2
    out = tmp_path / "xl" / "out"
    saved = tensors(out / "kit.safetensors")
    assert saved["bundle_emb.kitchan.clip_l"].shape == (3, 32) and saved["bundle_emb.kitchan.clip_g"].shape == (3, 32)
    assert not any(k.startswith("lora_te") for k in saved)  # the UNet LoRA only
    info = train_json("embedding", "inspect", out / "kit.safetensors")
    assert info["embeddings"][0]["kind"] == "bundled in a LoRA"
    assert set(info["embeddings"][0]["encoders"]) == {"clip_l", "clip_g"}
    train_json("export", out / "kit.safetensors", "--for", "diffusers")
    standalone = tensors(out / "export-diffusers" / "kit_embeddings" / "kitchan.safetensors")
    assert set(standalone) == {"clip_l", "clip_g"}
    assert torch.equal(standalone["clip_g"], saved["bundle_emb.kitchan.clip_g"])
    from diffusers import StableDiffusionXLPipeline
    pipe = StableDiffusionXLPipeline.from_pretrained(base_xl)
    pipe.load_lora_weights(str(out / "export-diffusers" / "kit.safetensors"))
    pipe.load_textual_inversion(standalone["clip_l"], token="kitchan", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(standalone["clip_g"], token="kitchan", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    assert pipe.maybe_convert_prompt("kitchan", pipe.tokenizer_2) == "kitchan kitchan_1 kitchan_2"


def test_sdxl_embedding_only_run_touches_no_weight(tmp_path, base_xl):
    from lorakit.train.config_toml import load
    from lorakit.train.loop import train
    from lorakit.train.setup import setup

    cfg = load(train_config(tmp_path, base_xl, "xlti", EMB), [
        'model.family="auto"', 'network.module="none"', "training.max_steps=2", "saving.every_n_epochs=0"])
    before = {}

    def inspect(models, network, embeddings):
        embeddings.detach()
        for i, encoder in enumerate(models.text_encoders):
            for key, value in encoder.state_dict().items():
                before[f"{i}.{key}"] = value.clone()
    run = setup(cfg, log=lambda line: None)
    train(run)
    inspect(run.models, run.network, run.embeddings)
    from lorakit.train.models import load_models
    fresh = load_models(cfg)
    for i, encoder in enumerate(fresh.text_encoders):
        for key, value in encoder.state_dict().items():
            assert torch.equal(before[f"{i}.{key}"], value), key
    saved = tensors(Path(cfg.output.dir) / "kitchan.safetensors")
    assert set(saved) == {"clip_l", "clip_g"} and saved["clip_l"].shape == (3, 32)


def test_token_budget_and_missing_placeholder_warnings(tmp_path, base):
    extra = '''
[[embeddings]]
placeholder = "kitchan"
token_count = 70
[[embeddings]]
placeholder = "nowhere"
'''
    proc = train("run", train_config(tmp_path, base, "long", extra), "--set", "training.max_steps=1",
               "--set", 'network.module="none"', "--set", "saving.every_n_epochs=0")
    assert "past data.max_token_length = 75 tokens" in proc.stderr and "embeddings' 71 vectors" in proc.stderr
    assert "'nowhere' is in none of the captions" in proc.stderr


def test_ti_preset_takes_the_folder_trigger_and_plans(tmp_path, base):
    from conftest import tiny_dataset

    root = tiny_dataset(tmp_path)
    text = train("init", "--preset", "ti", "--image-root", root, "--base", base).stdout
    assert '\n[[embeddings]]\nplaceholder = "kitchan"' in text and 'module = "none"' in text
    config = tmp_path / "ti.toml"
    config.write_text(text)
    plan = train_json("plan", config)
    assert plan["sections"]["embeddings"] == [{"embedding": "kitchan", "placeholder": "kitchan", "vectors": 4,
                                               "captions with it": "template", "trains until step": "the end"}]
    assert plan["sections"]["schedule"]  # the A1111 schedule string plans like a number
    missing = train_json("plan", config, "--set", 'data.template=""', "--set",
                       'embeddings=[{placeholder = "zz", token_count = 70}]')
    assert any("'zz': the placeholder is in none of the captions" in w for w in missing["warnings"])
    assert any("past data.max_token_length = 75 tokens with the embeddings' vectors" in w for w in missing["warnings"])


def test_embedding_config_errors(tmp_path, base):
    from safetensors.torch import save_file

    from lorakit.train.config import EmbeddingConfig
    from lorakit.train.embeddings import Embeddings

    proc = train("run", train_config(tmp_path, base, "none", ""), "--set", 'network.module="none"', check=2)
    assert "nothing to train" in proc.stderr
    with pytest.raises(UserError, match="a second embedding named 'kitchan'"):
        Embeddings.build([EmbeddingConfig(placeholder="kitchan")] * 2, *[[m] for m in tiny_text_model(base)])
    with pytest.raises(UserError, match="placeholder is empty"):
        Embeddings.build([EmbeddingConfig()], *[[m] for m in tiny_text_model(base)])
    save_file({"emb_params": torch.zeros(2, 768)}, str(tmp_path / "sd1.safetensors"))
    save_file({"clip_l": torch.zeros(2, 32), "clip_g": torch.zeros(2, 32)}, str(tmp_path / "xl.safetensors"))
    for file, message in (("sd1.safetensors", "dimension 768"), ("xl.safetensors", "not for this model"),
                          ("none.pt", "no such file")):
        with pytest.raises(UserError, match=message):
            Embeddings.build([EmbeddingConfig(placeholder="k", base_embedding=str(tmp_path / file))],
                             *[[m] for m in tiny_text_model(base)])


def test_sdxl_embedding_rate_per_encoder(tmp_path, base_xl, base):
    """clip_l at rate 0 stays where it started while clip_g trains; on a one-encoder model
    clip_g_learning_rate is refused (plan and run), not ignored."""
    from lorakit.train.config_toml import load
    from lorakit.train.loop import train as train_loop
    from lorakit.train.setup import setup

    rates = EMB + "clip_l_learning_rate = 0.0\nclip_g_learning_rate = 0.05\n"
    cfg = load(train_config(tmp_path, base_xl, "rates", rates), [
        'model.family="auto"', 'network.module="none"', "training.max_steps=2", "saving.every_n_epochs=0"])
    run = setup(cfg, log=lambda line: None)
    item = run.embeddings.items[0]
    start = [v.detach().clone() for v in item.vectors]
    assert [g["lr"] for g in run.optimizer.param_groups] == [0.0, 0.05]
    train_loop(run)
    assert torch.equal(item.vectors[0].detach(), start[0])
    assert not torch.allclose(item.vectors[1].detach(), start[1])

    one_encoder = train_config(tmp_path, base, "sd1rates", EMB + "clip_g_learning_rate = 0.05\n")
    for command in ("plan", "run"):
        assert "clip_g_learning_rate is for SDXL" in " ".join(train(command, one_encoder, check=2).stderr.split())
