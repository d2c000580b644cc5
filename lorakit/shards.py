"""Splitting one folder's images between processes, so a 100,000-image folder tags or captions
on several GPUs or machines at once.

Two ways to say which share a process takes: `--shard K/N` (a job array: machine K of N), or
the launcher's environment (`torchrun` and `accelerate launch` set RANK and WORLD_SIZE). An
image belongs to the share picked by a hash of its path relative to the folder, not by its place
in a listing: two machines that list the folder at different moments (an image added between)
still split it disjointly, and every image belongs to exactly one share.
"""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from lorakit.errors import UserError
from lorakit.fsio import own_folder
from lorakit.locks import LOCK, folder_lock

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (lorakit/locks.py); shares run unguarded there
    fcntl = None

_SPEC = re.compile(r"^\s*([0-9]+)\s*/\s*([0-9]+)\s*$")  # ASCII digits: "１/２" is a typo, not a share
MOST = 100_000  # shares; a larger N is a typo, not a cluster


@dataclass(frozen=True)
class Shard:
    index: int = 0  # 0-based
    count: int = 1
    launcher: bool = False  # from RANK / WORLD_SIZE rather than --shard

    def __str__(self) -> str:
        return f"{self.index + 1}/{self.count}"

    @property
    def whole(self) -> bool:
        return self.count == 1

    def mine(self, rel: str) -> bool:
        return self.count == 1 or share_of(rel, self.count) == self.index

    def describe(self, images: int) -> dict:
        """For a report's data: which share, of how many, how many images, told by whom."""
        return {"index": self.index + 1, "count": self.count, "images": images,
                "from": "launcher" if self.launcher else "--shard"}

    def label(self) -> str:
        """For file names (backups, locks): "1of4"."""
        return f"{self.index + 1}of{self.count}"


def share_of(rel: str, count: int) -> int:
    digest = hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    if not (value.strip().isascii() and value.strip().isdigit()):
        raise UserError(f"the environment's {name}={value!r} is not a number")
    return int(value)


def shard(spec: str | None, env: Mapping[str, str] | None = None) -> Shard:
    """The share of this process: from `spec` ("K/N", K counting from 1), else from the
    launcher's RANK and WORLD_SIZE, else the whole folder."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE")
    if spec:
        match = _SPEC.match(spec)
        if not match:
            raise UserError(f"--shard {spec!r}: write K/N, e.g. 2/4 for the second of four shares")
        k, n = int(match.group(1)), int(match.group(2))
        if not 1 <= k <= n or n > MOST:
            raise UserError(f"--shard {spec}: K must be 1..N (and N at most {MOST})")
        if world and world > 1:
            raise UserError(f"--shard {spec} and a launcher (WORLD_SIZE={world}) both split the folder: "
                            "use one of them")
        return Shard(k - 1, n)
    if world and world > 1:
        rank = _env_int(env, "RANK")
        if rank is None or rank >= world:
            raise UserError(f"WORLD_SIZE={world} but RANK={env.get('RANK')!r}: not a launcher's environment")
        return Shard(rank, world, launcher=True)
    return Shard()


def local_device_index(env: Mapping[str, str] | None = None) -> int:
    """Which of this machine's GPUs a launched process uses (LOCAL_RANK; 0 without a launcher)."""
    return _env_int(os.environ if env is None else env, "LOCAL_RANK") or 0


@contextmanager
def shard_lock(root: Path, command: str, share: Shard) -> Iterator[None]:
    """The dataset's lock for a command run on one share: the whole folder's, or, for a share,
    the folder's lock held together with the other shares of the same count, plus this share's
    own (so two processes given the same K/N are refused as two commands are). Shares of another
    count are refused: 1/2 and 2/3 hold overlapping images, and would edit them both."""
    if share.whole:
        with folder_lock(root, command):
            yield
        return
    with folder_lock(root, command, shared=True), _same_count(root, share), \
            folder_lock(root, f"{command} {share}", name=f"lock-{share.label()}"):
        yield


@contextmanager
def _same_count(root: Path, share: Shard) -> Iterator[None]:
    """Hold `lock-shares` shared for as long as this share runs, with the count it runs in
    recorded beside it. Whether another count is running is decided under `lock-shares-gate`:
    when no process holds `lock-shares`, this one records its count; else the recorded count
    must be this one's."""
    if fcntl is None:
        yield
        return
    gate = "lock-shares-gate"
    with folder_lock(root, f"shares of {share.count}", wait=30, name=gate):
        path = own_folder(root, LOCK.parent) / "lock-shares"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody runs shares: ours is the count
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(share.count).encode(), 0)
                fcntl.flock(fd, fcntl.LOCK_SH)
            except BlockingIOError:
                recorded = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                if recorded != str(share.count):
                    raise UserError(f"{root} is being processed in {recorded or 'other'} shares: a share of "
                                    f"{share.count} would overlap theirs; use --shard K/{recorded} or wait for "
                                    "them to finish") from None
                fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
    try:
        yield
    finally:
        os.close(fd)
