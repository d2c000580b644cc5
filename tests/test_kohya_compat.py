"""What kohya's users bring carries over: its caption_extension reads exactly that file."""

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
