"""`tag caption`: a sentence per image from a vision-language model, beside its tags.

The sentence goes to line 2 of the caption (line 1, the tags, is kept byte for byte), or to a
file of its own (`--to-extension .caption`). Instructed captioners are given the image's tags
and trigger, so the sentence agrees with them (tagging/captioners.py).

Sentences are written as they are made, a batch of captions at a time, each batch's previous
bytes added to the run's backup first (`tag undo` reverts the run). A run that is stopped keeps
what it wrote; run again, it skips what is done: in `skip` mode by the sentence now there, in the
other modes by the run's journal (.lorakit/caption-run*.json, kept until a run completes).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lorakit.captions import CAPTION_SUFFIXES, SENTENCE_MODES, instance_token, parse_tags, sentence_lines, with_sentence
from lorakit.discovery import check_source
from lorakit.errors import UserError
from lorakit.fsio import own_folder, read_regular, sync_folder, write_text, write_texts
from lorakit.images import DEFAULT_MAX_PIXELS
from lorakit.locks import LOCK
from lorakit.parallel import make_progress
from lorakit.report import FAILED, OK, PLANNED, Outcome, Report, Section
from lorakit.shards import Shard, shard_lock
from lorakit.tagging.backups import Backup, digest, mark_failed
from lorakit.tagging.prompts import check_template, fill, folder_words
from lorakit.tagging.rewrite import CHANGED, CREATED, UTF16, _read_chunk, targets

JOURNAL = LOCK.parent  # lorakit's own folder in the dataset
MOST_PROMPT = 20_000  # characters: a prompt is a few lines and a caption's tags
JOURNAL_LIMIT = 256 << 20  # a journal lists names and digests: more was not written by lorakit


@dataclass
class SentenceOptions:
    model: str | None = None
    model_dir: Path | None = None
    prompt: str | None = None  # the template's text (--prompt FILE); None: the captioner's
    with_tags: bool | None = None  # None: where the captioner takes instructions
    trigger: str | None = None  # None: the N_name folder's
    to_extension: str | None = None  # a sentence file of its own; None: line 2 of the caption
    mode: str = "skip"
    batch_size: int | None = None  # default: 1 on the CPU, 8 on a GPU
    precision: str | None = None
    max_new_tokens: int | None = None
    seed: int = 0
    share: Shard = field(default_factory=Shard)
    dry_run: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = False
    console: object = None


@dataclass
class Job:
    image: str  # relative to DIR
    file: str  # the file the sentence goes to (absolute)
    name: str  # that file relative to DIR
    data: bytes | None  # its bytes now
    tags: list[str]
    prompt: str = ""


def _check(opts: SentenceOptions) -> None:
    if opts.mode not in SENTENCE_MODES:
        raise UserError(f"--mode {opts.mode}: use one of {', '.join(SENTENCE_MODES)}")
    if opts.to_extension is not None and opts.to_extension not in CAPTION_SUFFIXES:
        raise UserError(f"--to-extension {opts.to_extension}: use {' or '.join(CAPTION_SUFFIXES)} (the caption "
                        "files trainers and `tag undo` know); the one not holding the tags")


def _jobs(root: Path, opts: SentenceOptions, report: Report) -> list[Job]:
    """Every image of this share with the file its sentence goes to, read; the images that
    cannot be captioned fail here, alone."""
    found = [t for t in targets(root) if opts.share.mine(t.image.as_posix())]
    own = opts.to_extension
    files = []
    for t in found:
        if own is None:
            files.append((t, t.caption, t.name))
        else:
            stem = os.path.splitext(t.caption)[0]
            files.append((t, stem + own, os.path.splitext(t.name)[0] + own))
    tag_data = _read_chunk([t.caption if t.exists else None for t, _, _ in files])
    own_data = _read_chunk([f for _, f, _ in files]) if own else tag_data
    jobs = []
    for (t, file, name), tags_bytes, data in zip(files, tag_data, own_data):
        if own and t.exists and t.caption == file:
            report.outcomes.append(Outcome(name, FAILED, f"its tags are in {name}: write the sentence to "
                                           "line 2 (no --to-extension) or to the other caption file"))
            continue
        if own and (not t.exists or CAPTION_SUFFIXES.index(own) < CAPTION_SUFFIXES.index(Path(t.caption).suffix)):
            # the sentence file would become the caption trainers and lorakit read for the image
            why = "it has no caption with tags" if not t.exists else f"{name} would be read before its tags in {t.name}"
            report.outcomes.append(Outcome(name, FAILED, f"{why}: a sentence file there would be read as its tags "
                                           "(run tag auto first, or write the sentence to line 2)"))
            continue
        if own and isinstance(data, OSError) and data.errno == 2:  # ENOENT: a new sentence file
            data = None
        bad = next((d for d in (tags_bytes, data) if isinstance(d, OSError)), None)
        if bad is not None or any(isinstance(d, bytes) and d.startswith(UTF16) for d in (tags_bytes, data)):
            why = f"cannot read: {bad.strerror or bad}" if bad is not None else "saved as UTF-16: save it as UTF-8"
            report.outcomes.append(Outcome(name, FAILED, why))
            continue
        tags = parse_tags(tags_bytes.decode("utf-8", "replace")) if tags_bytes else []
        jobs.append(Job(t.image.as_posix(), file, name, data, tags))
    return jobs


def _journal_path(root: Path, share: Shard) -> Path:
    return root / JOURNAL / (f"caption-run-{share.label()}.json" if not share.whole else "caption-run.json")


def _run_key(captioner, opts: SentenceOptions, template: str, generation: dict) -> str:
    what = [captioner.name, str(captioner.spec.repo), template, captioner.spec.system, generation, opts.mode,
            opts.to_extension, opts.with_tags, opts.trigger]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done_before(path: Path, key: str) -> dict[str, str]:
    """What the stopped run with the same settings wrote: {image: digest of its caption as it
    left it}. Read as a plain file of bounded size (never through a link or from a FIFO); one
    that cannot be read, or is not lorakit's, counts as no journal."""
    try:
        journal = json.loads(read_regular(path, JOURNAL_LIMIT))
        done = journal["done"] if journal.get("key") == key else {}
        return {str(k): str(v) for k, v in done.items()} if isinstance(done, dict) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def caption(root: Path, opts: SentenceOptions) -> Report:
    _check(opts)
    root = check_source(root)
    report = Report("caption", str(root))
    if opts.dry_run:
        return _caption(root, opts, report)
    with shard_lock(root, "tag caption", opts.share):
        return _caption(root, opts, report)


def _caption(root: Path, opts: SentenceOptions, report: Report) -> Report:
    from lorakit.tagging import vlm

    own = opts.to_extension is not None
    jobs = _jobs(root, opts, report)
    if not opts.share.whole:
        report.data["shard"] = opts.share.describe(len(jobs) + len(report.outcomes))  # with those failed already
    if opts.mode == "skip":
        has = {j.image for j in jobs if sentence_lines(j.data, own)}
        for job in (j for j in jobs if j.image in has):
            report.outcomes.append(Outcome(job.name, OK, "has a sentence: skipped"))
        if has:
            report.notes.append(f"{len(has)} captions have a sentence and were skipped (--mode overwrite replaces "
                                "line 2, --mode merge adds a line)")
        jobs = [j for j in jobs if j.image not in has]
    if not jobs:
        return report
    captioner = vlm.load(opts.model, opts.model_dir, opts.precision)
    template = opts.prompt if opts.prompt is not None else captioner.spec.prompt
    with_tags = check_template(template, captioner, opts.with_tags, opts.trigger)
    generation = dict(captioner.spec.generation)
    if opts.max_new_tokens is not None:
        generation["max_new_tokens"] = opts.max_new_tokens
        if generation.get("min_length", 0) > opts.max_new_tokens:  # BLIP's 5: shorter asked for, shorter made
            generation["min_length"] = opts.max_new_tokens
    journal = _journal_path(root, opts.share)
    key = _run_key(captioner, opts, template, generation)
    done = _done_before(journal, key) if not opts.dry_run else {}
    # done, and its caption still as the stopped run left it (not undone, not edited since)
    resumed = [j for j in jobs if j.image in done and done[j.image] == digest(j.data or b"")]
    if resumed:
        for job in resumed:
            report.outcomes.append(Outcome(job.name, OK, "done by the run that was stopped: skipped"))
        skipped = {j.image for j in resumed}
        jobs = [j for j in jobs if j.image not in skipped]
        report.notes.append(f"went on from a stopped run: {len(resumed)} images it had done were skipped")
    done = {j.image: done[j.image] for j in resumed}
    for job in jobs:
        values = {"tags": ", ".join(job.tags) if with_tags else "", "folder": folder_words(job.image),
                  "trigger": opts.trigger if opts.trigger is not None else _trigger(job.image)}
        job.prompt = fill(template, values)
    too_long = [j for j in jobs if len(j.prompt) > MOST_PROMPT]
    for job in too_long:  # a line 1 of megabytes would take the model minutes, and memory, per image
        report.outcomes.append(Outcome(job.name, FAILED, f"its prompt is {len(job.prompt):,} characters (its tags: "
                                                         f"{len(', '.join(job.tags)):,}); at most {MOST_PROMPT:,}"))
    jobs = [j for j in jobs if len(j.prompt) <= MOST_PROMPT]
    batch = opts.batch_size or (8 if captioner.device.type == "cuda" else 1)
    report.data.update(model=captioner.name, family=captioner.spec.family, device=str(captioner.device),
                       precision=captioner.precision, batch=batch, with_tags=with_tags,
                       target=opts.to_extension or "line 2")
    writer = _Writer(root, opts, report, journal, key, done)
    started = time.perf_counter()
    try:
        _generate_all(captioner, root, jobs, batch, generation, opts, writer)
    except KeyboardInterrupt:
        writer.flush()
        raise UserError(f"stopped: {writer.written} sentences were written and are kept; run the same command "
                        "again to go on from there") from None
    writer.flush(final=True)
    seconds = time.perf_counter() - started
    report.data.update(seconds=round(seconds, 3), images_per_second=round(len(jobs) / seconds, 3) if seconds else None)
    report.sections.append(Section("would write" if opts.dry_run else "sentences", ["caption", "sentence"],
                                   [[j.name, s if len(s) <= 100 else s[:97] + "..."] for j, s in writer.rows]))
    no_tags = sum(1 for j, _ in writer.rows if not own and j.data is None)
    if no_tags:
        report.notes.append(f"{no_tags} images had no caption: their sentence {'would go' if opts.dry_run else 'is'} "
                            "on line 2 under an empty line 1 (run `tag auto` for the tags)")
    return report


def _trigger(image: str) -> str:
    return instance_token(Path(image)) or ""


def _decode(job: Job, root: Path, max_side: int, max_pixels: int):
    from lorakit.images import ImageError, flatten, load_image

    try:
        img = flatten(load_image(root / job.image, max_pixels))
    except ImageError as exc:
        return str(exc)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side))
    return img


def _generate_all(captioner, root: Path, jobs: list[Job], batch: int, generation: dict, opts: SentenceOptions,
                  writer: "_Writer") -> None:
    import torch

    from lorakit.tagging.vlm import generate

    chunks = [jobs[i:i + batch] for i in range(0, len(jobs), batch)]

    def decoded(chunk: list[Job]) -> list:
        return [_decode(j, root, captioner.spec.max_side, opts.max_pixels) for j in chunk]

    with make_progress(opts.console, opts.progress) as bar, ThreadPoolExecutor(1) as pool:
        task = bar.add_task(f"tag caption ({captioner.name})", total=len(jobs))
        ahead = pool.submit(decoded, chunks[0])
        for n, chunk in enumerate(chunks):  # the next batch decodes while this one generates
            images = ahead.result()
            if n + 1 < len(chunks):
                ahead = pool.submit(decoded, chunks[n + 1])
            ready = [(j, im) for j, im in zip(chunk, images) if not isinstance(im, str)]
            for job, im in zip(chunk, images):
                if isinstance(im, str):
                    writer.fail(job, im)
            torch.manual_seed(opts.seed)  # sampling captioners: the same sentence for the same batch
            try:
                sentences = generate(captioner, [im for _, im in ready], [j.prompt for j, _ in ready], generation) \
                    if ready else []
            except Exception:  # noqa: BLE001  (one odd image must not fail its batch: each alone)
                sentences = [_alone(captioner, j, im, generation) for j, im in ready]
            for (job, _), sentence in zip(ready, sentences):
                if isinstance(sentence, Exception) or not sentence:
                    writer.fail(job, f"the model failed: {sentence}" if sentence else "the model wrote nothing")
                else:
                    writer.add(job, sentence)
            bar.advance(task, len(chunk))


def _alone(captioner, job: Job, image, generation: dict):
    from lorakit.tagging.vlm import generate

    try:
        return generate(captioner, [image], [job.prompt], generation)[0]
    except Exception as exc:  # noqa: BLE001  (whatever the model raises, this image fails alone)
        return RuntimeError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


class _Writer:
    """Writes sentences a batch of captions at a time: the backup first, then the captions, then
    the journal. A batch is written when it reaches an eighth of what is written so far (at least
    16), or after five minutes: the backup file is rewritten whole each time, so batches that grow
    keep the bytes written over a run in proportion to its size."""

    def __init__(self, root: Path, opts: SentenceOptions, report: Report, journal: Path, key: str,
                 done: dict[str, str]):
        command = "caption" if opts.share.whole else f"caption-share{opts.share.label()}"
        self.root, self.opts, self.report, self.journal, self.key = root, opts, report, journal, key
        self.backup = Backup(root, command)
        self.done = dict(done)  # image -> digest of its caption as this run left it
        self.pending: list[tuple[Job, bytes, str]] = []
        self.rows: list[tuple[Job, str]] = []
        self.written, self.last = 0, time.monotonic()

    def fail(self, job: Job, message: str) -> None:
        self.report.outcomes.append(Outcome(job.name, FAILED, f"{job.image}: {message}"))

    def add(self, job: Job, sentence: str) -> None:
        own = self.opts.to_extension is not None
        new = with_sentence(job.data, sentence, self.opts.mode, own)
        if new == job.data:
            self.report.outcomes.append(Outcome(job.name, OK, "unchanged (the sentence is there already)",
                                                {"sentence": sentence, "prompt": job.prompt}))
            self.done[job.image] = digest(job.data or b"")
            return
        self.rows.append((job, sentence))
        if self.opts.dry_run:
            self.report.outcomes.append(Outcome(job.name, PLANNED, "would write",
                                                {"sentence": sentence, "prompt": job.prompt}))
            return
        self.pending.append((job, new, sentence))
        if len(self.pending) >= max(16, self.written // 8) or time.monotonic() - self.last > 300:
            self.flush()

    def flush(self, final: bool = False) -> None:
        if self.opts.dry_run:
            return
        if self.pending:
            for job, new, _ in self.pending:
                self.backup.save(job.name, job.data, new)
            self.backup.commit()
            outcomes = {}
            for job, _, sentence in self.pending:
                status = CHANGED if job.data is not None else CREATED
                outcome = Outcome(job.name, status, "", {"sentence": sentence, "prompt": job.prompt})
                self.report.outcomes.append(outcome)
                outcomes[job.file] = outcome
            failed = write_texts([(job.file, new) for job, new, _ in self.pending])
            mark_failed(outcomes, failed)
            if failed:
                self.backup.forget({outcomes[path].path for path in failed})
                self.backup.commit()
            sync_folder(self.root)
            self.done.update({job.image: digest(new) for job, new, _ in self.pending if job.file not in failed})
            self.written += len(self.pending) - len(failed)
            self.pending = []
            self.last = time.monotonic()
        if final:
            try:
                self.journal.unlink(missing_ok=True)  # complete: a new run starts afresh
            except OSError as e:
                self.report.notes.append(f"{self.journal}: cannot remove it ({e.strerror or e}): remove it by hand")
            if self.backup.changed or self.backup.created:
                self.report.notes.append(f"previous captions kept in {self.backup.path.relative_to(self.root)}; "
                                         f"`tag undo {self.report.src}` restores them")
        elif self.done:
            try:  # without it a second run redoes work, and loses nothing: a failure is a note
                own_folder(self.root, JOURNAL)
                write_text(self.journal, json.dumps({"key": self.key, "done": self.done}))
            except OSError as e:
                if not any(n.startswith(f"{self.journal}:") for n in self.report.notes):
                    self.report.notes.append(f"{self.journal}: cannot write it ({e.strerror or e}); a second run "
                                             "would caption again what this one did")

