"""What kohya's users bring carries over: its caption_extension reads exactly that file."""

import json

from conftest import train, train_config, train_json

from lorakit.train.config_toml import load
from lorakit.train.data import load_items


def test_caption_extension_reads_only_its_own_files(tmp_path, base):
    config = train_config(tmp_path, base, "ext")
    folder = next((tmp_path / "ext" / "dataset").iterdir())
    images = sorted(p for p in folder.iterdir() if p.suffix == ".png")
    first, second = images[0], images[1]
    second.with_suffix(".txt").unlink()
    second.with_suffix(".caption").write_text("kitchan, from the caption file\n")
    first.with_suffix(".tags").write_text("kitchan, from the tags file\n")

    captions = {i.image.name: i.caption for i in load_items(load(config))}
    assert captions[second.name] == "kitchan"  # no .txt: the folder's class token, not the .caption
    report = train_json("plan", config)
    assert any("1 of them have a .caption caption" in w and "'.txt' does not read" in w for w in report["warnings"])

    captions = {i.image.name: i.caption for i in load_items(load(config, ['data.caption_extension=".caption"']))}
    assert captions[second.name] == "kitchan, from the caption file" and captions[first.name] == "kitchan"
    captions = {i.image.name: i.caption for i in load_items(load(config, ['data.caption_extension=".tags"']))}
    assert captions[first.name] == "kitchan, from the tags file"  # any extension kohya would read
    assert "a suffix with its dot" in train("plan", config, "--set", 'data.caption_extension="txt"', check=2).stderr


def test_network_weights_continue_a_file_with_or_without_its_ranks(tmp_path, base):
    """kohya's network_weights / dim_from_weights: the run starts from the file's modules (its
    change to the model is the file's), at the config's rank or at each module's own."""
    import torch

    from lorakit.train.lora_files import modules, read_lora
    from lorakit.train.setup import setup

    first = train_config(tmp_path, base, "first")
    train("run", first, "--set", "training.max_steps=2", "--set", "saving.every_n_epochs=0")
    trained = tmp_path / "first" / "out" / "kit.safetensors"
    train("resize", trained, "--dynamic", "sv_fro", "--dynamic-param", "0.7", "--dim", "4",
          "--out", tmp_path / "dyn.safetensors", "--precision", "fp32")
    for path, extra in ((trained, []), (tmp_path / "dyn.safetensors", ["network.dim_from_weights=true",
                                                                        "network.dim=16"])):
        file_modules = modules(read_lora(path)[0])
        config = load(train_config(tmp_path, base, f"c{len(extra)}"), [f'network.weights="{path}"', *extra])
        run = setup(config, log=lambda line: None)
        loaded = {lora.lora_name: lora for lora in run.network.loras}
        assert set(loaded) == set(file_modules)
        for name, module in file_modules.items():
            assert torch.allclose(loaded[name].delta_weight(), module.delta().reshape(loaded[name].delta_weight().shape),
                                  atol=1e-3 * float(module.delta().abs().max()) + 1e-7), name
        if extra:
            assert len({lora.rank for lora in run.network.loras}) > 1  # each module at its own rank
        run.latents.close()

    proc = train("run", train_config(tmp_path, base, "bad"), "--set", f'network.weights="{trained}"',
                 "--set", "network.dim=8", check=2)
    assert "set network.dim_from_weights = true" in " ".join(proc.stderr.split())
    assert "which is not set" in train("plan", first, "--set", "network.dim_from_weights=true", check=2).stderr
    assert "another layout" in train("plan", first, "--set", f'network.weights="{trained}"',
                                     "--set", 'network.module="loha"', check=2).stderr


KOHYA_DATASETS = '''
[model]
base = "{base}"
family = "sd1"
[training]
max_steps = 2
mixed_precision = "no"
[output]
dir = "{out}"

[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1

[[datasets]]
resolution = 64
batch_size = 2
keep_tokens = 2  # for every subset of this dataset

  [[datasets.subsets]]
  image_dir = "kit"
  num_repeats = 3
  class_tokens = "kitchan"
  flip_aug = true  # the symmetric subject only

  [[datasets.subsets]]
  image_dir = "reg"
  is_reg = true
  class_tokens = "girl"
  shuffle_caption = false
  caption_prefix = "photo, "

[[datasets]]
resolution = 64
enable_bucket = false

  [[datasets.subsets]]
  image_dir = "wide"
  num_repeats = 2
'''


def _kohya_dataset(tmp_path, base):
    from PIL import Image

    for name, size in (("kit", (64, 64)), ("reg", (64, 64)), ("wide", (128, 64))):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", size, (40 * i, 80, 120)).save(tmp_path / name / f"{i}.png")
            (tmp_path / name / f"{i}.txt").write_text(f"{name}, tag{i}, other{i}\n")
    path = tmp_path / "kohya.toml"
    path.write_text(KOHYA_DATASETS.format(base=base, out=tmp_path / "out"))
    return path


def test_kohya_dataset_config_with_per_subset_and_per_dataset_options(tmp_path, base):
    from lorakit.train.setup import setup

    path = _kohya_dataset(tmp_path, base)
    items = {f"{i.image.parent.name}/{i.image.name}": i for i in load_items(load(path))}
    kit, reg, wide = items["kit/0.png"], items["reg/0.png"], items["wide/0.png"]
    assert kit.augment.flip and not reg.augment.flip and not wide.augment.flip
    assert kit.captions.keep_tokens == 2 and reg.captions.keep_tokens == 2 and wide.captions.keep_tokens == 1
    assert kit.captions.shuffle and not reg.captions.shuffle and reg.captions.prefix == "photo, "
    assert wide.bucket == (64, 64) and kit.bucket == (64, 64)  # enable_bucket = false: the dataset's resolution

    report = train_json("plan", path)
    rows = {r["folder"]: r for r in report["sections"]["datasets"]}
    assert rows["kit"]["its own options"] == "keep_tokens = 2, flip_aug = true"
    assert rows["reg"]["its own options"] == "caption_prefix = 'photo, ', shuffle_caption = false, keep_tokens = 2"
    assert rows["wide"]["its own options"] == "enable_bucket = false"
    # kohya's count: dataset 1 has 2 x 3 training images and its reg images repeated to match
    # them (6 + 6, in batches of 2); dataset 2, 2 x 2 images at data.batch_size 1. Reg images
    # match their own dataset's training images (lorakit matched all datasets' before)
    assert report["steps_per_epoch"] == 6 + 4

    run = setup(load(path), log=lambda line: None)
    flipped = {run.items[i].image.parent.name for i, flip in run.latents.cache if flip}
    assert flipped == {"kit"}  # both orientations cached for the flipped subset only
    import random

    from lorakit.train.setup import prompt

    texts = {prompt(run, items_, random.Random(1), 0) for items_ in run.items if items_.image.parent.name == "reg"}
    # not shuffled; prefixed as kohya joins a prefix: with one space (its own space too: CLIP reads them alike)
    assert texts == {"photo,  reg, tag0, other0", "photo,  reg, tag1, other1"}
    run.latents.close()


def test_kohya_options_we_lack_are_refused_by_name(tmp_path, base):
    path = _kohya_dataset(tmp_path, base)
    text = path.read_text()
    path.write_text(text.replace('flip_aug = true', 'flip_aug = true\n  face_crop_aug_range = [2.0, 4.0]'))
    message = " ".join(train("plan", path, check=2).stderr.split())
    assert "face_crop_aug_range' (a kohya dataset option) is not supported: face detection is out of scope" in message
    path.write_text(text.replace('class_tokens = "kitchan"', 'class_tokens = "kitchan"\n  keep_tokenz = 1'))
    assert "did you mean 'datasets[0].subsets[0].keep_tokens'?" in " ".join(train("plan", path, check=2).stderr.split())


KOHYA_CONFIG = '''
[model_arguments]
pretrained_model_name_or_path = "{base}"
v2 = false

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 8
network_alpha = 4
network_args = ["conv_dim=4", "conv_alpha=1", "down_lr_weight=1,1,1,1,0,0,0,0,0,0,0,0"]
network_train_unet_only = true

[optimizer_arguments]
optimizer_type = "Prodigy"
learning_rate = 1.0
optimizer_args = ["decouple=True", "weight_decay=0.05", "betas=0.9,0.999", "use_bias_correction=True"]
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
lr_warmup_steps = 0.1

[training_arguments]
output_dir = "{out}"
output_name = "kitchan"
max_train_epochs = 4
max_train_steps = 1600
train_batch_size = 2
mixed_precision = "bf16"
save_precision = "float"
gradient_checkpointing = true
seed = 7
min_snr_gamma = 5
noise_offset = 0.05
sdpa = true
metadata_author = "Ada"
metadata_tags = "character, kitchan"
shiny_new_option = 3

[dataset_arguments]
dataset_config = "{dataset}"
'''


def test_import_kohya_training_config_reports_every_key(tmp_path, base):
    dataset = _kohya_dataset(tmp_path, base)
    data_only = tmp_path / "dataset.toml"  # kohya's dataset config: only its [general] and [[datasets]]
    text = dataset.read_text()
    data_only.write_text(text[text.index("[general]"):])
    config = tmp_path / "kohya_config.toml"
    config.write_text(KOHYA_CONFIG.format(base=base, out=tmp_path / "out", dataset=data_only))
    out = tmp_path / "imported" / "lora.toml"
    report = train_json("import", "kohya", config, "--out", out)
    assert report["mapped"]["network_dim"] == "network.dim" and report["mapped"]["metadata_author"] == "output.metadata.author"
    assert report["mapped"]["network_args down_lr_weight"].startswith("network.args.down_lr_weight")
    assert report["not_mapped"]["shiny_new_option"] == "not mapped: lorakit has no such option"
    assert "max_train_epochs wins" in report["dropped"]["max_train_steps"]
    assert report["datasets"] == 2

    loaded = load(out)
    n, o = loaded.network, loaded.optimizer
    assert (n.module, n.dim, n.alpha, n.conv_dim, n.conv_alpha, n.train_text_encoder) == ("locon", 8, 4.0, 4, 1.0, False)
    assert (o.type, o.learning_rate, o.weight_decay, o.betas) == ("prodigy", 1.0, 0.05, [0.9, 0.999])
    assert o.args == {"decouple": True, "use_bias_correction": True}
    assert n.args == {"down_lr_weight": "1,1,1,1,0,0,0,0,0,0,0,0"}
    assert loaded.scheduler.warmup_ratio == 0.1 and loaded.scheduler.cycles == 3
    assert loaded.training.max_epochs == 4 and loaded.training.max_steps is None
    assert (loaded.saving.precision, loaded.training.attention, loaded.loss.min_snr_gamma) == ("fp32", "sdpa", 5.0)
    assert loaded.output.metadata.tags == ["character", "kitchan"]
    assert loaded.datasets[0].subsets[0].flip_aug and loaded.data.keep_tokens == 1  # [general] -> data
    plan = train_json("plan", out)
    assert plan["steps_per_epoch"] == 6 + 2  # as above, but train_batch_size 2 now batches the second dataset
    assert "exists" in train("import", "kohya", config, "--out", out, check=2).stderr


def test_import_kohya_ss_json(tmp_path, base):
    folder = tmp_path / "img" / "5_kit"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (64, 64)).save(folder / "a.png")
    gui = {"pretrained_model_name_or_path": str(base), "LoRA_type": "LyCORIS/LoHa", "network_dim": 8,
           "network_alpha": 8, "train_data_dir": str(tmp_path / "img"), "epoch": 2, "max_resolution": "64,64",
           "optimizer": "AdamW8bit", "lr_warmup": 10, "learning_rate": 0.0001, "output_dir": str(tmp_path / "o"),
           "sample_sampler": "euler_a", "save_model_as": "safetensors", "network_args": "factor=4",
           "caption_extension": "txt", "wandb_api_key": "", "sdxl": False}
    config = tmp_path / "gui.json"
    config.write_text(json.dumps(gui))
    report = train_json("import", "kohya", config, "--out", tmp_path / "lora.toml")
    loaded = load(tmp_path / "lora.toml")
    assert (loaded.network.module, loaded.network.args, loaded.optimizer.type) == ("loha", {"factor": 4}, "adamw8bit")
    assert (loaded.data.resolution, loaded.scheduler.warmup_ratio, loaded.training.max_epochs) == (64, 0.1, 2)
    assert loaded.data.caption_extension == ".txt" and loaded.model.family == "auto"
    assert report["mapped"]["save_model_as"] == "lorakit writes .safetensors"
    assert "wandb_api_key" not in report["not_mapped"]  # empty: skipped


def _ranks(path):
    from lorakit.train.lora_files import modules, read_lora

    return {name: m.rank for name, m in modules(read_lora(path)[0]).items()}


def test_block_dims_and_alphas_by_kohyas_block_index(tmp_path, base, base_xl):
    """SD1: 25 blocks (down_blocks_0 is block 1, the mid block 12, up_blocks_1 starts at 16);
    SDXL: 23 (input_blocks_k is 1 + k, middle 10-12, output_blocks_k 13 + k)."""
    from lorakit.train.blocks import block_index

    dims = [4] * 25
    dims[1], dims[12], dims[16] = 2, 0, 6  # down_blocks_0 …_0, the mid block off, up_blocks_1 …_0
    alphas = [4.0] * 25
    alphas[16] = 3.0
    args = f'network.args={{block_dims = {dims}, block_alphas = {alphas}, conv_block_dims = {[1] * 25}}}'
    config = train_config(tmp_path, base, "blocks")
    train("run", config, "--set", args, "--set", "network.dim=8", "--set", "training.max_steps=1",
          "--set", "saving.every_n_epochs=0")
    ranks = _ranks(tmp_path / "blocks" / "out" / "kit.safetensors")
    from lorakit.train.lora_files import modules, read_lora

    found = modules(read_lora(tmp_path / "blocks" / "out" / "kit.safetensors")[0])
    for name, rank in ranks.items():
        block = block_index(name, False)
        conv = found[name].down.dim() == 4 and found[name].down.shape[2:] != (1, 1)
        expected = 8 if block < 0 else 1 if conv else dims[block]  # text encoder: network.dim
        assert rank == expected, name
    mid = {n: found[n].down.dim() == 4 and found[n].down.shape[2:] != (1, 1) for n in ranks if "mid_block" in n}
    assert mid and all(mid.values())  # block 12 at 0: only its 3x3 convolutions train (conv_block_dims 1)
    assert any(n.startswith("lora_unet_up_blocks_1_attentions_0") and found[n].alpha == 3.0 for n in ranks)

    xl_dims = [4] * 23
    xl_dims[5] = 2  # input_blocks_4
    xl = train_config(tmp_path, base_xl, "xl")
    train("run", xl, "--set", f"network.args={{block_dims = {xl_dims}}}", "--set", "training.max_steps=1",
          "--set", "saving.every_n_epochs=0", "--set", "network.train_text_encoder=false")
    xl_ranks = _ranks(tmp_path / "xl" / "out" / "kit.safetensors")
    assert {r for n, r in xl_ranks.items() if n.startswith("lora_unet_input_blocks_4_")} == {2}
    assert {r for n, r in xl_ranks.items() if n.startswith("lora_unet_output_blocks_")} == {4}
    xl_found = modules(read_lora(tmp_path / "xl" / "out" / "kit.safetensors")[0])
    assert not any(m.down.dim() == 4 and m.down.shape[2:] != (1, 1) for m in xl_found.values())  # no 3x3 convs

    message = " ".join(train("run", config, "--set", "network.args={block_dims = [4, 4]}", check=2).stderr.split())
    assert "block_dims has 2 values; SD1/SD2 has 25 blocks" in message


def test_block_learning_rate_weights(tmp_path, base):
    from lorakit.train.setup import setup

    down = [1.0] * 12
    down[1] = 0.0  # down_blocks_0 …_0: not trained
    up = [0.5] * 12
    config = load(train_config(tmp_path, base, "lr"), [f"network.args={{down_lr_weight = {down}, up_lr_weight = {up}, "
                                                        "mid_lr_weight = [0.25]}", "network.unet_lr=1e-3",
                                                        'network.module="locon"',
                                                        "network.text_encoder_lr=1e-4"])
    run = setup(config, log=lambda line: None)
    names = {m.lora_name for m in run.network.loras}
    assert not any(n.startswith("lora_unet_down_blocks_0_attentions_0") for n in names)
    assert any(n.startswith("lora_unet_down_blocks_1_") for n in names)  # its resnet (LoCon), block 4
    rates = sorted(g["lr"] for g in run.optimizer.param_groups)
    assert rates == sorted([1e-3, 5e-4, 2.5e-4, 1e-4])  # down 1, up 0.5, mid 0.25, then the text encoder
    run.latents.close()
    message = train("plan", train_config(tmp_path, base, "lr2"), "--set", "network.args={mid_lr_weight = [1, 1]}",
                    check=2).stderr
    assert "mid_lr_weight has 2 values; SD1/SD2 has 1" in " ".join(message.split())
    assert "named curves" in " ".join(train("run", train_config(tmp_path, base, "lr3"), "--set",
                                            'network.args={up_lr_weight = "sine"}', check=2).stderr.split())


def _apply_dora_as_the_uis_do(weight, down, up, alpha, dora_scale):
    """A1111's and ComfyUI's application of a LyCORIS-layout DoRA module (dora_scale [1, in]):
    W' = W + up·down·alpha/rank; W' · dora_scale / ||W'|| with the norm per input column."""

    rank = down.shape[0]
    delta = (up.flatten(1).float() @ down.flatten(1).float()).reshape(up.shape[0], *down.shape[1:]) * alpha / rank
    merged = weight.float() + delta
    norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
    norm = norm.reshape(merged.shape[1], *[1] * (merged.dim() - 1)).transpose(0, 1)
    return merged * (dora_scale.float() / norm)


def test_dora_with_lora_and_locon_in_the_layout_the_uis_apply(tmp_path, base):
    """dora_wd on LoRA/LoCon: the run trains the magnitudes too; the file holds NAME.dora_scale
    ([1, in], [1, in, 1, 1]) beside lora_down/up/alpha; the network's own forward equals the
    weights A1111 and ComfyUI would compute from the file."""
    import numpy as np
    import torch

    from lorakit.train.lora_files import modules, read_lora
    from lorakit.train.setup import setup

    config = load(train_config(tmp_path, base, "dora"), ['network.module="locon"', "network.conv_dim=2",
                                                        "network.args={dora_wd = true}", "training.max_steps=3",
                                                        "saving.every_n_epochs=0", 'saving.precision="fp32"'])
    run = setup(config, log=lambda line: None)
    unet = run.models.unet
    before = {m.lora_name: m._base[0].weight.detach().clone() for m in run.network.loras}
    with torch.no_grad():  # dora_scale starts at ||W|| and up at zero: the base model, exactly
        assert all(torch.allclose(m.merged_weight(), before[m.lora_name], atol=1e-6) for m in run.network.loras)
    from lorakit.train.loop import train as train_loop

    result = train_loop(run)
    assert np.isfinite(result["losses"]).all()
    path = tmp_path / "dora" / "out" / "kit.safetensors"
    found = modules(read_lora(path)[0])
    linear = next(m for n, m in found.items() if m.down.dim() == 2)
    conv = next(m for n, m in found.items() if m.down.dim() == 4 and m.down.shape[2:] == (3, 3))
    assert linear.dora_scale.shape == (1, linear.down.shape[1])
    assert conv.dora_scale.shape == (1, conv.down.shape[1], 1, 1)
    for lora in run.network.loras:
        m = found[lora.lora_name]
        start = before[lora.lora_name]
        theirs = _apply_dora_as_the_uis_do(start, m.down, m.up, m.alpha, m.dora_scale)
        with torch.no_grad():
            ours = lora.merged_weight()
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4), lora.lora_name
    from lorakit.train.network import column_norm

    assert any(not torch.allclose(m.dora_scale, column_norm(before[n].float())) for n, m in found.items())  # trained
    # and the running network is that weight: the UNet's output with our modules attached equals
    # the output with the file's weights merged in the UIs' way
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    run.network.eval()
    with torch.no_grad():
        attached = unet(sample, torch.tensor([500]), text).sample
        run.network.detach()
        for lora in run.network.loras:
            m = found[lora.lora_name]
            lora._base[0].weight.copy_(_apply_dora_as_the_uis_do(before[lora.lora_name], m.down, m.up, m.alpha,
                                                                 m.dora_scale))
        merged = unet(sample, torch.tensor([500]), text).sample
    assert torch.allclose(attached, merged, atol=1e-4)
    run.latents.close()

    from diffusers import StableDiffusionPipeline  # what the README says of diffusers, checked

    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(path))  # loads, with dora_scale filtered out (its own warning)
    assert "DoRA modules (dora_scale)" in train("inspect", path).stdout
    assert "diffusers drops its dora_scale" in " ".join(train("export", path, "--for", "diffusers", check=2).stderr.split())
    assert "a DoRA file" in train("resize", path, "--dim", "1", check=2).stderr
    message = " ".join(train("plan", train_config(tmp_path, base, "dd"), "--set", "network.args={dora_wd = true}",
                             "--set", "network.dropout=0.1", check=2).stderr.split())
    assert "DoRA (dora_wd) folds" in message
