"""`lorakit review DIR`: the dataset in a browser (review/server.py). Thumbnails and each image's
facts are made first, in a process pool with a progress bar, and kept for the next time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from lorakit import quiet

quiet.install()  # before any library loads: their notices and bars stay out of our output

from lorakit.options import DEFAULT_JOBS, Jobs, err_console, user_errors
from lorakit.tagging.relations import VOCABS

Vocabulary = Literal[VOCABS]
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def prepare(root: Path, jobs: int, show_progress: bool, read_only: bool = False):
    """The dataset with every image's facts and thumbnail made (only what changed); with
    `read_only`, kept in lorakit's user cache, so nothing is written in DIR."""
    from lorakit.parallel import run_all
    from lorakit.review.dataset import Dataset
    from lorakit.review.facts import make_facts

    data = Dataset(root, read_only)
    todo = data.cache.missing(list(data.entries))
    if todo:
        data.cache.make_folder()
        results = run_all(make_facts, [(str(root / rel), str(data.cache.folder), str(root)) for rel in todo], jobs,
                          "thumbnails", err_console, show_progress)
        for rel, facts in zip(todo, results):
            data.cache.put(rel, facts)
            data.entries[rel].facts = data.cache.get(rel)
        data.cache.save()
    return data


def review(
    dir: Annotated[Path, typer.Argument(help="The dataset folder (N_name folders of images and captions).")],
    port: Annotated[int, typer.Option(help="0: any free port.")] = 0,
    host: Annotated[str, typer.Option(help="Where to listen; anything but 127.0.0.1 / localhost is reachable "
                                           "from other machines.")] = "127.0.0.1",
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse every write.")] = False,
    vocab: Annotated[Vocabulary, typer.Option(help="Marks tags unknown to, or implied in, this vocabulary.")]
        = "danbooru",
    open_: Annotated[bool, typer.Option("--open", help="Open the page in the default browser.")] = False,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="A train config (lora.toml): the page shows each image's bucket, scale and token count "
        "as this config trains it. Default: lorakit's defaults (512 px, buckets 256-1024 by 64, 75 tokens).")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="The tagger the page's 'Tag with the tagger' runs (as tag auto --model).")] = None,
    model_dir: Annotated[Optional[Path], typer.Option(
        help="Folder with model.onnx and its tag list, for the page's tagger (as tag auto --model-dir).")] = None,
    jobs: Jobs = DEFAULT_JOBS,
) -> None:
    """Look at the dataset and fix its captions in a browser: gallery by folder, tag filters,
    tag frequencies, caption editing with autocompletion, bulk edits (undone by `tag undo`),
    near-duplicates, scan flags, excluded images. Stop with Ctrl-C."""
    import socket

    import uvicorn

    from lorakit.discovery import check_source
    from lorakit.review.server import Review
    from lorakit.review.trainer import TrainerView
    from lorakit.tagging.auto import AutoOptions
    from lorakit.tagging.relations import load

    with user_errors():
        root = check_source(dir)
        trainer = None
        if config is not None:
            from lorakit.train.config_toml import load as load_config

            trainer = TrainerView(root, load_config(config), str(config))
        data = prepare(root, jobs, err_console.is_terminal, read_only)
        server = Review(data, read_only, load(vocab), vocab, trainer or TrainerView(root),
                        AutoOptions(vocab, model, model_dir))
        server.trainer.warm()
    if host not in LOOPBACK:  # any name may reach it: every request needs the key the address carries
        import secrets

        server.key = secrets.token_urlsafe(24)
        err_console.print(f"[yellow]warning[/yellow]: listening on {host}: other machines can reach this page; "
                          "only a browser that opened the address below (it carries a key) can use it",
                          highlight=False)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        err_console.print(f"[red]error[/red]: cannot listen on {host}:{port} ({exc.strerror})", highlight=False)
        raise typer.Exit(2) from None
    bound = sock.getsockname()[1]
    server.cookie = f"lorakit_key_{bound}"
    if host in LOOPBACK:  # the page answers only to its own name: a DNS-rebinding site cannot read it
        server.allowed_hosts = {f"{name}:{bound}" for name in (host, "127.0.0.1", "localhost", "[::1]")}
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{bound}/"
    if server.key is not None:
        url += f"?key={server.key}"
    err_console.print(f"lorakit review: {len(data.entries)} images in {root}\n{url}  (Ctrl-C stops)", highlight=False)
    if host in ("0.0.0.0", "::"):  # any address of this machine: other machines use one of its own names
        err_console.print(f"from other machines: {url.replace('127.0.0.1', socket.gethostname(), 1)}", highlight=False)
    if open_:
        import webbrowser

        webbrowser.open(url)
    # uvicorn's own lines ("Invalid HTTP request received") are not ours to print: errors only
    config = uvicorn.Config(server.app(), log_level="error", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    err_console.print("stopped", highlight=False)
