"""`train plan`: everything about a run that can be known without loading a model: which images
train, how often, in which buckets, how many steps, what is saved when, and what looks wrong.
The images, their buckets, the batches and the step count come from train/data.py, the code
`train run` trains with, so the plan and the run always agree (kohya's counting: see there)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from lorakit.captions import parse_tags, sentence_lines
from lorakit.errors import UserError
from lorakit.report import FAILED, OK, Outcome, Report, Section
from lorakit.train.blocks import settings as block_settings
from lorakit.train.config import Config
from lorakit.train.data import Item, caption_path, epoch_batches, load_items, other_captions, resolution_pair, subsets
from lorakit.train.data import steps_per_epoch as data_steps
from lorakit.train.embeddings import check_encoder_rates
from lorakit.train.families import FAMILIES
from lorakit.train.guide_notes import guide_notes
from lorakit.train.models import sdxl_clip_skip
from lorakit.train.network_kinds import KINDS
from lorakit.train.optimizers import OPTIMIZERS
from lorakit.train.sampling import read_prompts
from lorakit.train.schedule import base_rate
from lorakit.train.subset_options import own_options
from lorakit.train.validate import validate
from lorakit.train.validation import split

MAX_TAGS = 20
MOST_STEPS = 10_000_000


def plan(config: Config, captions: int = 0) -> Report:
    """`captions`: show the texts of the first that many steps of epoch 1 (train/caption_preview.py)."""
    data = config.data
    report = Report("plan", data.image_root or "datasets")
    warnings: list[str] = []
    found = subsets(config)
    validate(config, found)  # every check train run makes before its model loads

    def failed(subset, image: Path, message: str) -> None:
        report.outcomes.append(Outcome(f"{subset.folder.name}/{image.relative_to(subset.folder).as_posix()}",
                                       FAILED, message))

    # the items train run trains on, counted and batched by the same code (train/data.py)
    readable = [(s, item) for s in found for item in load_items(config, [s], failed)]
    for s, item in readable:
        report.outcomes.append(Outcome(f"{s.folder.name}/{item.image.relative_to(s.folder).as_posix()}", OK,
                                       details={"bucket": list(item.bucket)}))
    _, held_items = split([item for _, item in readable], data.validation_split, config.training.seed)
    held = {item.image for item in held_items}
    owned = [(s, item) for s, item in readable if item.image not in held]  # held-out images never train
    items = [item for _, item in owned]
    seed = config.training.seed
    per_epoch = Counter(i for batch in epoch_batches(items, seed, 0) for i in batch)
    steps_per_epoch = data_steps(items, config.training.gradient_accumulation_steps)
    train_images = sum(i.repeats for i in items if not i.is_reg)
    reg_images = sum(1 for i in items if i.is_reg)
    bucket_counts = Counter(i.bucket for i in items)
    rows = []
    for s in found:
        mine = [(k, item) for k, (owner, item) in enumerate(owned) if owner is s]
        over_tagged = uncaptioned = unread = untrained_lines = 0
        untriggered: list[str] = []
        for _, item in mine:
            caption = caption_path(item.image, s.caption_extension)
            text = caption.read_text(encoding="utf-8-sig", errors="replace") if caption else ""
            tags = parse_tags(text)
            untrained_lines += bool(text and not item.lines and sentence_lines(text, own_file=False))
            uncaptioned += caption is None
            unread += caption is None and bool(other_captions(item.image, s.caption_extension))
            over_tagged += len(tags) > MAX_TAGS
            if s.token and tags and s.token.lower() not in {t.lower() for t in tags}:
                untriggered.append(caption.name)
        rows.append([s.folder.name, len(mine), s.repeats, "reg" if s.is_reg else "train",
                     sum(per_epoch[k] for k, _ in mine), own_options(s, config.data)])
        if uncaptioned:
            warnings.append(f"{s.folder.name}: {uncaptioned} images have no {s.caption_extension} caption "
                            "(the folder name is used)")
        if unread:
            others = sorted({p.suffix for _, i in mine for p in other_captions(i.image, s.caption_extension)})
            warnings.append(f"{s.folder.name}: {unread} of them have a {'/'.join(others)} caption, which "
                            f"caption_extension = {s.caption_extension!r} does not read")
        if untrained_lines:
            warnings.append(f"{s.folder.name}: {untrained_lines} captions have lines after line 1 (a sentence from "
                            "`tag caption`?) that do not train: only line 1 does unless data.enable_wildcard or "
                            "data.caption_recipe is set")
        if over_tagged:
            warnings.append(f"{s.folder.name}: {over_tagged} captions have over {MAX_TAGS} tags (the guide's limit)")
        if untriggered and not s.is_reg:
            named = ", ".join(untriggered[:3]) + (f" and {len(untriggered) - 3} more" if len(untriggered) > 3 else "")
            warnings.append(f"{s.folder.name}: {len(untriggered)} captions lack the trigger '{s.token}' ({named}; "
                            f"tag edit DIR --add {s.token} --folder {s.folder.name})")
    run = config.training
    total = run.max_steps or run.max_epochs * steps_per_epoch
    if total > MOST_STEPS:  # the plan lists every save step: past this it would take minutes and gigabytes
        raise UserError(f"{total:,} steps: more than lorakit plans ({MOST_STEPS:,}); lower training.max_steps or "
                        "max_epochs")
    epochs = math.ceil(total / max(1, steps_per_epoch))
    saves, save_steps = _saves(config, total, steps_per_epoch)
    family = _family(config)
    check_encoder_rates(config.embeddings, family)
    if family and KINDS[config.network.module].builder == "ours":  # block counts depend on the family
        n = config.network
        block_settings(n.args, FAMILIES[family].sgm_unet, n.alpha, n.conv_alpha)
    v_prediction = _prediction(config)
    warnings += _advice(config, family, [(s, sum(1 for o, _ in owned if o is s)) for s in found])
    if config.embeddings:
        rows_e, more = _embeddings(config, items, steps_per_epoch)
        report.sections.append(Section("embeddings", ["embedding", "placeholder", "vectors", "captions with it",
                                                      "trains until step"], rows_e))
        warnings += more
    warnings += token_warnings(config, items)
    shown = None
    if captions:
        from lorakit.train.caption_preview import preview

        shown, report.data["captions"], more = preview(config, items, captions)
        warnings += more
    # the prompts file is read now: a mistake in it would otherwise stop the run at its first sample
    prompts = len(read_prompts(config.sampling.prompts)) if config.sampling.prompts else 0
    report.sections += [
        Section("datasets", ["folder", "images", "repeats", "kind", "images per epoch", "its own options"], rows),
        Section("buckets", ["bucket", "images"],
                [[f"{w}x{h}", n] for (w, h), n in sorted(bucket_counts.items())]),
        Section("schedule", ["quantity", "value"], [
            ["training images x repeats", train_images], ["regularisation images", reg_images],
            ["held out for validation", len(held)], ["model family", family or "read when the model loads"],
            ["prediction", {True: "v", False: "epsilon (noise)", None: "read when the model loads"}[v_prediction]],
            ["steps per epoch", steps_per_epoch], ["epochs", epochs], ["total steps", total],
            ["saved at steps", _listed(save_steps)],
            ["sample prompts", prompts or "the first caption" if _samples(config) else "no samples"]]),
    ]
    report.sections.append(_vram(config, family, report.data))
    if shown is not None:
        report.sections.append(shown)
    report.notes += [f"warning: {w}" for w in warnings]
    report.data.update(steps_per_epoch=steps_per_epoch, epochs=epochs, total_steps=total, saves=saves,
                       save_steps=save_steps,
                       buckets={f"{w}x{h}": n for (w, h), n in sorted(bucket_counts.items())},
                       warnings=warnings, train_images=train_images, family=family, sample_prompts=prompts,
                       v_prediction=v_prediction,
                       held_out=sorted(str(i) for i in held))
    return report


def _advice(config: Config, family: str | None, counts: list) -> list[str]:
    """The training guide's advice that a config can break: images per concept, the resolution
    a family was trained at, kohya's alpha 1 / tiny learning rate trap; and what SDXL ignores."""
    warnings = []
    facts = FAMILIES[family or "sd1"]
    least, about = facts.images_per_concept
    for s, count in counts:
        if not s.is_reg and count < least:
            warnings.append(f"{s.folder.name}: only {count} training images; the guide suggests about {about} "
                            f"for {family or 'SD1.5'} (at least {least})")
    # a [[datasets]] table trains at its own resolution: the largest of them is the one to judge
    longest = max(max(resolution_pair(r)) for r in
                  [config.data.resolution, *(d.resolution for d in config.datasets if d.resolution)])
    if family and longest > facts.native:  # the guide's 768,768 is for models that make 768 natively
        warnings.append(f"resolution {longest} is above the {facts.native} px {family} was trained at; the guide: "
                        "\"you should not set this higher than your model can generate natively\" (its 768,768 is "
                        "for models that do)")
    if family and facts.never_below_native and longest < facts.native:
        warnings.append(f"resolution {longest} is under {facts.native} px: the guide never trains {family.upper()} "
                        f"below {facts.native}")
    n, o = config.network, config.optimizer
    rates = [o.learning_rate] + [r for r in (n.unet_lr, n.text_encoder_lr) if r is not None]
    if n.alpha / max(1, n.dim) < 0.1 and not OPTIMIZERS[o.type].adaptive and any(base_rate(r) < 1e-5 for r in rates):
        warnings.append("alpha much smaller than dim with a tiny learning rate (kohya's defaults) "
                        "barely trains: see train init for the guide's values")
    if family and not facts.clip_skip and config.model.clip_skip > 1:
        warnings.append(sdxl_clip_skip(config.model.clip_skip))
    warnings += guide_notes(config, any(s.is_reg for s, _ in counts))
    return warnings


def _samples(config: Config) -> bool:
    return bool(config.sampling.every_n_steps or config.sampling.every_n_epochs or config.output.log_dir)


def _vram(config: Config, family: str | None, data: dict) -> Section:
    """The peak-VRAM estimate (train/memory.py): its parts and total, in GiB."""
    from lorakit.train.memory import GIB, estimate

    found = estimate(config, family)
    if found is None:
        data["vram_estimate_gb"] = None
        return Section("VRAM estimate", ["part", "GiB"], [["the model's configs are not readable here", "n/a"]])
    rows = [[part, f"{size / GIB:.2f}"] for part, size in found["parts"].items()]
    rows.append(["total (an estimate from parameter and activation counts: docs/formats.md)", f"{found['total'] / GIB:.1f}"])
    data["vram_estimate_gb"] = round(found["total"] / GIB, 2)
    return Section("VRAM estimate", ["part", "GiB"], rows)


def _family(config: Config) -> str | None:
    """The family the run will find (train/models.py decides it the same way from the same
    files), or the configured one when the model cannot be read without loading it."""
    from lorakit.train.models import decide_family, family_on_disk

    found = family_on_disk(config.model.base) if config.model.base else None
    if found:
        return decide_family(config, found)
    return None if config.model.family == "auto" else config.model.family


def _prediction(config: Config) -> bool | None:
    from lorakit.train.models import prediction_on_disk

    if config.model.v_parameterization is not None:
        return config.model.v_parameterization
    found = prediction_on_disk(config.model.base) if config.model.base else None
    return False if found is None and config.model.base.endswith((".safetensors", ".ckpt")) else found


def _tokenizer(config: Config):
    """The base model's tokenizer when it is a local folder (a few files, no weights), else None."""
    folder = Path(config.model.base) / "tokenizer"
    if not any((folder / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        return None
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def _embeddings(config: Config, items: list[Item], steps_per_epoch: int) -> tuple[list, list[str]]:
    """Per embedding: how many captions hold its placeholder, and when it stops training; the
    longest caption's token count with the embeddings' vectors, where the tokenizer is at hand."""
    from lorakit.train.embeddings import placeholder_pattern, safe_name, stop_step

    captions = ["\n".join(item.lines or (item.caption,)) for item in items]  # every line that trains
    rows, warnings = [], []
    for e in config.embeddings:
        pattern = placeholder_pattern(e.placeholder) if e.placeholder.strip() else None
        holding = sum(1 for c in captions if pattern and pattern.search(c))
        stop = stop_step(e, steps_per_epoch)
        until = "never" if not e.train else ("the end" if stop is None else stop)
        vectors = e.token_count or ("as in its file" if e.base_embedding else 1)
        rows.append([safe_name(e.name or e.placeholder), e.placeholder, vectors,
                     "template" if config.data.template else holding, until])
        if not holding and not config.data.template:
            warnings.append(f"embedding {e.placeholder!r}: the placeholder is in none of the captions; it will not train")
    return rows, warnings


def token_warnings(config: Config, items: list[Item]) -> list[str]:
    """Captions (with the embeddings' vectors) past data.max_token_length are cut off: said
    here where the base model's tokenizer is at hand (a local folder)."""
    tokenizer = _tokenizer(config)
    captions = [line for item in items for line in (item.lines or (item.caption,)) if line]
    if tokenizer is None or not captions:
        return []
    limit = config.data.max_token_length
    vectors = sum(max(0, (e.token_count or 1) - len(e.placeholder.split())) for e in config.embeddings)
    lengths = [len(tokenizer(c, add_special_tokens=False).input_ids) + vectors for c in captions]
    over = sum(1 for n in lengths if n > limit)
    if not over:
        return []
    with_vectors = " with the embeddings' vectors" if vectors else ""
    return [f"{over} captions are past data.max_token_length = {limit} tokens{with_vectors} (the longest: "
            f"{max(lengths)}) and get cut off" + (": set data.max_token_length = 150 or 225" if limit < 225 else "")]


def _saves(config: Config, total: int, steps_per_epoch: int) -> tuple[list[int], list[int]]:
    """(the epochs that end with a save, every step a file is saved at), by the rule the run
    itself follows (loop.due); the last step writes the final file."""
    from lorakit.train.loop import due

    steps, epochs = set(), set()
    for step in range(1, total + 1):
        epoch, rest = divmod(step, max(1, steps_per_epoch))
        if "save" in due(config, step, total) or (rest == 0 and "save" in due(config, step, total, epoch)):
            steps.add(step)
            if rest == 0 and "save" in due(config, step, total, epoch):
                epochs.add(epoch)
    steps.add(total)
    if total % max(1, steps_per_epoch) == 0:
        epochs.add(total // max(1, steps_per_epoch))
    return sorted(epochs), sorted(steps)


def _listed(steps: list[int], shown: int = 8) -> str:
    if len(steps) <= shown:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[:shown - 2])) + f", … ({len(steps)} saves), " + str(steps[-1])
