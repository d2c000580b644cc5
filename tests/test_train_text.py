"""Long captions (data.max_token_length = 150 / 225): 75-token chunks, each encoded in its own
77-token CLIP pass, joined without the inner start and end states (kohya's layout)."""

import numpy as np
import pytest
import torch
from conftest import train, train_config, train_json

from lorakit.train.config_toml import load
from lorakit.train.models import _ids, encode_text, load_models


@pytest.fixture(scope="module")
def sd15(base, tmp_path_factory):
    return load_models(load(train_config(tmp_path_factory.mktemp("t"), base, "text")))


@pytest.fixture(scope="module")
def sdxl(base_xl, tmp_path_factory):
    return load_models(load(train_config(tmp_path_factory.mktemp("t"), base_xl, "text")))


def _long_caption(tokenizer) -> tuple[str, str]:
    """A caption of 100 tokens, and its last 25 as text (the second chunk's content)."""
    words = ["red"] * 60 + ["smile"] * 40
    caption = " ".join(words)
    ids = tokenizer(caption, add_special_tokens=False).input_ids
    tail = tokenizer.decode(ids[75:]).strip()
    assert tokenizer(tail, add_special_tokens=False).input_ids == ids[75:]  # the split is clean
    return caption, tail


def test_chunk_ids(sd15):
    tok = sd15.tokenizers[0]
    ids = _ids(tok, ["red smile", " ".join(["red"] * 100)], 150)
    assert ids.shape == (2, 2, 77)
    assert (ids[:, :, 0] == tok.bos_token_id).all()  # every chunk opens with the start token
    assert (ids[:, :, -1] == tok.eos_token_id).all()
    assert ids[0, 1, 1] == tok.eos_token_id  # the short caption's second chunk is empty
    assert (ids[1, 1, 1:26] == ids[1, 0, 1]).all() and ids[1, 1, 26] == tok.eos_token_id


def test_long_caption_states_are_the_chunks_states(sd15):
    caption, tail = _long_caption(sd15.tokenizers[0])
    with torch.no_grad():
        long, _ = encode_text(sd15, [caption, "red smile"], 1, 150)
        first, _ = encode_text(sd15, [caption, "red smile"], 1, 75)
        second, _ = encode_text(sd15, [tail], 1, 75)
        skipped, _ = encode_text(sd15, [caption], 2, 225)
        empty, _ = encode_text(sd15, [""], 1, 75)
    assert long.shape == (2, 152, first.shape[-1]) and skipped.shape == (1, 227, first.shape[-1])
    # chunk 1 is the 75-token encoding (start token and 75 tokens); chunk 2 the tail's own encoding
    assert torch.allclose(long[:, :76], first[:, :76], atol=1e-5)
    assert torch.allclose(long[:1, 76:76 + 25], second[:, 1:26], atol=1e-5)
    assert torch.allclose(long[1, -1], empty[0, -1], atol=1e-5)  # the short caption's row ends on an empty chunk's end
    assert not torch.allclose(long[0, 76:101], long[1, 76:101])  # the tail is not cut off


def test_sdxl_long_captions_and_pooled(sdxl):
    caption, tail = _long_caption(sdxl.tokenizers[0])
    with torch.no_grad():
        long, pooled = encode_text(sdxl, [caption], 1, 150)
        first, pooled_75 = encode_text(sdxl, [caption], 1, 75)
        second, _ = encode_text(sdxl, [tail], 1, 75)
    assert long.shape == (1, 152, first.shape[-1])
    assert torch.allclose(long[:, :76], first[:, :76], atol=1e-5)
    assert torch.allclose(long[:, 76:101], second[:, 1:26], atol=1e-5)
    assert torch.allclose(pooled, pooled_75, atol=1e-6)  # pooled from the first chunk, as kohya does


def test_run_with_225_tokens_and_the_plan_warning(tmp_path, base):
    cfg = train_config(tmp_path, base, "long")
    captions = sorted((tmp_path / "long" / "dataset" / "2_kitchan").glob("*.txt"))
    captions[0].write_text("kitchan, " + " ".join(["red"] * 160))
    plan = train_json("plan", cfg)
    assert any("1 captions are past data.max_token_length = 75 tokens" in w and "150 or 225" in w
               for w in plan["warnings"])
    assert not any("max_token_length" in w for w in train_json("plan", cfg, "--set", "data.max_token_length=225")["warnings"])
    proc = train("run", cfg, "--set", "training.max_steps=1", "--set", "saving.every_n_epochs=0", "--set",
                 "saving.save_state=false")
    assert "1 prompts are past data.max_token_length = 75 tokens" in proc.stderr
    result = train_json("run", cfg, "--set", "data.max_token_length=225", "--set", "training.max_steps=2")
    assert result["step"] == 2 and all(np.isfinite(result["losses"]))


def test_chunk_ids_with_a_separate_pad_token(base):
    """SD2's and SDXL's second tokenizer pad with "!": a full chunk still closes with an end
    token, and a chunk past the caption opens with one (kohya's fix-ups)."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", model_max_length=77, pad_token="red")
    assert tok.pad_token_id != tok.eos_token_id
    ids = _ids(tok, ["smile", " ".join(["smile"] * 100)], 150)
    short, long = ids[0], ids[1]
    assert short[1, 1] == tok.eos_token_id and (short[1, 2:] == tok.pad_token_id).all()
    assert long[0, -1] == tok.eos_token_id  # was a pad: the chunk is all caption
    assert long[0, -2] != tok.pad_token_id


def test_attention_choice(base, tmp_path):
    """sdpa and math attention give the same prediction; xformers is refused with what to install
    when it is missing, never ignored."""
    from lorakit.train.models import set_attention

    models = load_models(load(train_config(tmp_path, base, "attn")))
    latents, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    outputs = {}
    for kind in ("sdpa", "math"):
        set_attention(models.unet, kind)
        processors = {type(p).__name__ for p in models.unet.attn_processors.values()}
        assert processors == {"AttnProcessor2_0" if kind == "sdpa" else "AttnProcessor"}
        with torch.no_grad():
            outputs[kind] = models.unet(latents, torch.tensor([500]), text).sample
    assert torch.allclose(outputs["sdpa"], outputs["math"], atol=1e-5)
    try:
        import xformers  # noqa: F401
    except ImportError:
        proc = train("run", train_config(tmp_path, base, "x"), "--set", 'training.attention="xformers"', check=2)
        assert "needs the xformers package" in proc.stderr


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_sample_prompts_as_long_as_captions(request, tmp_path, family):
    """The pipelines cut prompts at 75 tokens; with max_token_length 150 samples read the rest."""
    from dataclasses import replace

    from lorakit.train.sampling import generate, parse_prompt

    models = request.getfixturevalue(family)
    tokenizer, words = models.tokenizers[0], ["red"]
    while len(tokenizer(" ".join(words), add_special_tokens=False).input_ids) < 90:
        words.append("red")
    assert len(tokenizer(" ".join(words) + " smile smile", add_special_tokens=False).input_ids) < 150
    caption = " ".join(words)
    prompts = [parse_prompt(f"{caption} {end} --w 64 --h 64 --s 2 --d 1") for end in ("red", "smile smile")]
    cfg = load(train_config(tmp_path, tmp_path, "s"))  # only its data and sampling settings are read

    def images(max_tokens: int) -> list[np.ndarray]:
        config = replace(cfg, data=replace(cfg.data, max_token_length=max_tokens))
        return [np.asarray(image, dtype=np.int16) for _, image, _ in generate(models, config, prompts)]

    cut, read = images(75), images(150)
    assert (cut[0] == cut[1]).all()  # the endings lie past token 75: cut off, as before
    assert (read[0] != read[1]).any()  # now they change the image
    # the first prompt's start is the same either way: the long encoding begins with the short one
    assert np.abs(read[0] - cut[0]).mean() < 20
