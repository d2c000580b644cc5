"""A training run's output folder under a careless or hostile user (issue 20): keep_last_n deletes
only what lorakit wrote, Ctrl-C / SIGTERM leave a resumable run, two runs cannot share a folder,
a full disk keeps the previous file, and a damaged state is refused. Each test checks the files
(hashes before and after) and the exit code and message, on the tiny SD1.5-shaped model."""

import errno
import json
import os
import pathlib
import shutil
import signal

import pytest
import torch
from conftest import train, train_json, tree_digest
from conftest import train_config as config
from safetensors.torch import load_file

LOCK = ".lorakit/lock"  # the lock records who holds it: the one file a refused command may rewrite


def digest(root):
    return {k: v for k, v in tree_digest(root).items() if not k.endswith(LOCK)}


def error_line(proc, *expected):
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert all(text in lines[0] for text in expected), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


def same_weights(a, b):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def whole(base, tmp_path_factory):
    """The uninterrupted 6-step run every interrupted one must equal."""
    tmp = tmp_path_factory.mktemp("whole")
    train_json("run", config(tmp, base, "whole"))
    return tmp / "whole" / "out" / "kit.safetensors"


def signal_at(monkeypatch, at_step, signum, again_while_saving=False):
    """Deliver `signum` to this process in the middle of optimizer step `at_step` (1-based), before
    its loss is computed: the step must still finish. `again_while_saving`: once more while the
    state is written."""
    import lorakit.train.loop as loop
    import lorakit.train.saving as saving

    real_loss = loop.batch_loss

    def batch_loss(run, batch, step, micro, *args):
        if step + 1 == at_step and micro == 0:
            os.kill(os.getpid(), signum)
        return real_loss(run, batch, step, micro, *args)

    monkeypatch.setattr(loop, "batch_loss", batch_loss)
    if again_while_saving:
        real_write = saving.write_state

        def write_state(*args):
            os.kill(os.getpid(), signum)
            return real_write(*args)

        monkeypatch.setattr(saving, "write_state", write_state)


def test_sigterm_mid_step_saves_a_checkpoint_and_the_state_and_resume_is_exact(tmp_path, base, whole,
                                                                               monkeypatch):
    """SIGTERM (a job scheduler) during step 3 of 6, saving.save_state off: step 3 finishes, then a
    checkpoint and the state are saved anyway, exit 143 with the resume line; the resumed run
    equals the uninterrupted one bit for bit."""
    cfg = config(tmp_path, base, "parts")
    out = tmp_path / "parts" / "out"
    with monkeypatch.context() as m:
        signal_at(m, 3, signal.SIGTERM)
        proc = train("run", cfg, "--set", "saving.save_state=false", check=143)
    assert f"interrupted at step 3 of 6: saved kit-step00000003.safetensors and the state; `train resume {out}`" \
        in " ".join(proc.stderr.split())
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 3
    assert (out / "kit-step00000003.safetensors").is_file() and not (out / "kit.safetensors").exists()
    assert train_json("resume", out)["step"] == 6
    same_weights(whole, out / "kit.safetensors")


def test_a_second_ctrl_c_while_saving_changes_nothing(tmp_path, base, whole, monkeypatch, capfd):
    """Ctrl-C at the end of an epoch (step 4, where the epoch's save falls), and again while the
    state is being written: the save finishes whole, exit 130; the resume is exact."""
    out = tmp_path / "c" / "out"
    with monkeypatch.context() as m:
        signal_at(m, 4, signal.SIGINT, again_while_saving=True)
        proc = train("run", config(tmp_path, base, "c"), check=130)
    assert "already stopping; the step under way and the save will finish" in capfd.readouterr().err
    assert "interrupted at step 4 of 6: saved kit-000002.safetensors" in " ".join(proc.stderr.split())
    assert sorted(p.name for p in out.glob("kit*")) == ["kit-000002.safetensors"]  # no second file at one step
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 4
    assert not list(out.glob(".*.tmp"))
    assert train_json("resume", out)["step"] == 6
    same_weights(whole, out / "kit.safetensors")


def test_keep_last_n_deletes_only_the_files_this_run_wrote(tmp_path, base):
    """The user's own kit-mybest and an older kit-000001 survive keep_last_n = 2, across a resume;
    the run's own older saves and their states go, the newest two and the state stay."""
    cfg = config(tmp_path, base, "k")
    out = tmp_path / "k" / "out"
    out.mkdir(parents=True)
    for name in ("kit-mybest.safetensors", "kit-000001.safetensors"):
        (out / name).write_bytes(os.urandom(64))
    mine = digest(out)
    args = ["--set", "saving.every_n_steps=1", "--set", "saving.every_n_epochs=0", "--set", "saving.keep_last_n=2"]
    assert train_json("run", cfg, *args, "--stop-at", "3")["step"] == 3
    assert train_json("resume", out)["step"] == 6  # the resumed run prunes what the first one wrote
    after = digest(out)
    assert {name: after.get(name) for name in mine} == mine
    assert sorted(p.name for p in out.glob("kit-step*")) == ["kit-step00000004.safetensors",
                                                            "kit-step00000005.safetensors"]
    # state.pt is the newest (step 6, the end); the states of the two kept checkpoints stay beside them
    assert sorted(p.name for p in out.glob("state*")) == ["state-step00000004.pt", "state-step00000005.pt",
                                                          "state.pt"]
    assert torch.load(out / "state-step00000004.pt", weights_only=True)["step"] == 4
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 6


def test_a_second_run_into_a_locked_output_folder_refuses_at_once(tmp_path, base):
    from lorakit.locks import folder_lock

    cfg = config(tmp_path, base, "l")
    out = tmp_path / "l" / "out"
    out.mkdir(parents=True)
    (out / "kit.safetensors").write_bytes(b"a previous result")
    with folder_lock(out, "train run", wait=0):  # another run holds the folder
        before = tree_digest(tmp_path)
        proc = train("run", cfg, check=2)
        error_line(proc, str(out), "is in use by `train run` (process", str(os.getpid()))
        error_line(train("resume", out, check=2), str(out), "is in use")
        assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_an_output_dir_that_is_a_file_is_refused_before_training(tmp_path, base, where):
    cfg = config(tmp_path, base, "f")
    blocker = tmp_path / "f" / "out"
    blocker.write_bytes(b"not a folder")
    target = blocker if where == "file" else blocker / "deeper"
    before = tree_digest(tmp_path)
    proc = train("run", cfg, "--set", f'output.dir="{target}"', check=2)
    error_line(proc, f"output.dir {target} is a file")
    assert tree_digest(tmp_path) == before


def test_a_full_disk_while_saving_keeps_the_previous_file(tmp_path, base, monkeypatch):
    """ENOSPC half-way through writing kit.safetensors: the previous result is kept whole, no
    temporary file is left, one error line names the file; once there is room again `train
    resume` writes it (the state was saved first)."""
    cfg = config(tmp_path, base, "d")
    out = tmp_path / "d" / "out"
    out.mkdir(parents=True)
    (out / "kit.safetensors").write_bytes(b"last week's result")
    previous = tree_digest(out)["kit.safetensors"]
    real = pathlib.Path.write_bytes

    def full_disk(self, data):
        if self.name.startswith(".kit.safetensors."):
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "write_bytes", full_disk)
        proc = train("run", cfg, check=2)
    error_line(proc, f"could not write {out / 'kit.safetensors'}: No space left on device; "
                     "the previous kit.safetensors is kept")
    assert tree_digest(out)["kit.safetensors"] == previous
    assert not list(out.glob(".*.tmp"))
    assert train_json("resume", out)["step"] == 6
    assert set(load_file(str(out / "kit.safetensors")))


@pytest.fixture(scope="module")
def stopped(base, tmp_path_factory):
    """An output folder of a run stopped after one step, with its state."""
    tmp = tmp_path_factory.mktemp("stopped")
    train_json("run", config(tmp, base, "s"), "--stop-at", "1")
    return tmp / "s" / "out"


def _garbage(path):
    path.write_bytes(b"\x00garbage\xff" * 10)


def _truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _foreign(path):
    torch.save({"model": torch.zeros(2), "epoch": 3}, path)


def _not_json(path):
    path.write_bytes(b"{\"model\": ")


def _foreign_json(path):
    path.write_text('{"model": {"base": 3}, "colour": "red"}')


@pytest.mark.parametrize("name, damage, expected", [
    ("state.pt", _garbage, "not a state lorakit saved, or truncated"),
    ("state.pt", _truncated, "not a state lorakit saved, or truncated"),
    ("state.pt", _foreign, "not a state lorakit saved (it holds epoch, model)"),
    ("config.json", _not_json, "not the config of a lorakit run"),
    ("config.json", _foreign_json, "not the config of a lorakit run"),
])
def test_resume_refuses_a_damaged_state_or_config(tmp_path, stopped, name, damage, expected):
    out = tmp_path / "out"
    shutil.copytree(stopped, out)
    damage(out / name)
    before = digest(tmp_path)
    error_line(train("resume", out, check=2), str(out / name), expected)
    assert digest(tmp_path) == before


def test_a_record_naming_paths_outside_the_folder_deletes_nothing(tmp_path):
    """`.lorakit/saves.json` travels with a shared output folder: a path in it leading out of the
    folder (or absolute) makes the whole record untrusted, so keep_last_n deletes nothing."""
    from lorakit.train.outputs import RECORD, Record

    out = tmp_path / "out"
    (out / ".lorakit").mkdir(parents=True)
    victims = [tmp_path / "victim.txt", out / "kit-000001.safetensors"]
    for victim in victims:
        victim.write_text("keep me")
    stamp = [victims[0].stat().st_size, victims[0].stat().st_mtime_ns]
    for name in ("../victim.txt", str(victims[0])):
        (out / RECORD).write_text(json.dumps({"saves": [
            {"label": "000001", "step": 2, "files": {name: stamp, "kit-000001.safetensors": stamp}},
            {"label": "000002", "step": 4, "files": {}}], "state": None}))
        record = Record(out, resumed_at=4)
        assert record.saves == []
        record.prune(1)
    assert all(v.read_text() == "keep me" for v in victims)


@pytest.mark.parametrize("keep", [None, 0])
def test_keep_last_n_unset_or_0_keeps_every_save(tmp_path, keep):
    from lorakit.train.outputs import Record

    record = Record(tmp_path)
    for label in ("000001", "000002", "000003"):
        (tmp_path / f"kit-{label}.safetensors").write_text(label)
        record.wrote(label, int(label), [tmp_path / f"kit-{label}.safetensors"])
    record.prune(keep)
    assert len(list(tmp_path.glob("kit-*"))) == 3 and len(record.saves) == 3


@pytest.mark.parametrize("link", [".lorakit", ".lorakit/lock"])
def test_an_output_folders_lorakit_linked_elsewhere_is_refused(tmp_path, link):
    from lorakit.errors import UserError
    from lorakit.train.outputs import claimed

    out, outside = tmp_path / "out", tmp_path / "outside"
    (out / ".lorakit").mkdir(parents=True)
    outside.mkdir()
    victim = outside / "lock"
    victim.write_bytes(b"precious\n")
    if link == ".lorakit":
        (out / ".lorakit").rmdir()
    (out / link).symlink_to(outside if link == ".lorakit" else victim)
    with pytest.raises(UserError, match="is a link"):
        with claimed(out, "train run"):
            pass
    assert victim.read_bytes() == b"precious\n" and [p.name for p in outside.iterdir()] == ["lock"]


def test_resuming_a_finished_run_rewrites_nothing(tmp_path, base, whole):
    cfg = config(tmp_path, base, "done")
    train_json("run", cfg, "--set", "saving.save_state=true")
    out = tmp_path / "done" / "out"
    same_weights(out / "kit.safetensors", whole)
    def files(folder):  # a resume opens a new, empty TensorBoard event file: only the run's files count
        return {k: v for k, v in digest(folder).items() if not k.startswith("tensorboard/")}

    before = files(out)
    result = train("resume", out)
    assert "finished; nothing left to do" in result.stdout and "no images found" not in result.stdout
    assert files(out) == before  # hashes and times: the final file is not written again
    (out / "kit.safetensors").unlink()  # a run stopped between its state and its final file
    train("resume", out)
    same_weights(out / "kit.safetensors", whole)
