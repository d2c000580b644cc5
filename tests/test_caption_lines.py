"""Captions with several lines (train/caption_lines.py): kohya's enable_wildcard (a line per image
per epoch, {a|b} wildcards), sentences never cut at their commas, the caption recipe, and
`train plan --captions N` showing what the trainer reads."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from conftest import train, train_json
from PIL import Image

from lorakit.errors import UserError
from lorakit.train.caption_lines import Parts, choose_template, epoch_line, is_sentence, resolve_wildcards
from lorakit.train.clip_tokens import count, shipped_tokenizer
from lorakit.train.config_toml import load
from lorakit.train.data import Item, load_items, subsets
from lorakit.train.subset_options import CaptionOptions, caption_for_step, item_caption
from lorakit.train.validate import validate

LINES = ("kit, red, smile", "A cat, sitting on a red chair.", "Kit looking out of the window at night.")
RECIPE = (("{tags}", 0.4), ("{sentence}", 0.3), ("{tags}. {sentence}", 0.3))


def _item(lines=LINES, **options) -> Item:
    return Item(Path("/data/5_kit/a.png"), lines[0], (64, 64), 1, False,
                captions=CaptionOptions(**{"shuffle": False, **options}), lines=lines, token="kit")


def test_the_classifier_tells_sentences_from_tags():
    assert is_sentence("A cat, sitting on a red chair.") and is_sentence("What a day!")
    assert is_sentence("a photo of a red cat on a chair by the window")  # a piece of 10 words: prose
    assert is_sentence("A girl with red hair, blue eyes and a white dress, standing in a field, smiling.")
    # real tags: lower case, many end in ! or ., some have 5-9 words
    assert not is_sentence("honoka, 1girl, solo, smile, orange hair, blue eyes, love live!")
    assert not is_sentence("1boy, mario, super mario bros.") and not is_sentence("jojo no kimyou na bouken, 1boy")
    assert not is_sentence("Kit Chan, 1girl, smile, orange hair, k-on!")  # a capitalised trigger: still tags
    assert not is_sentence("1girl, long hair, looking at viewer, hand on another's shoulder")
    assert not is_sentence("1girl, surprised, !")  # "!" is a booru tag, not the end of a sentence
    assert not is_sentence("1girl, speech bubble, ...") and is_sentence("She smiles, waving.")
    assert not is_sentence("kit") and not is_sentence("")


def test_the_line_of_an_epoch_depends_only_on_seed_image_and_epoch():
    item = _item(wildcard=True)
    # another step's generator (another batch, a resumed run) never changes the epoch's line
    per_epoch = [{item_caption(item, 3, random.Random(step), epoch) for step in range(5)} for epoch in range(60)]
    assert all(len(texts) == 1 for texts in per_epoch)
    chosen = [texts.pop() for texts in per_epoch]
    assert chosen == [epoch_line(LINES, item.image, 3, epoch) for epoch in range(60)]
    assert set(chosen) == set(LINES)  # every line trains, in turn
    assert chosen != [epoch_line(LINES, item.image, 4, epoch) for epoch in range(60)]  # another seed, other choices
    other = Path("/data/5_kit/b.png")
    assert chosen != [epoch_line(LINES, other, 3, epoch) for epoch in range(60)]  # and another image
    moved = Path("/elsewhere/5_kit/a.png")  # a dataset moved between run and resume chooses the same
    assert chosen == [epoch_line(LINES, moved, 3, epoch) for epoch in range(60)]
    plain = _item()  # without enable_wildcard: line 1, every epoch
    assert {item_caption(plain, 3, random.Random(0), epoch) for epoch in range(20)} == {LINES[0]}


def test_wildcards_pick_an_option_per_step_and_double_braces_are_literal():
    text = "kit, {{retro style}}, {simple|white} background, {}"
    seen = {resolve_wildcards(text, random.Random(step)) for step in range(40)}
    assert seen == {"kit, {retro style}, simple background, {}", "kit, {retro style}, white background, {}"}
    assert resolve_wildcards("{{a|b}}", random.Random(0)) == "{a|b}"
    wild = CaptionOptions(shuffle=False, wildcard=True)
    assert caption_for_step("{red|red} hair", wild, random.Random(0), 0) == "red hair"
    # without enable_wildcard the braces are text, as kohya leaves them
    assert caption_for_step("{red|blue} hair", CaptionOptions(shuffle=False), random.Random(0), 0) == "{red|blue} hair"


def test_a_sentence_is_never_shuffled_or_cut_at_its_commas():
    sentence = "A cat, sitting on a red chair, in the morning sun."
    options = CaptionOptions(shuffle=True, keep_tokens=0, tag_dropout_rate=0.5, prefix="kit,")
    assert {caption_for_step(sentence, options, random.Random(step), 0) for step in range(30)} == {f"kit, {sentence}"}
    # the keep separator of a prefix is removed as tag processing would remove it
    sep = CaptionOptions(shuffle=True, keep_tokens_separator="|||", prefix="1girl, miku |||")
    assert caption_for_step(sentence, sep, random.Random(0), 0) == f"1girl, miku, {sentence}"
    # caption dropout still applies to a sentence
    assert caption_for_step(sentence, CaptionOptions(dropout_rate=0.999), random.Random(0), 0) == ""
    # a tag line still shuffles past the kept token, and kohya's second separator fixes a tail
    tags = {caption_for_step("kit, a, b, c, d", CaptionOptions(), random.Random(s), 0) for s in range(30)}
    assert len(tags) > 3 and all(t.startswith("kit, ") for t in tags)
    tail = CaptionOptions(keep_tokens_separator="|||")
    texts = {caption_for_step("kit ||| a, b, c ||| best, last", tail, random.Random(s), 0) for s in range(30)}
    assert len(texts) > 2 and all(t.startswith("kit, ") and t.endswith(", best, last") for t in texts)


def test_the_recipe_follows_its_weights_over_the_templates_an_image_can_fill():
    parts = Parts.of(LINES, "kit", Path("/data/5_kit/a.png"), 3, 0)
    drawn = Counter(choose_template(RECIPE, Parts.of(LINES, "kit", Path("/data/5_kit/a.png"), 3, e),
                                    Path("/data/5_kit/a.png"), 3, e) for e in range(3000))
    for template, weight in RECIPE:  # binomial sd at 3000 draws is under 0.01: 0.04 is over 4 sd
        assert abs(drawn[template] / 3000 - weight) < 0.04, drawn
    assert parts.tags == LINES[0] and parts.sentence in LINES[1:]
    # no sentence line: only {tags} is eligible, whatever its weight
    tags_only = Parts.of(LINES[:1], "kit", Path("a.png"), 3, 0)
    assert {choose_template(RECIPE, tags_only, Path("a.png"), 3, e) for e in range(50)} == {"{tags}"}
    # none eligible: the plain tag line trains
    assert item_caption(_item(LINES[:1], recipe=(("{sentence}", 1.0),)), 3, random.Random(0), 0) == LINES[0]
    item = _item(recipe=RECIPE, shuffle=True, prefix="sks")
    texts = [item_caption(item, 3, random.Random(e), e) for e in range(200)]
    assert all(t.startswith("sks ") for t in texts if not t.startswith(("A cat", "Kit looking")))
    assert any(t.endswith(" A cat, sitting on a red chair.") and ". " in t for t in texts)  # {tags}. {sentence}
    trig = _item(recipe=(("{trigger}, {sentence}", 1.0),))
    assert item_caption(trig, 3, random.Random(0), 0) in {f"kit, {s}" for s in LINES[1:]}


def _dataset(tmp_path: Path, captions: dict[str, str]) -> Path:
    folder = tmp_path / "dataset" / "3_kit"
    folder.mkdir(parents=True)
    for name, text in captions.items():
        Image.new("RGB", (64, 64)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(text)
    return folder.parent


def _config(tmp_path: Path, data: str = "", more: str = "") -> Path:
    root = _dataset(tmp_path, {"a": "\n".join(LINES) + "\n", "b": "kit, blue\n\nA dog, asleep on the floor.\n",
                               "long": ", ".join(f"tag{i}" for i in range(60)) + "\n"})
    path = tmp_path / "lora.toml"
    path.write_text(f'[data]\nimage_root = "{root}"\nresolution = 64\nmin_bucket_reso = 64\nmax_bucket_reso = 64\n'
                    f'shuffle_caption = false\n{data}\n[training]\nmax_epochs = 1\nseed = 3\n{more}')
    return path


def test_the_options_load_validate_and_refuse_what_cannot_work(tmp_path):
    path = _config(tmp_path, 'enable_wildcard = true\ncaption_recipe = [{template = "{tags}", weight = 0.4}, '
                             '{template = "{sentence}", weight = 0.6}]')
    items = {i.image.stem: i for i in load_items(load(path))}
    assert items["a"].lines == LINES and items["b"].lines == ("kit, blue", "A dog, asleep on the floor.")
    assert items["a"].captions.recipe == (("{tags}", 0.4), ("{sentence}", 0.6)) and items["a"].captions.wildcard
    assert load_items(load(_config(tmp_path / "plain")))[0].lines == ()  # line 1 only, as before
    for bad, said in (('[{template = "{tags} {mood}"}]', "names {mood}, which no caption has"),
                      ('[{template = "{tags}", weight = 0}]', "must be above 0"),
                      ('[{template = "plain words"}]', "names no part"),
                      ('[{template = "{tags"}]', "literal braces")):
        with pytest.raises(UserError, match=said):
            load(_config(tmp_path / str(len(bad)), f"caption_recipe = {bad}"))
    cached = load(_config(tmp_path / "c", "enable_wildcard = true\ncache_text_encoder_outputs = true\n"
                                          "[network]\ntrain_text_encoder = false"))
    with pytest.raises(UserError, match="data.enable_wildcard"):  # the texts vary by epoch: no cache
        validate(cached, subsets(cached))


def test_per_subset_options_and_kohya_dataset_tables(tmp_path):
    root = _dataset(tmp_path, {"a": "\n".join(LINES) + "\n"})
    path = tmp_path / "kohya.toml"
    path.write_text(f'[general]\nenable_wildcard = true\nshuffle_caption = false\n[[datasets]]\nresolution = 64\n'
                    f'  [[datasets.subsets]]\n  image_dir = "{root / "3_kit"}"\n'
                    f'  [[datasets.subsets]]\n  image_dir = "{root / "3_kit"}"\n  enable_wildcard = false\n'
                    f'  caption_recipe = [{{template = "{{sentence}}"}}]\n')
    first, second = load_items(load(path))
    assert first.captions.wildcard and first.lines == LINES
    assert not second.captions.wildcard and second.captions.recipe == (("{sentence}", 1.0),)
    assert {item_caption(second, 3, random.Random(0), e) for e in range(30)} == set(LINES[1:])


def test_kohya_import_maps_enable_wildcard(tmp_path):
    from lorakit.train.kohya_import import convert

    config = tmp_path / "kohya.toml"
    config.write_text('[dataset_arguments]\nenable_wildcard = true\nshuffle_caption = true\n')
    tree, _, rows = convert(config)
    assert tree["data"]["enable_wildcard"] is True
    assert ["enable_wildcard", "true", "data.enable_wildcard"] in rows
    gui = tmp_path / "gui.json"  # kohya_ss has no field for it: its additional_parameters pass the flag
    gui.write_text(json.dumps({"LoRA_type": "Standard", "additional_parameters": "--enable_wildcard"}))
    tree, _, rows = convert(gui)
    assert tree["data"]["enable_wildcard"] is True
    assert ["additional_parameters --enable_wildcard", "true", "data.enable_wildcard"] in rows
    (tmp_path / "off.toml").write_text('enable_wildcard = false\n')
    tree, _, rows = convert(tmp_path / "off.toml")
    assert "enable_wildcard" not in tree.get("data", {}) and rows[0][2].startswith("off")
    for odd in ('"on"', "2", "[true]"):  # kohya would read each as on: refused, not imported as off
        (tmp_path / "odd.toml").write_text(f"enable_wildcard = {odd}\n")
        with pytest.raises(UserError, match="not true or false"):
            convert(tmp_path / "odd.toml")


def test_hostile_names_weights_and_separators(tmp_path):
    from lorakit.train.caption_lines import recipe_problem
    from lorakit.train.config import RecipeTemplate

    # a file name that is not UTF-8 (its byte kept as a surrogate) still picks its line
    assert epoch_line(("a, b", "C d."), Path("10_x/img\udcff.png"), 0, 1) in ("a, b", "C d.")
    huge = [RecipeTemplate("{tags}", 1e308), RecipeTemplate("{trigger}", 1e308)]
    assert "add up" in recipe_problem(huge)
    assert "at most" in recipe_problem([RecipeTemplate("{tags}")] * 101)
    # a keep separator that is a word leaves the sentence's own words alone
    options = CaptionOptions(shuffle=True, keep_tokens_separator="the", prefix="kit the")
    sentence = "She sits on the chair by the window."
    assert caption_for_step(sentence, options, random.Random(0), 0) == "kit, She sits on the chair by the window."


def test_plan_shows_the_texts_of_the_first_steps_with_their_tokens(tmp_path):
    path = _config(tmp_path, "enable_wildcard = true", "gradient_accumulation_steps = 2")
    report = train_json("plan", path, "--captions", "1")
    rows = report["captions"]
    assert [r["step"] for r in rows] == [1, 1] and report["steps_per_epoch"] == 5  # 9 batches of 1, 2 a step
    tokenizer = shipped_tokenizer()
    items = {i.image.name: i for i in load_items(load(path))}
    for row in rows:
        assert row["tokens"] == count(tokenizer, row["text"])
        assert row["text"] in (items[row["image"].split("/")[1]].lines or ())
    everything = train_json("plan", path, "--captions", "9")["captions"]
    assert len(everything) == 9 and everything[:2] == rows  # the same draws, whatever N asks for
    texts = {(r["image"], r["text"]) for r in everything}
    assert ("3_kit/long.png", ", ".join(f"tag{i}" for i in range(60))) in texts  # line 1 only: one line
    def cut(found: dict) -> list[str]:
        return [w for w in found["warnings"] if "3_kit/long.png: 229 tokens, past data.max_token_length = 75" in w]
    assert len(cut(report)) == sum(r["image"] == "3_kit/long.png" for r in rows)
    assert len(cut(train_json("plan", path, "--captions", "9"))) == 3  # every text cut off is named
    shown = train("plan", path, "--captions", "2").stdout
    assert "captions of the first 2 steps of epoch 1" in shown and "tokens" in shown
    recipe = train_json("plan", path, "--set", 'data.caption_recipe=[{template = "<{trigger}> {sentence}"}]',
                        "--captions", "5")["captions"]
    assert {r["text"] for r in recipe if r["image"] == "3_kit/b.png"} == {"<kit> A dog, asleep on the floor."}


def test_the_review_page_says_what_trains_of_the_further_lines(tmp_path):
    from lorakit.review.trainer import TrainerView

    path = _config(tmp_path, "enable_wildcard = true")
    root = Path(load(path).data.image_root)
    view = TrainerView(root, load(path))
    shown = view.image("3_kit/a.png", 64, 64, "\n".join(LINES))
    assert shown["lines_rule"] == "one of these 3 lines per epoch" and len(shown["other_lines"]) == 2
    wild = view.image("3_kit/a.png", 64, 64, "kit, {red|blue}")
    assert wild["lines_rule"] == "this line, its {a|b} wildcards resolved at each step"
    recipe = TrainerView(root, load(path, ['data.caption_recipe=[{template = "{tags}", weight = 1}, '
                                           '{template = "{sentence}", weight = 3}]']))
    assert recipe.image("3_kit/a.png", 64, 64, "\n".join(LINES))["lines_rule"] == \
        "a caption recipe picks per epoch: {tags} (25%), {sentence} (75%)"
    assert TrainerView(root).image("3_kit/a.png", 64, 64, "\n".join(LINES))["lines_rule"] is None  # line 1 only


def test_plan_shows_the_template_line_and_the_embeddings_tokens(tmp_path):
    path = _config(tmp_path, 'template = "subject"', '[[embeddings]]\nplaceholder = "kit"\ntoken_count = 3\n')
    rows = train_json("plan", path, "--captions", "3")["captions"]
    vectors = "<lkemb0_0> <lkemb0_1> <lkemb0_2>"  # the placeholder as the run's embeddings substitute it
    firsts = {i.image.name: i.caption for i in load_items(load(path))}
    assert len(rows) == 3
    for row in rows:  # a line of the template, [name] and [filewords] filled, then substituted
        assert row["text"].startswith("a ") and f" {vectors}, " in row["text"]
        assert row["text"].endswith(firsts[row["image"].split("/")[1]].replace("kit", vectors))
        # each vector is one token, as the run's tokenizer counts them once they are added
        words = row["text"].replace(vectors, "")
        assert row["tokens"] == count(shipped_tokenizer(), words) + 3 * row["text"].count(vectors)


def test_the_saved_tag_frequency_counts_tags_not_sentence_clauses(tmp_path):
    from lorakit.train.metadata import metadata

    config = load(_config(tmp_path, "enable_wildcard = true"))
    items = load_items(config)
    meta = metadata(config, items, 1, 1, 1, 0.0, "sd1")
    counted = Counter()
    for folder in json.loads(meta["ss_tag_frequency"]).values():
        counted.update(folder)
    assert counted["kit"] >= 2 and counted["blue"] == 1
    assert not any("asleep" in tag or "dog" in tag for tag in counted)  # "A dog, asleep on the floor." is a sentence


def test_plan_warns_when_further_lines_do_not_train(tmp_path):
    plain = train_json("plan", _config(tmp_path / "plain"))
    assert any("captions have lines after line 1" in w and "do not train" in w for w in plain["warnings"])
    wild = train_json("plan", _config(tmp_path / "wild", "enable_wildcard = true"))
    assert not any("lines after line 1" in w for w in wild["warnings"])
