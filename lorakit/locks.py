"""Advisory locks, so two lorakit commands never write one folder at once (DESIGN "Safety rules").

Two `tag edit` on one dataset would each read the captions, then each write its own result: one
edit silently gone. Two `train run` into one output folder would interleave checkpoints and logs.
A command that writes a folder holds `FOLDER/.lorakit/lock` for as long as it writes; a second one waits a short while, then refuses, naming the holder.

The lock is `flock` on an open file: the kernel drops it when the process ends, however it ends
(a kill or a crash leaves no stale lock to clean up by hand). The file records who holds it, for
the message only.
"""

from __future__ import annotations

import errno
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lorakit.errors import UserError
from lorakit.fsio import own_folder

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; commands run unguarded there
    fcntl = None

LOCK = Path(".lorakit") / "lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"`{info['command']}` (process {info['pid']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another lorakit command"


@contextmanager
def folder_lock(folder: Path, command: str, wait: float = 2.0, shared: bool = False,
                name: str = LOCK.name) -> Iterator[None]:
    """Hold the lock of `folder` (its `.lorakit/lock`) while the block runs. Waits up to `wait`
    seconds for another holder, then raises UserError naming it. `shared`: the shares of one
    sharded command (lorakit/shards.py) hold it together, each also holding its own share's
    lock (`name`), while any other command is kept out."""
    if fcntl is None:
        yield
        return
    path = own_folder(folder, LOCK.parent) / name
    try:  # never through a link: the lock file is written, and a link would lead it elsewhere
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        why = "it is a link (move it away)" if e.errno == errno.ELOOP else e.strerror or e
        raise UserError(f"cannot lock {folder}: {path}: {why}") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise UserError(f"{folder} is in use by {_holder(path)}: wait for it to finish, "
                                    "then run this again") from None
                time.sleep(0.05)
        # who holds it, for the message a second command prints; failing to say so is harmless
        try:
            if shared:  # the record of a shared holder would overwrite another's: leave it
                raise OSError
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"command": command, "pid": os.getpid()}).encode(), 0)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the flock
