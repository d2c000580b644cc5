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
