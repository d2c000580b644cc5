"""lorakit review in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright) opens the page the command serves, filters by a tag, edits a caption, and undoes it;
the files on disk are checked at each step. Skipped, saying why, where no Chromium is installed
(.ci/run installs it first, so CI runs it)."""

import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import BIN, OFFLINE, ROOT
from test_review import dataset

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")


@pytest.fixture
def served(tmp_path):
    root = dataset(tmp_path / "data")
    env = {**os.environ, **OFFLINE, "COLUMNS": "200"}
    proc = subprocess.Popen([str(BIN / "lorakit"), "review", str(root), "--port", "0", "-j", "2"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    url, lines = None, []
    deadline = time.time() + 60
    while url is None and time.time() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if line.startswith("http://"):
            url = line.split()[0]
        if proc.poll() is not None:
            break
    assert url, "".join(lines)
    yield root, url, proc
    if proc.poll() is None:
        proc.kill()


def test_filter_edit_and_undo_in_chromium(served, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    root, url, proc = served
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_function("document.querySelector('#count').textContent === '7 of 7 images'")
        assert page.locator(".card").count() == 7 and page.locator("#tags li").count() > 3
        page.fill("#q", "red hair -hat")
        page.wait_for_function("document.querySelector('#count').textContent === '1 of 7 images'")
        page.click(".card")
        page.wait_for_selector("#detail:not([hidden])")
        assert page.input_value("#caption") == "kitchan, red hair"
        page.fill("#caption", "kitchan, red hair, smile")
        page.click("#save")
        page.wait_for_function("document.querySelector('#message').textContent.startsWith('saved')")
        assert (root / "10_kit" / "b.txt").read_text() == "kitchan, red hair, smile\n"
        page.screenshot(path=str(tmp_path / "review.png"), full_page=False)
        if os.environ.get("LORAKIT_SCREENSHOT"):  # the README's picture: LORAKIT_SCREENSHOT=docs/review.png
            page.screenshot(path=os.environ["LORAKIT_SCREENSHOT"])
        page.click("#close")
        page.click("#undo")
        page.wait_for_function("document.querySelector('#count').textContent.startsWith('undoing')"
                               " || document.querySelector('#count').textContent.includes('images')")
        deadline = time.time() + 10
        while (root / "10_kit" / "b.txt").read_text() != "kitchan, red hair\n" and time.time() < deadline:
            time.sleep(0.1)
        assert (root / "10_kit" / "b.txt").read_text() == "kitchan, red hair\n"
        browser.close()
    assert (tmp_path / "review.png").stat().st_size > 10_000
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=20) == 0
    assert "stopped" in proc.stderr.read()
