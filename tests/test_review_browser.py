"""lorakit review in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright) opens the page the command serves, filters by a tag, edits a caption, and undoes it;
the files on disk are checked at each step. Skipped, saying why, where no Chromium is installed
(.ci/run installs it first, so CI runs it)."""

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, serve_review
from test_review import dataset

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")


@pytest.fixture
def served(tmp_path):
    root = dataset(tmp_path / "data")
    proc, url = serve_review(root)
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
        page.click("#close")
        page.on("dialog", lambda dialog: dialog.accept())  # undo shows what it reverts first
        page.click("#undo")
        page.wait_for_function("document.querySelector('#result').textContent.startsWith('undo')")
        deadline = time.time() + 10
        while (root / "10_kit" / "b.txt").read_text() != "kitchan, red hair\n" and time.time() < deadline:
            time.sleep(0.1)
        assert (root / "10_kit" / "b.txt").read_text() == "kitchan, red hair\n"
        browser.close()
    assert (tmp_path / "review.png").stat().st_size > 10_000
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=20) == 0
    assert "stopped" in proc.stderr.read()


def _wait_for(page, predicate, seconds=10):
    """Wait on the page's own clock: Playwright hands events (a dialog) over only while it is called."""
    deadline = time.time() + seconds
    while not predicate() and time.time() < deadline:
        page.wait_for_timeout(50)
    return predicate()


@pytest.fixture
def served_lines(tmp_path):
    """The dataset with a two-line CRLF caption and an unreadable image, served."""
    root = dataset(tmp_path / "data")
    (root / "10_kit" / "b.txt").write_bytes(b"kitchan, red hair\r\nA girl with red hair.\r\n")
    (root / "5_bg" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (root / "5_bg" / "tiny.txt").write_text(", ".join(f"extra {k:03d}" for k in range(400)) + "\n")
    import numpy as np

    from lorakit.tagging.auto import save_sidecars
    from lorakit.tagging.models import TagInfo

    info = TagInfo(("general", "red_hair", "hat", "smile"), (9, 0, 0, 0))
    save_sidecars(root, {Path("10_kit/a.png"): np.array([0.9, 0.8, 0.6, 0.2], np.float32)}, info, "wd")
    proc, url = serve_review(root)
    yield root, url
    proc.kill()


def test_every_line_kept_conflicts_unsaved_edits_and_the_keyboard(served_lines):
    playwright = pytest.importorskip("playwright.sync_api")
    root, url = served_lines
    b = root / "10_kit" / "b.txt"
    dialogs = []

    def answer(dialog):  # every confirm the page asks is recorded; the test's choice is in `answers`
        dialogs.append(dialog.message)
        dialog.accept() if answers and answers.pop(0) else dialog.dismiss()

    answers: list[bool] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.on("dialog", answer)
        page.goto(url)
        page.wait_for_function("document.querySelector('#count').textContent === '8 of 8 images'")

        # every tag is in the panel (no cap), drawn only where it is in view
        page.wait_for_function("Number(document.querySelector('#tag-count').textContent) > 400")
        assert page.locator("#tags li").count() < 80
        page.eval_on_selector("#tags", "el => el.scrollTop = el.scrollHeight")
        last = page.evaluate("state.tags[state.tags.length - 1].tag").replace("_", " ")
        page.wait_for_function(f"[...document.querySelectorAll('#tags li')].some(li => li.textContent.startsWith('{last}'))")

        # the unreadable image says so, and has a filter of its own
        assert "cannot be read" in page.locator(".card.broken").inner_text()
        page.check("#unreadable")
        page.wait_for_function("document.querySelector('#count').textContent === '1 of 8 images'")
        page.uncheck("#unreadable")
        page.wait_for_function("document.querySelector('#count').textContent === '8 of 8 images'")

        # by keyboard: focus the card, Enter opens it; every line of the caption is in the box
        page.locator('.card[data-rel="10_kit/b.png"]').focus()
        page.keyboard.press("Enter")
        page.wait_for_function("document.querySelector('#caption').value.includes('A girl')")
        assert page.input_value("#caption") == "kitchan, red hair\nA girl with red hair."
        page.click("#caption")
        page.keyboard.press("Control+End")
        page.keyboard.press("Enter")
        page.keyboard.type("She smiles.")  # typed after Enter: a third line
        page.keyboard.press("Control+Home")
        page.keyboard.press("End")
        page.keyboard.type(", smile, Red Hair")  # a tag it already has, in another spelling
        page.keyboard.press("Control+s")
        page.wait_for_function("document.querySelector('#message').textContent.startsWith('saved')")
        assert b.read_bytes() == b"kitchan, red hair, smile\r\nA girl with red hair.\r\nShe smiles.\r\n"
        assert page.input_value("#caption") == "kitchan, red hair, smile\nA girl with red hair.\nShe smiles."

        # another program edits the file; the page's save is refused, shows both, and can save over it
        b.write_bytes(b"kitchan, changed elsewhere\n")
        page.fill("#caption", "kitchan, mine\nline two")
        page.click("#save")
        page.wait_for_selector("#conflict:not([hidden])")
        assert page.inner_text("#disk") == "kitchan, changed elsewhere" and b.read_bytes() == b"kitchan, changed elsewhere\n"
        page.click("#save-anyway")
        page.wait_for_function("document.querySelector('#message').textContent.startsWith('saved')")
        assert b.read_bytes() == b"kitchan, mine\nline two\n"

        # unsaved text is not dropped without asking: Escape asks; no keeps the panel and the text
        page.fill("#caption", "kitchan, unsaved")
        answers.append(False)
        page.keyboard.press("Escape")
        assert _wait_for(page, lambda: len(dialogs) >= 1) and "unsaved" in dialogs[-1]
        assert page.is_visible("#detail") and page.input_value("#caption") == "kitchan, unsaved"

        # Alt+→ moves on even from the caption box (asking first); → alone moves when it is not focused
        answers.append(True)
        page.focus("#caption")
        page.keyboard.press("Alt+ArrowRight")
        page.wait_for_function("!document.querySelector('#info').textContent.startsWith('10_kit/b.png')")
        assert b.read_bytes() == b"kitchan, mine\nline two\n"  # discarded, not written
        first = page.inner_text("#info")
        page.focus("#close")
        page.keyboard.press("ArrowLeft")
        page.wait_for_function("document.querySelector('#info').textContent.startsWith('10_kit/b.png')")
        assert page.inner_text("#info") != first
        page.keyboard.press("Escape")
        page.wait_for_selector("#detail", state="hidden")

        # bulk: how many matching captions change, and how, is shown before anything is written
        page.fill("#q", "kitchan")
        page.wait_for_function("document.querySelector('#count').textContent.startsWith('2 of')")
        page.fill("#bulk-add", "solo")
        answers.append(False)
        page.click("#bulk-apply")
        assert _wait_for(page, lambda: dialogs and "will change" in dialogs[-1])
        assert "2 of the 2 matching captions will change" in dialogs[-1] and "+solo" in dialogs[-1]
        assert b.read_bytes() == b"kitchan, mine\nline two\n"  # said no: nothing written
        page.fill("#q", "")
        page.wait_for_function("document.querySelector('#count').textContent === '8 of 8 images'")

        # picked by hand: a click, then a shift-click picks the range; the bulk edit changes only those
        cards = page.locator(".card .pick")
        cards.nth(0).click()
        cards.nth(2).click(modifiers=["Shift"])
        assert page.inner_text("#bulk-what") == "3 picked"
        picked = page.evaluate("[...state.picked]")
        untouched = {p: p.read_bytes() for p in root.rglob("*.txt") if p.relative_to(root).with_suffix(".png").as_posix()
                     not in picked}
        answers.append(True)
        page.click("#bulk-apply")
        page.wait_for_function("document.querySelector('#result').textContent.startsWith('bulk')")
        assert "of the 3 picked captions will change" in dialogs[-1]
        for rel in picked:
            caption_file = (root / rel).with_suffix(".txt")
            assert caption_file.read_text().split("\n")[0].endswith("solo"), rel
        assert {p: p.read_bytes() for p in untouched} == untouched
        page.click("#unpick")
        assert page.inner_text("#bulk-what") == "8 matching"
        run_undo = subprocess.run([str(BIN / "tag"), "undo", str(root)], capture_output=True)
        assert run_undo.returncode == 0
        page.fill("#bulk-add", "")

        # undo shows what it reverts before it runs, and its result stays on screen
        answers.append(True)
        page.click("#undo")
        page.wait_for_function("document.querySelector('#result').textContent.startsWith('undo')")
        assert "review-edit" in dialogs[-1] and "10_kit/b.txt" in dialogs[-1]
        assert b.read_bytes() == b"kitchan, changed elsewhere\n"
        time.sleep(0.3)  # a reload must not wipe the result
        assert page.inner_text("#result").startswith("undo")
        answers.append(True)  # and Redo puts it back, saying first what it changes
        page.click("#redo")
        page.wait_for_function("document.querySelector('#result').textContent.startsWith('redo')")
        assert "10_kit/b.txt" in dialogs[-1] and b.read_bytes() == b"kitchan, mine\nline two\n"
        answers.append(True)
        page.click("#undo")
        page.wait_for_function("document.querySelector('#result').textContent.startsWith('undo')")
        assert b.read_bytes() == b"kitchan, changed elsewhere\n"

        # the tagger from the page: the slider's caption is composed by the server as tag auto would
        # (the folder's trigger first, the rating apart); a probability row adds its tag to line 1
        (root / "10_kit" / "a.txt").write_text("kitchan, red hair, hat\nA sentence.\n")
        page.locator('.card[data-rel="10_kit/a.png"]').click()
        page.wait_for_function("document.querySelector('#preview').textContent === 'kit, red hair, hat'")
        assert page.inner_text("#rating").startswith("general 0.90")
        page.locator("#prob-list li", has_text="smile").click()
        assert page.input_value("#caption") == "kitchan, red hair, hat, smile\nA sentence."
        page.eval_on_selector("#threshold", "el => { el.value = 0.7; el.dispatchEvent(new Event('input')); }")
        page.wait_for_function("document.querySelector('#preview').textContent === 'kit, red hair'")
        page.click("#use-preview")
        assert page.input_value("#caption") == "kit, red hair\nA sentence."
        answers.append(True)  # discard: nothing was saved
        page.keyboard.press("Escape")
        page.wait_for_selector("#detail", state="hidden")
        assert (root / "10_kit" / "a.txt").read_text() == "kitchan, red hair, hat\nA sentence.\n"

        # at phone size the detail fills the width and its close stays on screen
        page.set_viewport_size({"width": 390, "height": 800})
        page.locator('.card[data-rel="10_kit/a.png"]').click()
        page.wait_for_selector("#detail:not([hidden])")
        box = page.locator("#detail").bounding_box()
        assert box["width"] >= 380 and page.locator("#close").is_visible()
        page.mouse.wheel(0, 2000)
        assert page.locator("#close").bounding_box()["y"] >= 0
        page.click("#close")
        page.wait_for_selector("#detail", state="hidden")
        browser.close()


def test_caption_chips_and_completion_in_the_box(served):
    """Line 1's tags as chips (× removes, drag and the keyboard reorder, a click filters) and the
    box's own completion (the keyboard accepts); the sentence lines are written back byte for byte."""
    playwright = pytest.importorskip("playwright.sync_api")
    root, url, _ = served
    a = root / "10_kit" / "a.txt"
    a.write_bytes(b"kitchan, red hair, hat, smile\r\nA girl with red hair.\r\n")
    names = "[...document.querySelectorAll('#chips .chip-name')].map(n => n.textContent).join('|')"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        dialogs = []  # app.js asks before leaving unsaved text: a key it also took would show here
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(url)
        page.wait_for_function("document.querySelector('#count').textContent === '7 of 7 images'")
        page.locator('.card[data-rel="10_kit/a.png"]').click()
        page.wait_for_function(f"{names} === 'kitchan|red hair|hat|smile'")
        chips = page.locator("#chips li")

        chips.nth(2).locator(".chip-x").click()  # × on "hat": line 1 loses it, the sentence stays
        assert page.input_value("#caption") == "kitchan, red hair, smile\nA girl with red hair."
        chips.nth(2).drag_to(chips.nth(0))  # "smile" dropped on "kitchan" takes its place
        assert page.evaluate(names) == "smile|kitchan|red hair"
        chips.nth(1).focus()
        page.keyboard.press("Alt+Shift+ArrowRight")  # moves the chip, not on to the next image
        assert page.evaluate(names) == "smile|red hair|kitchan"
        assert page.evaluate("document.activeElement.textContent").startswith("kitchan")
        assert page.inner_text("#info").startswith("10_kit/a.png")

        # completion in the box: a tag line 1 has is not offered; Escape closes only the list
        page.click("#caption")
        page.keyboard.press("Control+Home")
        page.keyboard.press("End")
        page.keyboard.type(", red h")
        page.wait_for_selector("#suggest:not([hidden])")
        offered = page.locator("#suggest [role=option]").all_inner_texts()
        assert offered[0] == "red hairband" and "red hair" not in offered
        page.keyboard.press("Escape")
        assert page.is_hidden("#suggest") and page.is_visible("#detail")
        page.keyboard.type("a")
        page.wait_for_selector("#suggest:not([hidden])")
        page.keyboard.press("ArrowDown")
        assert page.get_attribute("#caption", "aria-activedescendant") == "suggest-0"
        page.keyboard.press("Enter")
        assert page.input_value("#caption") == "smile, red hair, kitchan, red hairband, \nA girl with red hair."
        assert page.evaluate(names) == "smile|red hair|kitchan|red hairband"
        assert page.inner_text("#info").startswith("10_kit/a.png") and page.is_hidden("#suggest") and not dialogs

        page.keyboard.press("Control+s")
        page.wait_for_function("document.querySelector('#message').textContent.startsWith('saved')")
        assert a.read_bytes() == b"smile, red hair, kitchan, red hairband\r\nA girl with red hair.\r\n"

        page.locator("#chips .chip-name", has_text="kitchan").click()  # as the side panel's tag list does
        page.wait_for_function("document.querySelector('#count').textContent === '2 of 7 images'")
        assert page.input_value("#q") == "kitchan"
        browser.close()
