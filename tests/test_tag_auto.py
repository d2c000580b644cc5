"""tag auto, end to end through the CLI, with the stand-in ONNX taggers the tests build (same
tensor names and layout as the real models; outputs that depend on where and which colour the
pixels are, so channel-order, padding and alpha mistakes fail)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import by_path, run, run_json
from make_demo_tagger import write_tagger
from PIL import Image

from lorakit.tagging.compose import Thresholds, mcut, select
from lorakit.tagging.inference import prepare
from lorakit.tagging.models import TagInfo


def images(root: Path) -> Path:
    folder = root / "10_kitchan"
    folder.mkdir(parents=True)
    tall = Image.new("RGB", (200, 400), (255, 255, 255))
    tall.paste((255, 0, 0), (0, 0, 200, 200))  # red top half
    tall.save(folder / "tall_red.png")
    wide = Image.new("RGBA", (400, 200), (0, 0, 0, 0))  # transparent, blue in the middle
    wide.paste((0, 0, 255, 255), (100, 0, 300, 200))
    wide.save(folder / "wide_clear.png")
    green = Image.new("RGB", (300, 300), (255, 255, 255))
    green.paste((0, 200, 0), (0, 0, 150, 150))
    green.save(folder / "green.jpg")
    return root


def caption(root, rel) -> str:
    return (root / rel).with_suffix(".txt").read_text(encoding="utf-8").strip()


@pytest.fixture(scope="module")
def taggers(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("taggers")
    write_tagger(root / "danbooru", "danbooru")
    write_tagger(root / "e621", "e621")
    write_tagger(root / "batch1", "danbooru", fixed_batch=1)
    return root


def test_prepare_pads_white_and_gives_bgr():
    img = Image.new("RGB", (100, 200), (255, 0, 0))
    arr = prepare(img, 448)
    assert arr.shape == (448, 448, 3) and arr.dtype == np.float32
    assert tuple(arr[224, 0]) == (255, 255, 255)  # left padding is white
    assert tuple(arr[224, 224]) == (0, 0, 255)  # red, in BGR order
    clear = Image.new("RGBA", (448, 448), (0, 0, 0, 0))
    assert tuple(prepare(clear, 448)[10, 10]) == (255, 255, 255)  # alpha over white


def test_thresholds_and_mcut():
    info = TagInfo(("general", "sensitive", "a", "b", "c", "char"), (9, 9, 0, 0, 0, 4))
    probs = np.array([0.9, 0.1, 0.8, 0.5, 0.3, 0.9])
    found = select(probs, info, Thresholds(0.35, 0.85))
    assert [n for n, _ in found.general] == ["a", "b"] and found.rating == "general"
    assert [n for n, _ in found.characters] == ["char"]
    assert mcut(np.array([0.9, 0.8, 0.2, 0.1])) == pytest.approx(0.5)
    # general probabilities 0.8, 0.5, 0.3: the largest gap is 0.8-0.5, so the cut is 0.65
    assert [n for n, _ in select(probs, info, Thresholds(mcut=True)).general] == ["a"]


def test_danbooru_tagging_sees_channels_padding_and_alpha(tmp_path, taggers):
    root = images(tmp_path / "data")
    report = run_json("tag", "auto", root, "--model-dir", taggers / "danbooru")
    assert report["counts"] == {"created": 3}
    assert "DEMO MODEL" in " ".join(report["notes"])
    tall = caption(root, "10_kitchan/tall_red.png")
    assert tall == "kitchan, red hair, very long hair, white background"  # long hair pruned
    wide = caption(root, "10_kitchan/wide_clear.png").split(", ")
    assert "blue hair" in wide and "white background" in wide and "red hair" not in wide
    assert "black background" not in wide  # transparency went over white, not black
    assert "kitchan (lorakit)" in caption(root, "10_kitchan/green.jpg")
    assert (root / "10_kitchan" / ".lorakit-tags.npz").is_file()


def test_e621_vocabulary_and_tags_selected_layout(tmp_path, taggers):
    root = images(tmp_path / "data")
    run("tag", "auto", root, "--vocab", "e621", "--model-dir", taggers / "e621", "--rating", "last")
    assert caption(root, "10_kitchan/tall_red.png") == "kitchan, red body, red fox, white background, safe"


def test_fixed_batch_one_export_with_bigger_batches(tmp_path, taggers):
    root = images(tmp_path / "data")
    run("tag", "auto", root, "--model-dir", taggers / "batch1", "--batch", "4", "--workers", "2")
    assert caption(root, "10_kitchan/tall_red.png") == "kitchan, red hair, very long hair, white background"


def test_writing_options(tmp_path, taggers):
    root = images(tmp_path / "data")
    run("tag", "auto", root, "--model-dir", taggers / "danbooru", "--trigger", "kit", "--class", "1girl",
        "--undesired", "white_background", "--always-first", "very long hair", "--replace",
        "red_hair,crimson hair", "--rating", "first", "--keep-implied", "--underscores")
    assert caption(root, "10_kitchan/tall_red.png") == \
        "kit, 1girl, very_long_hair, general, long_hair, crimson_hair"  # by confidence
    run("tag", "auto", root, "--model-dir", taggers / "danbooru", "--character-first", "--escape")
    assert caption(root, "10_kitchan/green.jpg").startswith("kitchan, kitchan \\(lorakit\\)")


def test_modes_keep_or_merge_hand_written_tags(tmp_path, taggers):
    root = images(tmp_path / "data")
    cap = root / "10_kitchan" / "tall_red.txt"
    cap.write_text("kitchan, standing, red hair\n", encoding="utf-8")
    run("tag", "auto", root, "--model-dir", taggers / "danbooru", "--mode", "skip")
    assert caption(root, "10_kitchan/tall_red.png") == "kitchan, standing, red hair"
    assert (root / "10_kitchan" / "green.txt").exists()  # no caption yet: tagged
    run("tag", "auto", root, "--model-dir", taggers / "danbooru", "--mode", "merge")
    assert caption(root, "10_kitchan/tall_red.png") == \
        "kitchan, standing, red hair, very long hair, white background"
    cap.write_text("old tag\n", encoding="utf-8")
    run("tag", "auto", root, "--model-dir", taggers / "danbooru", "--mode", "append")
    assert caption(root, "10_kitchan/tall_red.png") == \
        "kitchan, old tag, red hair, very long hair, white background"
    run("tag", "undo", root)
    assert caption(root, "10_kitchan/tall_red.png") == "old tag"


def test_rethreshold_without_the_model(tmp_path, taggers):
    root = images(tmp_path / "data")
    model = tmp_path / "model"
    shutil.copytree(taggers / "danbooru", model)
    run("tag", "auto", root, "--model-dir", model, "--keep-implied")
    assert "long hair" in caption(root, "10_kitchan/tall_red.png")
    shutil.rmtree(model)
    run("tag", "auto", root, "--rethreshold", "--general", "0.995", "--keep-implied")
    strict = caption(root, "10_kitchan/tall_red.png").split(", ")
    assert strict == ["kitchan", "long hair"]  # only the most certain tag (p 0.996) is left
    run("tag", "auto", root, "--rethreshold", "--general", "0.35")
    assert caption(root, "10_kitchan/tall_red.png") == "kitchan, red hair, very long hair, white background"


def test_bad_images_fail_alone(tmp_path, taggers):
    root = images(tmp_path / "data")
    (root / "10_kitchan" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report = run_json("tag", "auto", root, "--model-dir", taggers / "danbooru", check=1)
    items = by_path(report)
    assert items["10_kitchan/broken.png"]["status"] == "failed"
    assert items["10_kitchan/tall_red.txt"]["status"] == "created"


def test_int8_copy_is_made_once_and_used(tmp_path, taggers):
    root = images(tmp_path / "data")
    env = {"LORAKIT_CACHE": str(tmp_path / "cache")}
    report = run_json("tag", "auto", root, "--model-dir", taggers / "danbooru", "--precision", "int8", env=env)
    assert report["precision"] == "int8"
    copies = list((tmp_path / "cache" / "int8").glob("*.onnx"))
    assert len(copies) == 1
    assert caption(root, "10_kitchan/tall_red.png").startswith("kitchan, red hair")
    stamp = copies[0].stat().st_mtime_ns
    run("tag", "auto", root, "--model-dir", taggers / "danbooru", "--precision", "int8", env=env)
    assert copies[0].stat().st_mtime_ns == stamp  # reused, not remade


def test_named_model_from_the_hugging_face_cache_and_offline_error(tmp_path, taggers):
    root = images(tmp_path / "data")
    hf = tmp_path / "hf"
    env = {"HF_HOME": str(hf), "HF_HUB_OFFLINE": "1"}
    proc = run("tag", "auto", root, env=env, check=2)
    message = " ".join(proc.stderr.split())
    assert "SmilingWolf/wd-swinv2-tagger-v3" in message and "--model-dir" in message
    assert "model.onnx" in message and "selected_tags.csv" in message
    snapshot = hf / "hub" / "models--SmilingWolf--wd-swinv2-tagger-v3" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for name in ("model.onnx", "selected_tags.csv"):
        shutil.copy(taggers / "danbooru" / name, snapshot / name)
    refs = hf / "hub" / "models--SmilingWolf--wd-swinv2-tagger-v3" / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    report = run_json("tag", "auto", root, env=env)
    assert report["model"] == "wd-swinv2-v3"
    assert report["thresholds"]["general"] == pytest.approx(0.2653)


def test_missing_provider_is_a_clear_error(tmp_path, taggers):
    root = images(tmp_path / "data")
    proc = run("tag", "auto", root, "--model-dir", taggers / "danbooru", "--provider", "cuda", check=None)
    if proc.returncode == 0:
        pytest.skip("this onnxruntime has CUDA")
    assert proc.returncode == 2 and "CUDAExecutionProvider" in proc.stderr


def test_unreachable_hub_fails_at_once_and_reads_the_cache(tmp_path, taggers):
    """No HF_HUB_OFFLINE, and a hub that refuses connections: one refused connection is enough;
    huggingface_hub's five retries with back-off (and their "Retrying" lines) never start."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = images(tmp_path / "data")
    hf = tmp_path / "hf"
    env = {"HF_HOME": str(hf), "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    proc = run("tag", "auto", root, env=env, check=2)
    message = " ".join(proc.stderr.split())
    assert f"127.0.0.1:{port} cannot be reached" in message and "--model-dir" in message
    assert "Retry" not in proc.stderr and proc.stdout == ""
    snapshot = hf / "hub" / "models--SmilingWolf--wd-swinv2-tagger-v3" / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    for name in ("model.onnx", "selected_tags.csv"):
        shutil.copy(taggers / "danbooru" / name, snapshot / name)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("b" * 40)
    assert run_json("tag", "auto", root, env=env)["model"] == "wd-swinv2-v3"
