"""The LoRA file tools beside the trainer: the model card a run writes and `train inspect`
shows, `train resize` (kohya's resize_lora) and `train merge`."""

from conftest import train, train_config, train_json
from safetensors import safe_open


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
