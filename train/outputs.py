"""The output folder of a run, as one run at a time owns it (DESIGN "Safety rules"):

- `claimed(dir)`: the folder checked before any model loads (a file there, or a folder that cannot
  be written, is an error now, not after hours of training) and locked for the whole run, so a
  second `train run` / `train resume` into it refuses at once, naming the holder;
- `Record`: `.lorakit/saves.json`, the intermediate files this run (and the runs it resumes)
  wrote, each with the size and time it was written with. `saving.keep_last_n` deletes only
  those, and only while unchanged: a user's own `NAME-mybest.safetensors`, a file of an earlier
  run, or one copied over ours is never ours to delete;
- `read_state` / `saved_config`: what `train resume` continues from, checked before anything is
  written (a truncated or foreign file is an error naming it, not a traceback).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

import torch

from lorakit.errors import UserError
from lorakit.fsio import atomic_path, own_folder, write_text
from lorakit.locks import folder_lock
from lorakit.train.config import Config
from lorakit.train.config_toml import check, from_dict

STATE = "state.pt"  # the newest state: `train resume` continues from it
CONFIG = "config.json"  # the run's config, beside it
RECORD = Path(".lorakit") / "saves.json"
STATE_KEYS = {"network", "optimizer", "step", "embeddings", "scaler"}  # what Run.state writes


@contextmanager
def claimed(out_dir: Path, command: str, main: bool = True, create: bool = True) -> Iterator[None]:
    """Hold `out_dir` for a run (`create`: making it first; a resume needs it there). `main`: the
    first process; under `accelerate launch` the others write nothing there and take no lock
    (they would refuse each other)."""
    if not main:
        yield
        return
    if not create and not out_dir.is_dir():
        raise _no_state(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"output.dir {out_dir} is a file, or lies under one: give a folder") from None
    except OSError as e:
        raise UserError(f"cannot create output.dir {out_dir}: {e.strerror or e}") from None
    # refused at once: a second run waiting for hours would surprise more than an error
    with folder_lock(out_dir, command, wait=0):
        yield


@contextmanager
def landing(path: Path) -> Iterator[None]:
    """The block writes `path` atomically; if it cannot (a full disk, a read-only folder), the run
    stops with one error line naming the file, and what was there before is still there, whole."""
    try:
        yield
    except OSError as e:
        kept = f"the previous {path.name} is kept" if path.exists() else "nothing half-written is left"
        raise UserError(f"could not write {path}: {e.strerror or e}; {kept}") from None


def _ours(name: str) -> bool:
    """A name the record may hold: a file in the folder, or in a folder of it (NAME-LABEL_embeddings/);
    a path leading anywhere else is not ours."""
    path = PurePosixPath(name)
    return 1 <= len(path.parts) <= 2 and not path.is_absolute() and not any(
        p in (".", "..") or "\\" in p for p in path.parts)


def _valid(data) -> bool:
    def stamp(label, step) -> bool:
        return isinstance(label, str) and isinstance(step, int)
    try:
        return all(stamp(s["label"], s["step"]) and all(
            isinstance(name, str) and _ours(name) and len(v) == 2 and all(isinstance(x, int) for x in v)
            for name, v in s["files"].items()) for s in data["saves"]) and \
            (data["state"] is None or stamp(data["state"]["label"], data["state"]["step"]))
    except (KeyError, TypeError, AttributeError):
        return False


class Record:
    """What this run wrote: `saves`, oldest first, each {"label", "step", "files": {name: [size,
    mtime_ns]}}; `state`: the label and step of the state.pt this run wrote last."""

    def __init__(self, out_dir: Path, resumed_at: int | None = None):
        """`resumed_at`: the step of the state a resumed run continues from; a fresh run (None)
        owns none of the files an earlier run left."""
        self.out_dir, self.path = out_dir, out_dir / RECORD
        self.saves: list[dict] = []
        self.state: dict | None = None
        self.final: dict[str, list[int]] = {}  # the final files, once the run has written them
        if resumed_at is not None:
            self._read()
            if self.state is None or self.state["step"] != resumed_at:  # killed before the record caught up
                self.state = {"label": self.label_at(resumed_at) or f"step{resumed_at:08d}", "step": resumed_at}

    def _read(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError, ValueError):
            return  # unreadable: nothing is known to be ours, so nothing will be deleted
        if _valid(data):
            self.saves, self.state = data["saves"], data["state"]
            final = data.get("final", {})
            if isinstance(final, dict) and all(isinstance(n, str) and _ours(n) for n in final):
                self.final = final

    def wrote(self, label: str, step: int, paths: list[Path]) -> None:
        self.saves.append({"label": label, "step": step, "files": {}})
        for path in paths:
            self.add(label, path)

    def add(self, label: str, path: Path) -> None:
        st = path.stat()
        save = next(s for s in self.saves if s["label"] == label)
        save["files"][path.relative_to(self.out_dir).as_posix()] = [st.st_size, st.st_mtime_ns]

    def has(self, label: str) -> bool:
        return any(s["label"] == label for s in self.saves)

    def label_at(self, step: int) -> str | None:
        """The label of this run's save at `step`, if there is one."""
        return next((s["label"] for s in self.saves if s["step"] == step), None)

    def prune(self, keep: int | None) -> None:
        """Delete the files of all but the newest `keep` saves (None or 0: keep every save, as
        kohya_ss does with 0), each only if unchanged since it was written."""
        if keep is None or keep < 1 or len(self.saves) <= keep:
            return
        old, self.saves = self.saves[:-keep], self.saves[-keep:]
        for save in old:
            for name, (size, mtime) in save["files"].items():
                path = self.out_dir / name
                try:
                    st = path.lstat()
                    if (st.st_size, st.st_mtime_ns) == (size, mtime):
                        path.unlink()
                except OSError:
                    pass  # already gone: nothing to do
                if path.parent != self.out_dir:  # NAME-LABEL_embeddings/ goes with its last file
                    try:
                        path.parent.rmdir()
                    except OSError:
                        pass  # the user keeps something there

    def write(self) -> None:
        own_folder(self.out_dir, RECORD.parent)  # never through a link out of the output folder
        with landing(self.path):
            write_text(self.path, json.dumps({"saves": self.saves, "state": self.state, "final": self.final},
                                             indent=1))

    def finished(self, paths: list[Path]) -> None:
        """The run wrote its final files: a resume of it then has nothing to do."""
        self.final = {}
        for path in paths:
            st = path.stat()
            self.final[path.relative_to(self.out_dir).as_posix()] = [st.st_size, st.st_mtime_ns]

    def has_final(self, paths: list[Path]) -> bool:
        """Whether these final files are there as this run wrote them (a file of the same name
        that it did not write, or that changed, is no reason to stop)."""
        def stamp(path: Path) -> list[int] | None:
            try:
                st = path.stat()
            except OSError:
                return None
            return [st.st_size, st.st_mtime_ns]
        return bool(paths) and all(self.final.get(p.relative_to(self.out_dir).as_posix()) == stamp(p) for p in paths)


def _no_state(out_dir: Path) -> UserError:
    return UserError(f"{out_dir} holds no saved state: train with saving.save_state = true first, "
                     "or stop a run with Ctrl-C (it saves the state)")


def saved_config(out_dir: Path) -> Config:
    """The config of a run that kept its state (written beside state.pt)."""
    path = out_dir / CONFIG
    if not (out_dir / STATE).is_file() or not path.is_file():
        raise _no_state(out_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        config = from_dict(Config, data)
        check(config)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError, UserError) as e:
        raise UserError(f"{path}: not the config of a lorakit run ({e}); it was not written by "
                        "`train run`, or was damaged") from None
    return config


def read_state(out_dir: Path) -> dict:
    """state.pt, loaded without running any code in it (weights_only) and checked for the keys
    `Run.state` writes."""
    path = out_dir / STATE
    if not path.is_file():
        raise _no_state(out_dir)
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 (a damaged file fails in torch.load in many ways: pickle, zip, EOF)
        raise UserError(f"{path}: not a state lorakit saved, or truncated ({type(e).__name__}); "
                        "resume from a copy, or start again with `train run`") from None
    if not (isinstance(state, dict) and set(state) == STATE_KEYS and isinstance(state["step"], int)
            and state["step"] >= 0 and isinstance(state["network"], dict) and isinstance(state["optimizer"], dict)):
        keys = ", ".join(sorted(map(str, state))) if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path}: not a state lorakit saved (it holds {keys}); resume from a copy, "
                        "or start again with `train run`")
    return state


def write_state(state: dict, config_json: str, out_dir: Path) -> None:
    """state.pt, then config.json, each atomically: a run killed while writing them leaves the
    previous ones whole."""
    with landing(out_dir / STATE), atomic_path(out_dir / STATE) as tmp:
        torch.save(state, tmp)
    with landing(out_dir / CONFIG):
        write_text(out_dir / CONFIG, config_json)
