"""The README's picture of `lorakit review`: a small dataset that looks like one (a character in
two outfits' folders, booru captions, a sentence on line 2 of some), served by the real command
and photographed in headless Chromium with a caption open. Needs the test tools (Playwright)
and Chromium.

    python examples/review_screenshot.py FOLDER docs/review.png   # FOLDER: made there, then removed
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_sample import character  # noqa: E402

OUTFITS = {"10_kitchan": ["school uniform", "serafuku", "pleated skirt"],
           "4_kitchan_casual": ["hoodie", "shorts", "sneakers"]}
COMMON = ["1girl", "solo", "short hair", "blue eyes", "looking at viewer"]
EXTRA = ["smile", "open mouth", "standing", "sitting", "outdoors", "holding umbrella", "cowboy shot",
         "full body", "hand up", "blush", "from side", "upper body"]
SENTENCE = "kitchan stands in a quiet street, smiling at the viewer, drawn in flat colours."


def make(root: Path) -> None:
    rng = random.Random(3)
    for k, (folder, outfit) in enumerate(OUTFITS.items()):
        (root / folder).mkdir(parents=True)
        for i in range(14 if k == 0 else 6):
            hue = i * 4 + 40 * k  # red hair (hue % 4 == 0) throughout, a new pose per image
            size = rng.choice([(512, 640), (640, 512), (384, 512), (768, 768)])
            bg = rng.choice([(250, 250, 250), (225, 235, 245), (245, 230, 220)])
            character(size, bg, hue).save(root / folder / f"{folder.split('_', 1)[1]}_{i:02d}.png")
            tags = ["kitchan", *COMMON, "red hair", *rng.sample(outfit, 2), *rng.sample(EXTRA, 3),
                    "white background" if bg[0] == 250 else "simple background"]
            text = ", ".join(tags) + ("\n" + SENTENCE if i % 3 == 0 else "")
            (root / folder / f"{folder.split('_', 1)[1]}_{i:02d}.txt").write_text(text + "\n")


def main() -> None:
    from playwright.sync_api import sync_playwright

    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    if root.exists():
        sys.exit(f"{root} exists: give a folder that does not, it is made and removed")
    make(root)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "lorakit"), "review", str(root), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        url = next(line.split()[0] for line in proc.stderr if line.startswith("http://"))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url)
            page.wait_for_function("document.querySelectorAll('.card').length === 20")
            page.wait_for_function("document.querySelector('#training').children.length === 2")
            page.click(".card[data-rel='10_kitchan/kitchan_03.png']")
            page.wait_for_selector("#trainer-image:not([hidden])")
            page.wait_for_timeout(500)  # the full image
            page.screenshot(path=str(out))
            browser.close()
    finally:
        proc.kill()
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
