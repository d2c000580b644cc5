"""`tag`: the Typer layer of the tag stage. Commands that rewrite captions do it in place (that
is where trainers read them), show a diff with --dry-run, and can be undone with `tag undo`."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from lorakit import quiet

quiet.install()  # before any library loads: their notices and bars stay out of our output

from lorakit.options import DryRun, Json, emit, user_errors
from lorakit.tagging.defaults import CHARACTER
from lorakit.tagging.relations import VOCABS

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Autotag images (WD14 / e621 ONNX), prune implied tags, edit captions, "
                       "report tag statistics and balance N_name folder repeats.")
lists_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Booru relation data (implications, aliases, tag lists).")
app.add_typer(lists_app, name="lists")

Dir = Annotated[Path, typer.Argument(help="Dataset folder (searched recursively).")]
Vocabulary = Literal[VOCABS]  # a typo is refused by the option parser, naming the choices
Vocab = Annotated[Vocabulary, typer.Option(help="The tag vocabulary.")]
ShardOption = Annotated[Optional[str], typer.Option(
    help="K/N: only this process's share of the images (a job array of N). Under torchrun or "
         "accelerate launch each process takes its share without it.")]
KeepTokens = Annotated[int, typer.Option(
    min=0, help="Never touch the first N tags (instance and class tokens). The instance token of "
                "an N_name folder is always kept.")]


def _instance_keys(image: Path) -> frozenset[str]:
    return _folder_instance_keys(image.parent)


@lru_cache(maxsize=4096)  # once per folder, not per caption
def _folder_instance_keys(folder: Path) -> frozenset[str]:
    from lorakit.captions import folder_instance_tokens
    from lorakit.tagging.spelling import key

    return frozenset(key(t) for t in folder_instance_tokens(folder))


@app.command()
def auto(
    dir: Dir,
    vocab: Vocab = "danbooru",
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Tagger name (wd-swinv2-v3, wd-vit-v3, wd-convnext-v3, wd-eva02-large-v3, "
        "wd-v1-4-*-v2, z3d-e621-convnext); default per vocabulary.")] = None,
    model_dir: Annotated[Optional[Path], typer.Option(
        help="Folder with model.onnx and selected_tags.csv / tags-selected.csv (offline use).")] = None,
    provider: Annotated[str, typer.Option(help="auto, cpu, cuda or tensorrt.")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, or int8 (a quantised copy, made once).")] = "fp32",
    batch: Annotated[Optional[int], typer.Option(
        min=1, help="Images per inference batch (default: 1 on CPU, where batching is slower; 16 on GPU).")] = None,
    workers: Annotated[Optional[int], typer.Option(
        min=0, help="Decode processes (default: 1 on CPU, up to 8 with a GPU; 0 = none).")] = None,
    general: Annotated[Optional[float], typer.Option(help="General tag threshold (default: the model's).")] = None,
    character: Annotated[Optional[float], typer.Option(help=f"Character tag threshold (default {CHARACTER}).")] = None,
    mcut: Annotated[bool, typer.Option("--mcut", help="MCut thresholds instead of fixed ones.")] = False,
    rethreshold: Annotated[bool, typer.Option(
        "--rethreshold", help="Rewrite captions from the stored probabilities; do not run the model.")] = False,
    mode: Annotated[str, typer.Option(help="overwrite, append, merge (keep hand-written tags) or skip.")] = "overwrite",
    trigger: Annotated[Optional[str], typer.Option(help="Instance token, first (default: from the N_name folder).")] = None,
    class_token: Annotated[Optional[str], typer.Option("--class", help="Class token, second.")] = None,
    undesired: Annotated[str, typer.Option(
        help="Comma-separated tags never written; @meta and @quality name lists that ship.")] = "",
    always_first: Annotated[str, typer.Option(help="Comma-separated tags moved to the front when found.")] = "",
    character_first: Annotated[bool, typer.Option("--character-first", help="Character tags before general ones.")] = False,
    underscores: Annotated[bool, typer.Option("--underscores", help="Keep underscores (default: spaces).")] = False,
    escape: Annotated[bool, typer.Option("--escape", help="Escape parentheses: jinx \\(lol\\).")] = False,
    replace: Annotated[str, typer.Option(help="Replacement pairs, kohya style: 'a,b;c,d' (a becomes b).")] = "",
    rating: Annotated[str, typer.Option(help="Rating tag: none, first or last.")] = "none",
    order: Annotated[str, typer.Option(help="confidence, or model (the tag CSV's order, as kohya).")] = "confidence",
    keep_implied: Annotated[bool, typer.Option("--keep-implied", help="Do not prune implied tags.")] = False,
    shard: ShardOption = None,
    dry_run: DryRun = False, json: Json = False,
) -> None:
    """Tag every image with a WD14 / e621 ONNX tagger and write its caption beside it."""
    from lorakit.options import err_console
    from lorakit.shards import shard as parse_shard
    from lorakit.tagging.auto import AutoOptions, auto_tag
    from lorakit.tagging.compose import MODES, Writing
    from lorakit.tagging.lists import expand

    with user_errors():
        for value, allowed, hint in ((mode, MODES, "--mode"), (rating, ("none", "first", "last"), "--rating"),
                                     (order, ("confidence", "model"), "--order"),
                                     (precision, ("fp32", "int8"), "--precision")):
            if value not in allowed:
                raise typer.BadParameter(f"use one of {', '.join(allowed)}", param_hint=hint)
        pairs = []
        for pair in filter(None, (p.strip() for p in replace.split(";"))):
            if "," not in pair:
                raise typer.BadParameter(f"{pair!r}: write old,new", param_hint="--replace")
            pairs.append(tuple(t.strip() for t in pair.split(",", 1)))
        split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
        writing = Writing(mode, trigger, class_token, expand(split(undesired)), split(always_first), character_first,
                          underscores, escape, pairs, rating, order, not keep_implied)
        opts = AutoOptions(vocab, model, model_dir, provider, precision, batch, workers, general, character,
                           mcut, writing, rethreshold, dry_run, progress=err_console.is_terminal and not json,
                           console=err_console, share=parse_shard(shard))
        report = auto_tag(dir, opts)
    emit(report, json)


@app.command()
def prune(dir: Dir, vocab: Vocab = "danbooru", keep_tokens: KeepTokens = 0,
          dry_run: DryRun = False, json: Json = False) -> None:
    """Drop tags implied by another tag in the same caption (transitively), resolve alias
    spellings, drop duplicates; order is kept."""
    from lorakit.tagging import relations
    from lorakit.tagging.prune import prune as prune_tags
    from lorakit.tagging.rewrite import rewrite

    with user_errors():
        rel = relations.load(vocab)
        report = rewrite(dir, "prune", lambda image, tags: prune_tags(
            tags, rel, _instance_keys(image), keep_tokens).tags, dry_run, pure=True)
        report.notes.append(f"relations: {vocab}, {rel.source}")
    emit(report, json)


@app.command()
def edit(
    dir: Dir,
    add: Annotated[Optional[list[str]], typer.Option(help="Tag to add (repeatable).")] = None,
    at: Annotated[Optional[int], typer.Option(help="Position for added tags (0 = first).")] = None,
    remove: Annotated[Optional[list[str]], typer.Option(
        help="Tag, wildcard or list (@meta, @quality) to remove (repeatable).")] = None,
    replace: Annotated[Optional[list[str]], typer.Option(help="OLD=NEW (repeatable).")] = None,
    front: Annotated[Optional[list[str]], typer.Option(help="Move this tag to the front (repeatable).")] = None,
    where: Annotated[Optional[list[str]], typer.Option(help="Only captions with this tag or wildcard.")] = None,
    folder: Annotated[Optional[str], typer.Option(help="Only images under a folder of this name.")] = None,
    dry_run: DryRun = False, json: Json = False,
) -> None:
    """Bulk edits: add (at a position), remove, replace, move to front, filtered by tag or folder."""
    from lorakit.tagging.edit import EditOps, apply, selected
    from lorakit.tagging.lists import expand
    from lorakit.tagging.rewrite import rewrite

    with user_errors():
        pairs = []
        for item in replace or []:
            if "=" not in item:
                raise typer.BadParameter(f"{item!r}: write OLD=NEW", param_hint="--replace")
            old, new = item.split("=", 1)
            pairs.append((old, new))
        ops = EditOps(add or [], at, expand(remove or []), pairs, front or [], where or [], folder)
        report = rewrite(dir, "edit", lambda image, tags: apply(tags, ops) if selected(image, tags, ops)
                         else None, dry_run, create=bool(ops.add) and not ops.where, pure=True)
    emit(report, json)


@app.command()
def undo(
    dir: Dir, dry_run: DryRun = False,
    force: Annotated[bool, typer.Option("--force", help="Also restore captions changed since the command wrote them.")]
        = False,
    json: Json = False,
) -> None:
    """Restore the captions as they were before the last command that rewrote them (a caption
    changed since is left alone, and said so, unless --force)."""
    from lorakit.tagging.backups import undo as undo_last

    with user_errors():
        report = undo_last(dir, dry_run, force)
    emit(report, json)


@app.command()
def redo(
    dir: Dir, dry_run: DryRun = False,
    force: Annotated[bool, typer.Option("--force", help="Also over captions changed since the undo.")] = False,
    json: Json = False,
) -> None:
    """Put back what the last `tag undo` reverted (until a new edit is made)."""
    from lorakit.tagging.backups import redo as redo_last

    with user_errors():
        report = redo_last(dir, dry_run, force)
    emit(report, json)


@app.command()
def translate(
    dir: Dir,
    to: Annotated[Vocabulary, typer.Option("--to", help="The vocabulary to write.")],
    keep_tokens: KeepTokens = 0,
    drop_unknown: Annotated[bool, typer.Option(help="Drop tags with no equivalent.")] = False,
    dry_run: DryRun = False, json: Json = False,
) -> None:
    """Convert captions between the Danbooru and e621 vocabularies."""
    from lorakit.report import Section
    from lorakit.tagging import relations
    from lorakit.tagging.rewrite import rewrite
    from lorakit.tagging.translate import table
    from lorakit.tagging.translate import translate as translate_tags

    with user_errors():
        source = {"e621": "danbooru", "danbooru": "e621"}.get(to)
        if source is None:
            raise typer.BadParameter("use e621 or danbooru", param_hint="--to")
        src, dst, mapping = relations.load(source), relations.load(to), table(source, to)
        unknown: dict[str, int] = {}

        def convert(image: Path, tags: list[str]) -> list[str]:
            keep = _instance_keys(image) | {t for t in tags[:keep_tokens]}
            result = translate_tags(tags, src, dst, mapping, frozenset(keep), drop_unknown)
            for tag in result.unknown:
                unknown[tag] = unknown.get(tag, 0) + 1
            return result.tags

        report = rewrite(dir, "translate", convert, dry_run)
        report.sections.append(Section(f"no {to} equivalent" + (" (dropped)" if drop_unknown else " (kept)"),
                                       ["tag", "captions"], sorted(([t, n] for t, n in unknown.items()),
                                                                   key=lambda r: -r[1])))
        if not dst.categories:
            report.notes.append(f"no {to} tag list loaded: run `tag lists update --vocab {to}` "
                                "to report tags with no equivalent")
    emit(report, json)


@app.command()
def stats(
    dir: Dir, vocab: Vocab = "danbooru",
    class_token: Annotated[Optional[str], typer.Option("--class", help="Class token every caption should have.")] = None,
    max_tags: Annotated[int, typer.Option(help="Flag captions with more tags than this.")] = 20,
    top: Annotated[int, typer.Option(help="How many of the most frequent tags to show.")] = 25,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when any caption has a problem.")] = False,
    json: Json = False,
) -> None:
    """Tag frequency overall and per folder, and the problems of each caption."""
    from lorakit.report import FAILED
    from lorakit.tagging import relations
    from lorakit.tagging.stats import PROBLEM
    from lorakit.tagging.stats import stats as caption_stats

    with user_errors():
        report = caption_stats(dir, relations.load(vocab), class_token, max_tags, top)
    if strict:  # a problem becomes a failure, so a Makefile stops here
        for outcome in report.outcomes:
            if outcome.status == PROBLEM:
                outcome.status = FAILED
    emit(report, json)


@app.command()
def balance(
    root: Annotated[Path, typer.Argument(help="Folder whose sub-folders are the concepts.")],
    base_repeats: Annotated[int, typer.Option(min=1, help="Repeats of the largest folder.")] = 10,
    reduce: Annotated[bool, typer.Option("--reduce", help="Divide all repeats by their common divisor.")] = False,
    reg: Annotated[Optional[Path], typer.Option(help="Regularisation root, balanced against the training total.")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Rename folders to N_name.")] = False,
    toml: Annotated[Optional[Path], typer.Option(help="Write a kohya dataset config instead of renaming.")] = None,
    resolution: Annotated[int, typer.Option(help="Resolution written to --toml.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Batch size written to --toml and used for steps.")] = 1,
    json: Json = False,
) -> None:
    """Balanced N_name repeats: every concept gets as many steps per epoch as the largest."""
    import math

    from lorakit.fsio import write_text
    from lorakit.report import OK, Outcome, Report, Section
    from lorakit.tagging.balance import PASSES, apply_names, concepts, dataset_toml
    from lorakit.tagging.balance import balance as balance_concepts

    with user_errors():
        train = concepts(root)
        regs = concepts(reg, regularisation=True) if reg else []
        balance_concepts(train, regs, base_repeats, reduce)
        report = Report("balance", str(root))
        rows = []
        for c in train + regs:
            rows.append([c.folder.name, c.new_name + (" (reg)" if c.regularisation else ""), c.images,
                         c.repeats, c.steps, math.ceil(PASSES["sd15"] / c.repeats),
                         math.ceil(PASSES["sdxl"] / c.repeats)])
            report.outcomes.append(Outcome(c.folder.name, OK, details={
                "name": c.name, "images": c.images, "repeats": c.repeats, "steps": c.steps,
                "regularisation": c.regularisation}))
        total = sum(c.steps for c in train)
        report.sections.append(Section("repeats", ["folder", "becomes", "images", "repeats", "steps",
                                                   "SD1.5 ep", "SDXL ep"], rows))
        report.notes.append("steps = images x repeats per epoch; SD1.5/SDXL ep = epochs for the "
                            "guide's ~100 (SD1.5) or ~50 (SDXL) passes over each image")
        report.data["steps_per_epoch"] = math.ceil(total / batch_size)
        report.notes.append(f"one epoch = {total} images seen = {math.ceil(total / batch_size)} steps "
                            f"at batch size {batch_size}")
        if toml:
            write_text(toml, dataset_toml(train, regs, resolution, batch_size))
            report.notes.append(f"wrote {toml}")
        elif apply:
            for source, target in apply_names(train + regs):
                report.notes.append(f"renamed {source.name} -> {target.name}")
        else:
            report.notes.append("nothing renamed: pass --apply to rename, or --toml FILE")
    emit(report, json)


@lists_app.command("update")
def lists_update(
    vocab: Vocab,
    from_: Annotated[Optional[list[Path]], typer.Option(
        "--from", help="Local export files (tag_implications-*.csv.gz, tag_aliases-*, tags-*, or "
                       "Danbooru API .json); without it they are downloaded.")] = None,
    date: Annotated[Optional[datetime], typer.Option(
        formats=["%Y-%m-%d"], help="e621: download the export of this day, or the newest of the week "
                                   "before it (default: today).")] = None,
    json: Json = False,
) -> None:
    """Build the implication closure and alias map for a vocabulary and store it in the cache."""
    from lorakit.errors import UserError
    from lorakit.report import Report
    from lorakit.tagging.download import fetch_exports
    from lorakit.tagging.relations import Relations, build, cache_path, classify, keep_missing

    with user_errors():
        paths = list(from_ or []) or fetch_exports(vocab, date.date() if date else datetime.now().date())
        rel = build(vocab, paths, "updated from " + ", ".join(p.name for p in paths))
        try:
            previous = Relations.load(cache_path(vocab)) if cache_path(vocab).is_file() else None
        except (OSError, ValueError, KeyError, UserError):
            previous = None  # unreadable: replaced whole, as before
        rel, kept = keep_missing(rel, previous, {classify(p) for p in paths})
        rel.save(cache_path(vocab))
        report = Report("lists update", vocab, about_files=False)
        report.data.update(aliases=len(rel.aliases), implications=sum(map(len, rel.implies.values())),
                           tags=len(rel.categories), path=str(cache_path(vocab)))
        report.notes.append(f"{vocab}: {len(rel.aliases)} aliases, {report.data['implications']} "
                            f"implications, {len(rel.categories)} tags -> {cache_path(vocab)}")
        if kept:
            report.notes.append(f"kept from the lists stored before (not in the files given): {', '.join(kept)}")
    emit(report, json)


from lorakit.tagging import caption_cli  # noqa: E402,F401  (registers `tag caption` on app)
