"""Caption edits under hostile conditions (a full disk, odd bytes, owners and modes, a second
command, a tampered or broken backup): every case is checked on the files themselves."""

import hashlib
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import by_path, cli, cli_json, run, run_json

from lorakit.locks import folder_lock
from lorakit.tagging.backups import BACKUPS

BLOCK = 4096


def digest(root: Path) -> dict[str, str]:
    """Every file under root (lorakit's own folder left out) with its sha256."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".lorakit" not in p.parts}


def dataset(root: Path, captions: dict[str, bytes]) -> Path:
    for rel, data in captions.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".png").write_bytes(b"")  # discovery goes by name; no pixel is read
        path.write_bytes(data)
    return root


def backups(root: Path) -> list[Path]:
    return sorted((root / BACKUPS).glob("*.json"))


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a disk that fills up. Root can mount one; elsewhere the test skips."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill the disk, then free `leave` bytes."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while os.write(fd, b"\xaa" * BLOCK) == BLOCK:
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def whole(path: Path, *allowed: bytes) -> bool:
    data = path.read_bytes()
    return b"\0" not in data and data in allowed


def test_a_full_disk_leaves_every_caption_whole_and_undo_keeps_its_backup(small_disk):
    root = small_disk / "data"
    names = [f"{i:02d}.txt" for i in range(24)]
    originals = {n: (f"tag{i}, " + "x" * (BLOCK - 200) + "\n").encode() for i, n in enumerate(names)}
    dataset(root, originals)
    before = digest(root)
    long_tag = "y" * 300  # every caption grows past its one block
    fill(small_disk, leave=(len(names) + 6) * BLOCK)  # room for the backup and a few captions

    edited = cli_json("tag", "edit", root, "--add", long_tag, check=1)
    failed = [i["path"] for i in edited["items"] if i["status"] == "failed"]
    changed = [i["path"] for i in edited["items"] if i["status"] == "changed"]
    assert failed and changed, edited["counts"]
    for name in names:  # each caption is the old one or the new one, never a mix or NUL padding
        new = originals[name][:-1] + b", " + long_tag.encode() + b"\n"
        assert whole(root / name, new if name in changed else originals[name])
    assert len(backups(root)) == 1

    # the disk is still full: an undo that must grow nothing works, whatever the backup lists
    undone = cli_json("tag", "undo", root)
    assert {i["path"] for i in undone["items"] if i["status"] == "restored"} == set(changed)
    assert digest(root) == before and backups(root) == []

    # an edit that shrinks the captions, then an undo on a full disk that must grow them back
    (small_disk / "filler").unlink()
    cli_json("tag", "edit", root, "--remove", "x*")
    fill(small_disk, leave=0)
    undone = cli_json("tag", "undo", root, check=1)
    assert any(i["status"] == "failed" for i in undone["items"])
    for name in names:
        assert whole(root / name, originals[name], f"tag{names.index(name)}\n".encode())
    assert len(backups(root)) == 1  # not deleted: it still holds text not restored
    (small_disk / "filler").unlink()
    cli_json("tag", "undo", root)
    assert digest(root) == before and backups(root) == []


def test_a_backup_that_cannot_be_written_stops_the_edit_before_any_caption(small_disk):
    root = dataset(small_disk / "data", {f"{i}.txt": b"a, b\n" for i in range(5)})
    before = digest(root)
    (root / ".lorakit").mkdir()
    fill(small_disk, leave=0)
    proc = cli("tag", "edit", root, "--add", "c", check=2)
    assert "cannot write the backup" in proc.stderr and "no caption was changed" in proc.stderr
    assert digest(root) == before


def test_edit_and_undo_keep_every_byte_they_did_not_mean_to_change(tmp_path):
    captions = {
        "bom.txt": b"\xef\xbb\xbfred hair, smile\r\nA girl smiling.\r\nsecond sentence\r\n",
        "lines.txt": b"blue eyes\nkohya picks one of these lines\nor this one\n",
        "latin1.txt": b"caf\xe9, \xff\xfe broken\nd\xe9j\xe0 vu\n",
        "no_newline.txt": b"solo",
        "blank_first.txt": b"\nonly a sentence, with a comma\n",
    }
    root = dataset(tmp_path / "data", captions)
    before = digest(root)
    cli_json("tag", "edit", root, "--add", "new tag")
    got = {name: (root / name).read_bytes() for name in captions}
    assert got["bom.txt"] == b"\xef\xbb\xbfred hair, smile, new tag\r\nA girl smiling.\r\nsecond sentence\r\n"
    assert got["lines.txt"] == b"blue eyes, new tag\nkohya picks one of these lines\nor this one\n"
    assert got["latin1.txt"] == b"caf\xe9, \xff\xfe broken, new tag\nd\xe9j\xe0 vu\n"
    assert got["no_newline.txt"] == b"solo, new tag"
    assert got["blank_first.txt"] == b"new tag\nonly a sentence, with a comma\n"  # line 1 was empty
    removed = cli_json("tag", "edit", root, "--remove", "*broken")  # a tag that is not UTF-8 is still a tag
    assert (root / "latin1.txt").read_bytes() == b"caf\xe9, new tag\nd\xe9j\xe0 vu\n"
    assert removed["counts"] == {"ok": 4, "changed": 1}
    assert by_path(removed)["latin1.txt"]["before"] == ["caf\ufffd", "\ufffd\ufffd broken", "new tag"]
    cli_json("tag", "undo", root)
    cli_json("tag", "undo", root)
    assert digest(root) == before


def test_edit_keeps_each_captions_owner_and_mode(tmp_path):
    root = dataset(tmp_path / "data", {f"o{i}.txt": f"tag{i}\n".encode() for i in range(1, 6)})
    modes = {"o1.txt": 0o600, "o2.txt": 0o644, "o3.txt": 0o444, "o4.txt": 0o640, "o5.txt": 0o664}
    for name, mode in modes.items():
        os.chmod(root / name, mode)
    owners = {}
    if os.geteuid() == 0:
        os.chown(root / "o1.txt", 65534, 65534)  # nobody
        os.chown(root / "o4.txt", 1, 1)
    for name in modes:
        st = (root / name).stat()
        owners[name] = (st.st_uid, st.st_gid)
    cli_json("tag", "edit", root, "--add", "x")
    for name, mode in modes.items():
        st = (root / name).stat()
        assert (root / name).read_bytes().endswith(b", x\n")
        assert (oct(st.st_mode & 0o7777), (st.st_uid, st.st_gid)) == (oct(mode), owners[name]), name
    cli_json("tag", "undo", root)
    for name, mode in modes.items():
        st = (root / name).stat()
        assert (oct(st.st_mode & 0o7777), (st.st_uid, st.st_gid)) == (oct(mode), owners[name]), name


def test_a_second_command_on_the_dataset_refuses_and_changes_nothing(tmp_path):
    root = dataset(tmp_path / "data", {f"{i}.txt": b"a, b\n" for i in range(3)})
    cli_json("tag", "edit", root, "--add", "first")  # a backup to undo
    before = digest(root)
    held, release = threading.Event(), threading.Event()

    def hold():
        with folder_lock(root, "tag edit"):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        held.wait(10)
        for args in (("edit", root, "--add", "second"), ("undo", root), ("prune", root)):
            proc = run("tag", *args, check=2)
            assert "in use by `tag edit` (process" in proc.stderr, proc.stderr
        assert digest(root) == before
        assert len(backups(root)) == 1
        assert run_json("tag", "edit", root, "--add", "second", "--dry-run")["counts"] == {"planned": 3}
    finally:
        release.set()
        holder.join()
    run_json("tag", "edit", root, "--add", "second")  # free again
    assert (root / "0.txt").read_bytes() == b"a, b, first, second\n"


def test_undo_writes_and_removes_nothing_outside_the_dataset(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_bytes(b"precious\n")
    root = dataset(tmp_path / "data", {"a.txt": b"new\n"})
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / BACKUPS).mkdir(parents=True)
    (root / BACKUPS / "20260101-000000-000000-edit.json").write_text(json.dumps({
        "command": "edit",
        "changed": {"a.txt": "old\n", "../written.txt": "pwned\n", str(victim): "pwned\n",
                    "link/victim.txt": "pwned\n"},
        "created": ["../outside/victim.txt", str(victim), "link/victim.txt", ".lorakit/lock"],
    }))
    before_outside, before = digest(outside), digest(root)
    proc = cli("tag", "undo", root, check=1)
    assert "outside the dataset, or files that are not captions: ../written.txt" in proc.stdout + proc.stderr
    assert digest(outside) == before_outside and not (tmp_path / "written.txt").exists()
    assert digest(root) == before  # nothing restored from a backup that is not to be trusted
    assert backups(root) == [] and len(list((root / BACKUPS).glob("*.unreadable"))) == 1  # set aside, kept


def test_a_truncated_backup_is_set_aside_and_the_next_undo_reaches_the_edit_before(tmp_path):
    root = dataset(tmp_path / "data", {f"{i}.txt": b"a, b\n" for i in range(3)})
    before = digest(root)
    cli_json("tag", "edit", root, "--add", "one")
    cli_json("tag", "edit", root, "--add", "two")
    first, last = backups(root)
    last.write_bytes(last.read_bytes()[:20])
    proc = cli("tag", "undo", root, check=1)
    assert f"{last.name}" in proc.stdout + proc.stderr and "cannot be read" in proc.stdout + proc.stderr
    assert (root / "0.txt").read_bytes() == b"a, b, one, two\n"  # nothing restored from half a backup
    assert last.with_name(last.name + ".unreadable").is_file()  # kept, never deleted
    # the edit before it: its captions were changed since (by the edit whose backup is lost)
    assert all(i["status"] == "failed" for i in cli_json("tag", "undo", root, check=1)["items"])
    cli_json("tag", "undo", root, "--force")
    assert digest(root) == before


def test_captions_that_cannot_be_written_are_left_out_of_the_backup(tmp_path, monkeypatch):
    """A failed write must not block later undos: the backup holds only what was written."""
    import lorakit.tagging.rewrite as rewrite_module
    from lorakit.tagging.edit import EditOps, apply

    root = dataset(tmp_path / "data", {f"{i}.txt": b"a\n" for i in range(4)})
    before = digest(root)
    real = rewrite_module.write_texts

    def failing(changes):
        keep = [(p, t) for p, t in changes if not p.endswith("2.txt")]
        failed = real(keep)
        failed.update({p: "PermissionError: Permission denied" for p, _ in changes if p.endswith("2.txt")})
        return failed

    monkeypatch.setattr(rewrite_module, "write_texts", failing)
    report = rewrite_module.rewrite(root, "edit", lambda image, tags: apply(tags, EditOps(add=["b"])), False)
    assert [o.path for o in report.failed] == ["2.txt"]
    (manifest,) = backups(root)
    assert sorted(json.loads(manifest.read_text())["changed"]) == ["0.txt", "1.txt", "3.txt"]
    monkeypatch.undo()
    cli_json("tag", "undo", root)
    assert digest(root) == before and backups(root) == []


@pytest.mark.parametrize("link", [".lorakit", ".lorakit/backups", ".lorakit/lock"])
def test_lorakits_own_folder_linked_elsewhere_is_never_written_through(tmp_path, link):
    outside = tmp_path / "outside"
    (outside / "backups").mkdir(parents=True)
    victim = outside / "lock"
    victim.write_bytes(b"precious\n")
    root = dataset(tmp_path / "data", {"a.txt": b"a, b\n"})
    (root / ".lorakit").mkdir(exist_ok=True)
    target = {".lorakit": outside, ".lorakit/backups": outside / "backups", ".lorakit/lock": victim}[link]
    if link == ".lorakit":
        (root / ".lorakit").rmdir()
    (root / link).symlink_to(target)
    before, before_outside = digest(root), digest(outside)
    proc = cli("tag", "edit", root, "--add", "c", check=2)
    assert f"{root / link}" in proc.stderr and ("is a link" in proc.stderr), proc.stderr
    cli("tag", "undo", root, check=2)
    assert digest(root) == before and digest(outside) == before_outside
    assert sorted(p.name for p in outside.rglob("*")) == ["backups", "lock"]


def test_a_linked_or_utf16_caption_is_not_edited(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"outside caption\n")
    root = dataset(tmp_path / "data", {"u.txt": "red, blue\n".encode("utf-16"), "ok.txt": b"a\n"})
    (root / "s.png").write_bytes(b"")
    (root / "s.txt").symlink_to(outside)
    before = digest(root)
    report = cli_json("tag", "edit", root, "--add", "new", check=1)
    items = by_path(report)
    assert items["s.txt"]["status"] == "failed" and "a link: not edited" in items["s.txt"]["message"]
    assert items["u.txt"]["status"] == "failed" and "UTF-16" in items["u.txt"]["message"]
    assert (root / "s.txt").is_symlink() and outside.read_bytes() == b"outside caption\n"
    assert (root / "ok.txt").read_bytes() == b"a, new\n"
    cli_json("tag", "undo", root)
    assert digest(root) == before and (root / "s.txt").is_symlink()


def test_undo_leaves_a_caption_changed_since_the_edit_unless_forced(tmp_path):
    root = dataset(tmp_path / "data", {"a.txt": b"a\n", "b.txt": b"b\n"})
    (root / "c.png").write_bytes(b"")
    cli_json("tag", "edit", root, "--add", "x")  # changes a and b, creates c
    (root / "a.txt").write_bytes(b"a, x, typed by hand\n")  # the user went on editing
    (root / "c.txt").write_bytes(b"x, mine now\n")
    report = cli_json("tag", "undo", root, check=1)
    items = by_path(report)
    assert items["a.txt"]["status"] == "failed" and "changed since `edit` wrote it" in items["a.txt"]["message"]
    assert items["c.txt"]["status"] == "failed" and "--force" in items["c.txt"]["message"]
    assert items["b.txt"]["status"] == "restored" and (root / "b.txt").read_bytes() == b"b\n"
    assert (root / "a.txt").read_bytes() == b"a, x, typed by hand\n" and (root / "c.txt").is_file()
    assert len(backups(root)) == 1  # kept for the forced undo
    cli_json("tag", "undo", root, "--force")
    assert (root / "a.txt").read_bytes() == b"a\n" and not (root / "c.txt").exists() and backups(root) == []


def test_redo_puts_back_what_undo_reverted_until_a_new_edit(tmp_path):
    root = dataset(tmp_path / "data", {"a.txt": b"a\r\nline two\r\n", "b.txt": b"b\n"})
    (root / "c.png").write_bytes(b"")
    original = digest(root)
    cli_json("tag", "edit", root, "--add", "x")  # changes a and b, creates c
    edited = digest(root)
    cli_json("tag", "undo", root)
    assert digest(root) == original
    assert cli_json("tag", "redo", root, "--dry-run")["counts"] == {"planned": 3}
    cli_json("tag", "redo", root)
    assert digest(root) == edited  # byte for byte, the created caption too
    cli_json("tag", "undo", root)  # the edit's backup came back with the redo
    assert digest(root) == original
    cli_json("tag", "edit", root, "--add", "y")  # a new edit: nothing to redo over it
    proc = cli("tag", "redo", root, check=2)
    assert "nothing to redo" in proc.stderr


def test_two_undos_are_redone_in_the_order_the_edits_were_made(tmp_path):
    root = dataset(tmp_path / "data", {"a.txt": b"a\n"})
    cli_json("tag", "edit", root, "--add", "one")
    cli_json("tag", "edit", root, "--add", "two")
    cli_json("tag", "undo", root)
    cli_json("tag", "undo", root)
    assert (root / "a.txt").read_bytes() == b"a\n"
    cli_json("tag", "redo", root)
    assert (root / "a.txt").read_bytes() == b"a, one\n"
    cli_json("tag", "redo", root)
    assert (root / "a.txt").read_bytes() == b"a, one, two\n"


def test_a_backup_naming_images_is_set_aside_and_no_image_is_touched(tmp_path):
    """A backup shipped with a dataset (or hand-made) that names images: undo would have written
    text into one and deleted another. Backups only ever hold captions."""
    from PIL import Image

    root = dataset(tmp_path / "data", {"a.txt": b"a\n"})
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(root / name)
    (root / BACKUPS).mkdir(parents=True)
    (root / BACKUPS / "99999999-000000-000000-review-edit.json").write_text(json.dumps({
        "command": "review-edit", "changed": {"a.png": "not an image any more"}, "created": ["b.png"]}))
    before = digest(root)
    proc = cli("tag", "undo", root, check=1)
    assert "not captions: a.png" in proc.stdout + proc.stderr
    assert digest(root) == before and len(list((root / BACKUPS).glob("*.unreadable"))) == 1
