"""`train plan`: everything about a run that can be known without loading a model: which images
train, how often, in which buckets, how many steps, what is saved when, and what looks wrong.
Counting follows kohya: a batch never mixes buckets, so an epoch is the sum over buckets of
ceil(images in the bucket x repeats / batch size); regularisation images are reused until they
match the number of training images."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from lorakit.captions import caption_file, parse_repeats_folder, read_tags
from lorakit.discovery import discover
from lorakit.errors import UserError
from train.lycoris_net import check_args
from lorakit.images import ImageError, read_header
from lorakit.report import FAILED, OK, Outcome, Report, Section
from train.buckets import assign
from train.config import Config
from train.schedule import base_rate

NATIVE = {"sd1": 512, "sd2": 768, "sdxl": 1024}  # the resolution each family was trained at
MAX_TAGS = 20
TINY = 10


@dataclass
class Subset:
    folder: Path
    repeats: int
    token: str | None
    is_reg: bool
    resolution: tuple[int, int]
    batch_size: int
    caption_extension: str
    images: list[Path] = field(default_factory=list)


def _pair(resolution: int | list[int]) -> tuple[int, int]:
    return (resolution, resolution) if isinstance(resolution, int) else (resolution[0], resolution[-1])


def subsets(config: Config) -> list[Subset]:
    data = config.data
    found: list[Subset] = []
    for root, is_reg in ((data.image_root, False), (data.reg_root, True)):
        if not root:
            continue
        root_path = Path(root)
        if not root_path.is_dir():
            raise UserError(f"data.{'reg_root' if is_reg else 'image_root'}: {root} is not a folder")
        for child in sorted(p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            parsed = parse_repeats_folder(child.name)
            if parsed is None:
                continue
            found.append(Subset(child, parsed[0], parsed[1], is_reg, _pair(data.resolution),
                                data.batch_size, data.caption_extension))
    for dataset in config.datasets:
        for s in dataset.subsets:
            found.append(Subset(Path(s.image_dir), s.num_repeats, s.class_tokens, s.is_reg,
                                _pair(dataset.resolution), dataset.batch_size or data.batch_size,
                                s.caption_extension or data.caption_extension))
    if not [s for s in found if not s.is_reg]:
        raise UserError("no training images: set data.image_root (with N_name folders below it) "
                        "or [[datasets]] with [[datasets.subsets]]")
    for s in found:
        if not s.folder.is_dir():
            raise UserError(f"{s.folder} is not a folder")
        s.images = [s.folder / rel for rel in discover(s.folder)]
    return found


def _family(config: Config) -> str | None:
    if config.model.family != "auto":
        return config.model.family
    name = config.model.base.lower()
    return "sdxl" if "xl" in name else None


def plan(config: Config) -> Report:
    data = config.data
    n = config.network
    check_args(n.module, n.args, n.dim, n.conv_dim, n.rank_dropout)
    report = Report("plan", data.image_root or "datasets")
    warnings: list[str] = []
    rows, bucket_counts = [], Counter()
    steps_per_epoch = 0
    from train.validation import held_out  # here: train.validation imports train.data, which imports this

    all_subsets = subsets(config)
    held = held_out([i for s in all_subsets if not s.is_reg for i in s.images], data.validation_split,
                    config.training.seed)
    if held:  # held-out images never train: the steps below are without them
        all_subsets = [replace(s, images=[i for i in s.images if i not in held]) for s in all_subsets]
    train_images = sum(len(s.images) * s.repeats for s in all_subsets if not s.is_reg)
    reg_images = sum(len(s.images) for s in all_subsets if s.is_reg)
    # kohya reuses regularisation images until they match the training images with repeats
    reg_factor = train_images / max(1, sum(len(s.images) * s.repeats for s in all_subsets if s.is_reg))
    for s in all_subsets:
        per_bucket: Counter = Counter()
        over_tagged = untriggered = uncaptioned = 0
        for image in s.images:
            rel = image.relative_to(s.folder).as_posix()
            try:
                header = read_header(image)
            except ImageError as exc:
                report.outcomes.append(Outcome(f"{s.folder.name}/{rel}", FAILED, str(exc)))
                continue
            bucket = assign((header.width, header.height), s.resolution, data.min_bucket_reso,
                            data.max_bucket_reso, data.bucket_reso_steps, not data.bucket_no_upscale) \
                if data.enable_bucket else s.resolution
            per_bucket[bucket] += 1
            caption = caption_file(image, s.caption_extension)
            tags = read_tags(caption) if caption else []
            uncaptioned += caption is None
            over_tagged += len(tags) > MAX_TAGS
            if s.token and tags and s.token.lower() not in {t.lower() for t in tags}:
                untriggered += 1
            report.outcomes.append(Outcome(f"{s.folder.name}/{rel}", OK, details={"bucket": list(bucket)}))
        weight = s.repeats * (reg_factor if s.is_reg else 1)
        for bucket, n in per_bucket.items():
            bucket_counts[bucket] += n
            steps_per_epoch += math.ceil(n * weight / s.batch_size)
        rows.append([s.folder.name, len(s.images), s.repeats, "reg" if s.is_reg else "train",
                     round(len(s.images) * weight)])
        if uncaptioned:
            warnings.append(f"{s.folder.name}: {uncaptioned} images have no caption (the folder name is used)")
        if over_tagged:
            warnings.append(f"{s.folder.name}: {over_tagged} captions have over {MAX_TAGS} tags (the guide's limit)")
        if untriggered and not s.is_reg:
            warnings.append(f"{s.folder.name}: {untriggered} captions lack the trigger '{s.token}' (tag edit --add)")
    steps_per_epoch = math.ceil(steps_per_epoch / config.training.gradient_accumulation_steps)
    run = config.training
    total = run.max_steps or run.max_epochs * steps_per_epoch
    epochs = math.ceil(total / max(1, steps_per_epoch))
    saves = sorted({e for e in range(1, epochs + 1) if config.saving.every_n_epochs
                    and e % config.saving.every_n_epochs == 0} | {epochs})
    n_train = sum(len(s.images) for s in all_subsets if not s.is_reg)
    if n_train < TINY:
        warnings.append(f"only {n_train} training images: the guide suggests at least 10-15, ideally more")
    family = _family(config)
    longest = max(_pair(data.resolution))
    if family and longest > NATIVE[family]:
        warnings.append(f"resolution {longest} is above the {NATIVE[family]} px {family} was trained at")
    if config.network.alpha / max(1, config.network.dim) < 0.1 and base_rate(config.optimizer.learning_rate) < 1e-5 \
            and config.optimizer.type not in ("prodigy", "dadaptadam"):
        warnings.append("alpha much smaller than dim with a tiny learning rate (kohya's defaults) "
                        "barely trains: see train init for the guide's values")
    if config.embeddings:
        rows_e, more = _embeddings(config, all_subsets, steps_per_epoch)
        report.sections.append(Section("embeddings", ["embedding", "placeholder", "vectors", "captions with it",
                                                      "trains until step"], rows_e))
        warnings += more
    warnings += token_warnings(config, all_subsets)
    report.sections += [
        Section("datasets", ["folder", "images", "repeats", "kind", "images per epoch"], rows),
        Section("buckets", ["bucket", "images"],
                [[f"{w}x{h}", n] for (w, h), n in sorted(bucket_counts.items())]),
        Section("schedule", ["", ""], [
            ["training images x repeats", train_images], ["regularisation images", reg_images],
            ["held out for validation", len(held)],
            ["steps per epoch", steps_per_epoch], ["epochs", epochs], ["total steps", total],
            ["saved after epochs", ", ".join(map(str, saves))]]),
    ]
    report.notes += [f"warning: {w}" for w in warnings]
    report.data.update(steps_per_epoch=steps_per_epoch, epochs=epochs, total_steps=total, saves=saves,
                       buckets={f"{w}x{h}": n for (w, h), n in sorted(bucket_counts.items())},
                       warnings=warnings, train_images=train_images,
                       held_out=sorted(str(i) for i in held))
    return report


def _tokenizer(config: Config):
    """The base model's tokenizer when it is a local folder (a few files, no weights), else None."""
    folder = Path(config.model.base) / "tokenizer"
    if not any((folder / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        return None
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def _embeddings(config: Config, all_subsets: list[Subset], steps_per_epoch: int) -> tuple[list, list[str]]:
    """Per embedding: how many captions hold its placeholder, and when it stops training; the
    longest caption's token count with the embeddings' vectors, where the tokenizer is at hand."""
    from train.embeddings import placeholder_pattern, safe_name, stop_step

    captions = []
    for s in all_subsets:
        for image in s.images:
            found = caption_file(image, s.caption_extension)
            captions.append(", ".join(read_tags(found)) if found else (s.token or ""))
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


def token_warnings(config: Config, all_subsets: list[Subset]) -> list[str]:
    """Captions (with the embeddings' vectors) past data.max_token_length are cut off: said
    here where the base model's tokenizer is at hand (a local folder)."""
    tokenizer = _tokenizer(config)
    captions = [", ".join(read_tags(found)) for s in all_subsets for image in s.images
                if (found := caption_file(image, s.caption_extension))]
    if tokenizer is None or not captions:
        return []
    limit = config.data.max_token_length
    vectors = sum(max(0, (e.token_count or 1) - len(e.placeholder.split())) for e in config.embeddings)
    lengths = [len(tokenizer(c, add_special_tokens=False).input_ids) + vectors for c in captions]
    over = sum(1 for n in lengths if n > limit)
    if not over:
        return []
    with_vectors = f" with the embeddings' vectors" if vectors else ""
    return [f"{over} captions are past data.max_token_length = {limit} tokens{with_vectors} (the longest: "
            f"{max(lengths)}) and get cut off" + (": set data.max_token_length = 150 or 225" if limit < 225 else "")]
