"""Every check that needs no model runs in `train plan` and before `train run` loads one: each
case below used to pass plan and stop run only after its model loaded."""

import pytest
from conftest import train
from PIL import Image


def _config(tmp_path, text: str) -> str:
    folder = tmp_path / "data" / "2_kit"
    folder.mkdir(parents=True)
    for k in range(3):
        Image.new("RGB", (64, 64), (k * 50, 40, 90)).save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text("kit, smile\n")
    path = tmp_path / "lora.toml"
    path.write_text(f'[model]\nbase = "{tmp_path / "no-such-model"}"\n'
                    f'[data]\nimage_root = "{tmp_path / "data"}"\nresolution = 64\nmin_bucket_reso = 64\n{text}')
    return path


CASES = [
    ("cache_text_encoder_outputs = true\nshuffle_caption = true\n", "needs fixed captions and frozen text encoders"),
    ("random_crop = true\n", "so their latents cannot be cached"),
    ("cache_latents = false\ncache_latents_to_disk = true\n", "it needs data.cache_latents = true"),
    ("[network]\ntrain_unet = false\ntrain_text_encoder = false\n", "nothing to train"),
    ('[network]\nweights = "prev.safetensors"\ndim_from_weights = true\nargs = {block_dims = "4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4"}\n',
     "use one or the other"),
    ('[network]\nargs = {mid_lr_weight = 0.5}\n[optimizer]\nlearning_rate = "1e-4:10, 1e-5"\n', "has none to multiply"),
    ("[optimizer]\nargs = {bogus = 1}\n", "optimizer.args do not fit adamw"),
]


@pytest.mark.parametrize("text,said", CASES)
def test_plan_refuses_and_run_refuses_before_the_model_loads(tmp_path, text, said):
    path = _config(tmp_path, text)
    (tmp_path / "prev.safetensors").write_bytes(b"")  # read only once a model has loaded
    planned = train("plan", path, check=2)
    assert said in planned.stderr
    ran = train("run", path, "--set", f"output.dir=\"{tmp_path / 'out'}\"", check=2)
    assert said in ran.stderr and "cannot load the model" not in ran.stderr


@pytest.mark.parametrize("text,said", [
    ("[optimizer]\nbetas = [0.9, 0.99, 0.999]\n", "two numbers"),
    ('[network]\nargs = {dora_wd = "false"}\n', "true or false, not text"),  # "false" read as true: DoRA on
    ("[training]\nmax_steps = 100000000\n", "more than lorakit plans"),
    ('[training]\nmixed_precision = "fp16"\nweights_dtype = "fp16"\n[optimizer]\nargs = {eps = 0}\n', "is 0 in fp16"),
])
def test_plan_refuses_what_would_fail_or_mislead_later(tmp_path, text, said):
    assert said in train("plan", _config(tmp_path, text), check=2).stderr


def test_an_output_folder_that_is_a_file_is_refused_by_plan(tmp_path):
    (tmp_path / "afile").write_text("x")
    path = _config(tmp_path, f'[output]\nlog_dir = "{tmp_path / "afile"}"\n')
    assert "is a file, not a folder" in train("plan", path, check=2).stderr


def test_names_samples_and_families_that_would_fail_late_are_refused_early(tmp_path):
    from lorakit.errors import UserError
    from lorakit.train.kohya_gui import family
    from lorakit.train.sampling import parse_prompt

    path = _config(tmp_path, f'[output]\nname = "{"n" * 300}"\n')  # a save fails at its first write otherwise
    assert "at most 200 bytes" in train("plan", path, check=2).stderr
    with pytest.raises(UserError, match="width 100000 is outside"):
        parse_prompt("kit --w 100000 --h 64")
    assert family({"pretrained_model_name_or_path": "/models/FLUX.1-dev/transformer/x.safetensors"}, False)[0] == "Flux.1"
    assert family({"LoRA_type": "flux1"}, True)[0] == "Flux.1"
    assert family({"pretrained_model_name_or_path": "juggernautXL-flux-look.safetensors", "sdxl": True}, True) is None
