"""The trainer's config and input files under hostile or careless input (issue 20): a name is a
name, never a path; every number has its range, checked when the config loads (so by `train
plan`); a pickle base is refused at plan; a damaged tensor file is one `error:` line naming it.
Each test checks the files: hashes before and after, nothing written outside the folder."""

import json
import pickle
import struct

import pytest
import torch
from conftest import tiny_dataset, train, train_config, train_json, tree_digest
from safetensors.torch import save_file

from lorakit.train.config_toml import load
from lorakit.train.embedding_files import a1111_dict


def _one_error(proc, *expected: str) -> str:
    """Exit 2, and on stderr one `error:` line (no traceback) holding each of `expected`."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _plan_config(tmp_path, extra: str = ""):
    root = tiny_dataset(tmp_path)
    path = tmp_path / "lora.toml"
    path.write_text(f'[data]\nimage_root = "{root}"\nresolution = 64\nmin_bucket_reso = 64\nmax_bucket_reso = 128\n'
                    f'[output]\ndir = "{tmp_path / "out"}"\n{extra}')
    return path


def _victim(tmp_path):
    victim = tmp_path / "victim" / "model.safetensors"
    victim.parent.mkdir()
    victim.write_bytes(b"the user's own file, not the trainer's")
    return victim


@pytest.mark.parametrize("name", ["../victim/model", "ABSOLUTE", "sub/model", "sub\\model", "..", "a\u0000b", "",
                                  "C:model"])
def test_output_name_is_a_name_not_a_path(tmp_path, name):
    victim = _victim(tmp_path)
    name = str(victim.with_suffix("")) if name == "ABSOLUTE" else name
    config = _plan_config(tmp_path)
    before = tree_digest(tmp_path)
    proc = train("plan", config, "--set", f"output.name={json.dumps(name)}", check=None)
    _one_error(proc, str(config), "output.name = ", "must be a file name")
    assert tree_digest(tmp_path) == before


def test_run_refuses_an_output_name_outside_its_folder_before_writing(tmp_path, base):
    victim = _victim(tmp_path)
    config = train_config(tmp_path, base, "r")
    before = tree_digest(tmp_path)
    proc = train("run", config, "--set", 'output.name="../../victim/model"', check=None)
    _one_error(proc, "output.name = '../../victim/model': must be a file name, not a path")
    assert tree_digest(tmp_path) == before and not (tmp_path / "r" / "out").exists()
    assert victim.read_bytes() == b"the user's own file, not the trainer's"


def test_embedding_names_are_names(tmp_path):
    config = _plan_config(tmp_path, '[[embeddings]]\nplaceholder = "kitchan"\nname = "../victim/emb"\n')
    before = tree_digest(tmp_path)
    _one_error(train("plan", config, check=None), "embeddings[0].name = '../victim/emb': must be a file name")
    # a placeholder is a word of the captions; the file name made from it is always a plain name
    config = _plan_config(tmp_path / "p", '[[embeddings]]\nplaceholder = "../../victim/kitchan"\n')
    rows = train_json("plan", config)["sections"]["embeddings"]
    assert rows[0]["embedding"] == "victim_kitchan"
    assert {k: v for k, v in tree_digest(tmp_path).items() if not k.startswith("p/")} == before


def _lora(path):
    save_file({"lora_unet_x.lora_down.weight": torch.ones(1, 4), "lora_unet_x.lora_up.weight": torch.ones(4, 1),
               "lora_unet_x.alpha": torch.tensor(1.0)}, str(path))
    return path


def test_an_embedding_name_read_from_a_file_is_not_followed(tmp_path):
    """`train export` writes each embedding under the name its file holds: a path there would
    write outside the export folder."""
    victim = _victim(tmp_path)
    lora = _lora(tmp_path / "kit.safetensors")
    (tmp_path / "kit_embeddings").mkdir()
    evil = tmp_path / "kit_embeddings" / "kit.pt"
    torch.save(a1111_dict("../../victim/model", torch.ones(1, 768), 1, None), evil)
    before = tree_digest(tmp_path)
    _one_error(train("export", lora, "--for", "diffusers", check=None), str(evil), "'../../victim/model' is a path")
    _one_error(train("embedding", "inspect", evil, check=None), str(evil))
    assert tree_digest(tmp_path) == before and victim.read_bytes() == b"the user's own file, not the trainer's"


def test_import_kohya_reports_a_name_that_is_a_path_and_values_out_of_range(tmp_path):
    _victim(tmp_path)  # in the digests below: untouched
    kohya = tmp_path / "kohya.toml"
    kohya.write_text(f'[training_arguments]\noutput_name = "../victim/model"\noutput_dir = "{tmp_path / "o"}"\n'
                     'network_dim = 0\nlearning_rate = -1e-4\ntrain_batch_size = 2\n')
    out = tmp_path / "lora.toml"
    before = tree_digest(tmp_path)
    report = train_json("import", "kohya", kohya, "--out", out)
    skipped = report["not_mapped"]
    assert skipped["output_name"] == "not mapped: output.name = '../victim/model': must be a file name, not a path"
    assert skipped["network_dim"] == "not mapped: network.dim = 0: must be at least 1"
    assert skipped["learning_rate"] == "not mapped: optimizer.learning_rate = -0.0001: must be at least 0"
    config = load(out)
    assert (config.output.name, config.network.dim, config.data.batch_size) == ("lora", 32, 2)  # defaults, the rest
    assert {k: v for k, v in tree_digest(tmp_path).items() if k != "lora.toml"} == before


BAD_VALUES = [
    ("network.dim=0", "network.dim = 0: must be at least 1"),
    ("network.dim=-8", "network.dim = -8: must be at least 1"),
    ("network.alpha=-1", "network.alpha = -1.0: must be above 0"),
    ("network.dropout=1.5", "network.dropout = 1.5: must be at least 0 and below 1"),
    ("data.resolution=0", "data.resolution = 0: must be at least 64"),
    ("data.resolution=[512,512,512]",
     "data.resolution = [512, 512, 512]: must be one number (a square) or [width, height]"),
    ("data.resolution=[1,2,3]", "data.resolution[0] = 1: must be at least 64"),
    ("data.batch_size=0", "data.batch_size = 0: must be at least 1"),
    ("training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps = 0: must be at least 1"),
    ("data.bucket_reso_steps=0", "data.bucket_reso_steps = 0: must be at least 8"),
    ("training.max_steps=-1", "training.max_steps = -1: must be at least 1"),
    ("training.max_epochs=0", "training.max_epochs = 0: must be at least 1"),
    ("optimizer.learning_rate=-1e-4", "optimizer.learning_rate = -0.0001: must be at least 0"),
    ('optimizer.learning_rate="-1e-3:10, 1e-4"',
     "optimizer.learning_rate = '-1e-3:10, 1e-4': its rate -0.001 must be at least 0"),
    ("optimizer.learning_rate=nan", "optimizer.learning_rate = nan: must be a finite number"),
    ("network.unet_lr=-1", "network.unet_lr = -1.0: must be at least 0"),
    ("network.text_encoder_lr=-1", "network.text_encoder_lr = -1.0: must be at least 0"),
    ("data.max_bucket_reso=64", "data.max_bucket_reso = 64 is below min_bucket_reso = 128"),
    ("saving.keep_last_n=-1", "saving.keep_last_n = -1: must be at least 0"),
    ('output.name=""', "output.name = '': must be a file name, not empty"),
    ("data.num_workers=-1", "data.num_workers = -1: must be at least 0"),
    ("data.validation_split=1", "data.validation_split = 1.0: must be at least 0 and below 1"),
    ("optimizer.betas=[0.9,1.0]", "optimizer.betas[1] = 1.0: must be at least 0 and below 1"),
    ("loss.max_grad_norm=-1", "loss.max_grad_norm = -1.0: must be at least 0"),
    ('output.name="a\\nb"', "output.name = 'a\\nb': must be a file name without control characters"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES, ids=[o.split("=")[0] + "=" for o, _ in BAD_VALUES])
def test_plan_refuses_a_value_out_of_its_range(tmp_path, override, message):
    config = _plan_config(tmp_path)
    before = tree_digest(tmp_path)
    extra = ["--set", "data.min_bucket_reso=128"] if "max_bucket_reso" in override else []
    _one_error(train("plan", config, "--set", override, *extra, check=None), f"{config}: {message}")
    assert tree_digest(tmp_path) == before and not (tmp_path / "out").exists()


def test_a_dataset_tables_own_value_has_the_same_range(tmp_path):
    root = tiny_dataset(tmp_path)
    config = tmp_path / "lora.toml"
    config.write_text(f'[[datasets]]\nbatch_size = 0\n[[datasets.subsets]]\nimage_dir = "{root / "2_kitchan"}"\n')
    _one_error(train("plan", config, check=None), "datasets[0].batch_size = 0: must be at least 1")


def test_plan_says_a_ckpt_base_needs_allow_pickle_and_never_loads_it(tmp_path):
    ran = tmp_path / "the pickle ran"

    class Payload:
        def __reduce__(self):
            return open, (str(ran), "w")

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(pickle.dumps({"state_dict": Payload()}))
    config = _plan_config(tmp_path, f'[model]\nbase = "{ckpt}"\n')
    before = tree_digest(tmp_path)
    _one_error(train("plan", config, check=None), f"model.base {ckpt}: a .ckpt file is a pickle",
               "model.allow_pickle = true")
    train("plan", config, "--set", "model.allow_pickle=true")  # said at plan; plan itself never unpickles it
    assert not ran.exists() and tree_digest(tmp_path) == before


def _damaged(folder, kind: str):
    path = folder / f"{kind}.safetensors"
    header = json.dumps({"emb_params": {"dtype": "F32", "shape": [1, 768], "data_offsets": [0, 3072]}}).encode()
    path.write_bytes({
        "garbage": b"\x00\xff not a tensor file at all " * 8,
        "truncated": struct.pack("<Q", len(header)) + header[:20],  # the header cut short
        "huge": struct.pack("<Q", 2 ** 62) + b"{}",  # a header claiming exabytes
        "short": struct.pack("<Q", len(header)) + header + b"\0" * 100,  # offsets past the end
        "not-json": struct.pack("<Q", 8) + b"{{{{{{{{",
        "empty": b"",
    }[kind])
    return path


DAMAGED = ["garbage", "truncated", "huge", "short", "not-json", "empty"]


@pytest.mark.parametrize("kind", DAMAGED)
def test_embedding_inspect_on_a_damaged_safetensors(tmp_path, kind):
    path = _damaged(tmp_path, kind)
    before = tree_digest(tmp_path)
    _one_error(train("embedding", "inspect", path, check=None), f"{path}: not a readable .safetensors file")
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("command", [["inspect"], ["resize", "--dim", "2"], ["merge", "--out", "merged.safetensors"]])
@pytest.mark.parametrize("kind", ["garbage", "huge", "short"])
def test_lora_tools_on_a_damaged_safetensors(tmp_path, command, kind):
    path = _damaged(tmp_path, kind)
    args = [a if a != "merged.safetensors" else tmp_path / a for a in command[1:]]
    before = tree_digest(tmp_path)
    _one_error(train(command[0], path, *args, check=None), f"{path}: not a readable .safetensors file")
    assert tree_digest(tmp_path) == before


def test_embedding_inspect_on_a_bundle_key_without_a_name(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"bundle_emb.kit": torch.ones(1, 768)}, str(path))
    _one_error(train("embedding", "inspect", path, check=None), f"{path}: bundle_emb.kit is not a bundled embedding")


@pytest.mark.parametrize("kind", ["garbage.pt", "truncated.pt", "garbage.png", "broken-chunk.png"])
def test_embedding_inspect_on_a_damaged_pt_or_png(tmp_path, kind):
    path = tmp_path / kind
    if kind == "truncated.pt":
        torch.save(a1111_dict("kit", torch.ones(1, 768), 1, None), path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "broken-chunk.png":
        from PIL import Image, PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("sd-ti-embedding", "not base64 JSON!")
        Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    else:
        path.write_bytes(b"\x80\x04 garbage, not a pickle nor a PNG " * 4)
    before = tree_digest(tmp_path)
    _one_error(train("embedding", "inspect", path, check=None), f"{path}: ")
    assert tree_digest(tmp_path) == before
