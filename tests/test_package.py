"""The package as others install it: a wheel with one import root (`lorakit`, the stages below
it), its data inside, and the commands working from that install with no checkout on the path."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from conftest import ROOT
from PIL import Image


def _copy_checkout(source):
    """The tracked files, copied: setuptools builds in the source tree, and the checkout stays clean."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    return source


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, installed into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = _copy_checkout(tmp / "source")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert build.returncode == 0, build.stderr[-2000:]
    [wheel] = (tmp / "dist").glob("lorakit-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                              "--target", str(tmp / "site"), str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    return wheel, tmp


def _run(tmp, *args, cwd=None):
    """`python -S` (no site: the checkout's editable finder never loads) with the installed wheel
    first and the environment's dependencies after it; run outside the checkout."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "LANG": "C.UTF-8", "LORAKIT_CACHE": str(tmp / "cache"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(tmp / "site"), sysconfig.get_paths()["purelib"]])}
    return subprocess.run([sys.executable, "-S", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or tmp, env=env, timeout=300)


def test_the_wheel_has_one_import_root_and_its_data(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"lorakit", "lorakit-0.1.0.dist-info"}
    for data in ("lorakit/tag_lists/builtin_e621_implications.csv", "lorakit/tag_lists/kaomoji.txt",
                 "lorakit/train/templates/subject.txt", "lorakit/train/model_configs/clip_merges.txt.gz",
                 "lorakit/curate/upscale/archs.py", "lorakit/review/templates/index.html",
                 "lorakit/review/static/app.js", "lorakit/review/static/app.css"):
        assert data in names, data
    entry_points = zipfile.ZipFile(wheel).read("lorakit-0.1.0.dist-info/entry_points.txt").decode()
    for script in ("curate = lorakit.curate.cli:app", "tag = lorakit.tagging.cli:app", "train = lorakit.train.cli:app"):
        assert script in entry_points


def test_the_installed_commands_work_without_the_checkout(installed, tmp_path):
    _, tmp = installed
    site, bin_dir = tmp / "site", tmp / "site" / "bin"
    # three questions to the installed package, one interpreter: where the modules load from, the
    # review page's files, the tokenizer's config folder (each answer on its own line)
    probe = _run(tmp, "-c", "import lorakit.train.config as c, lorakit.tagging.cli as t; print(c.__file__, t.__file__)\n"
                            "from lorakit.review.server import HERE; print((HERE / 'templates' / 'index.html').is_file(),"
                            " (HERE / 'static' / 'app.js').is_file(), HERE)\n"
                            "from lorakit.train.single_file import config_folder; print(config_folder('sd1'))")
    assert probe.returncode == 0, probe.stdout + probe.stderr[-1500:]
    where, page, tokenizer = probe.stdout.splitlines()
    assert all(p.startswith(str(site)) for p in where.split()), probe.stdout
    for script in ("curate", "tag", "train", "lorakit"):
        proc = _run(tmp, bin_dir / script, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stderr[-1500:]
    assert page.split()[:2] == ["True", "True"] and page.split()[2].startswith(str(site)), page

    folder = tmp_path / "data" / "2_kit"
    folder.mkdir(parents=True)
    for k in range(2):
        Image.new("RGB", (64, 64), (60 * k, 90, 200)).save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text("kit, 1girl, solo, very long hair, long hair\n")
    report = json.loads(_run(tmp, bin_dir / "curate", "inspect", folder, "--json").stdout)
    assert report["counts"] == {"ok": 2}
    pruned = _run(tmp, bin_dir / "tag", "prune", folder, "--json")  # the built-in implications ship inside
    assert pruned.returncode == 0, pruned.stderr[-1500:]
    assert (folder / "0.txt").read_text().strip() == "kit, 1girl, solo, very long hair"
    config = _run(tmp, bin_dir / "train", "init", "--preset", "ti", "--image-root", tmp_path / "data").stdout
    (tmp_path / "ti.toml").write_text(config)
    plan = _run(tmp, bin_dir / "train", "plan", tmp_path / "ti.toml", "--json")  # the shipped "subject" template
    assert plan.returncode == 0 and json.loads(plan.stdout)["steps_per_epoch"] == 4, plan.stderr[-1500:]
    assert "model_configs" in tokenizer, probe.stdout


def test_the_editable_install_prints_no_warning(tmp_path):
    """`make setup`'s `pip install -e .` runs setuptools' PEP 660 hook, `build_editable`: run it
    directly (a second of work, not a virtual environment) and read everything it prints. A data
    folder missing from `packages` prints a 40-line "Package would be ignored" block."""
    source = _copy_checkout(tmp_path / "source")
    (tmp_path / "wheel").mkdir()
    build = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                            "build_meta.build_editable(sys.argv[1])", str(tmp_path / "wheel")],
                           capture_output=True, text=True, cwd=source,
                           # as the Makefile runs pip: setuptools' generic editable notice filtered out
                           env={**os.environ, "PYTHONWARNINGS": "ignore:Editable installation"})
    assert build.returncode == 0, build.stderr[-2000:]
    printed = build.stdout + build.stderr
    assert "would be ignored" not in printed and "Warning" not in printed, printed[-3000:]
