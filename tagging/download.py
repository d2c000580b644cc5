"""Fetching relation data: e621's daily database exports, or Danbooru's JSON API.

`LORAKIT_E621_EXPORTS` and `LORAKIT_DANBOORU_API` replace the base addresses (any URL urllib
reads, `file://` included), for mirrors and tests.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from lorakit.errors import UserError
from lorakit.fsio import atomic_path, write_text
from lorakit.tagging.relations import cache_path

E621 = "https://e621.net/db_export"
DANBOORU = "https://danbooru.donmai.us"
HEADERS = {"User-Agent": "lorakit (tag lists update)"}  # both sites refuse anonymous clients


def _get(url: str) -> bytes:
    request = urllib.request.Request(url, headers=HEADERS)
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.read()


def _download(url: str, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        tmp.write_bytes(_get(url))


def fetch_e621(folder: Path, today: dt.date) -> list[Path]:
    """The newest export of the week up to `today` (e621 writes one a day, not always by
    midnight)."""
    base = os.environ.get("LORAKIT_E621_EXPORTS", E621).rstrip("/")
    last_error = None
    for back in range(8):
        date = (today - dt.timedelta(days=back)).isoformat()
        names = [f"tag_implications-{date}.csv.gz", f"tag_aliases-{date}.csv.gz", f"tags-{date}.csv.gz"]
        try:
            paths = []
            for name in names:
                _download(f"{base}/{name}", folder / name)
                paths.append(folder / name)
            return paths
        except (urllib.error.URLError, OSError) as exc:
            last_error = exc
    raise UserError(f"could not download e621's exports from {base} ({getattr(last_error, 'reason', last_error)}). "
                    f"Download tag_implications-DATE.csv.gz, tag_aliases-DATE.csv.gz and tags-DATE.csv.gz "
                    f"from {E621}/ and pass them with --from")


def fetch_danbooru(folder: Path, page_size: int = 1000, max_pages: int = 200) -> list[Path]:
    """Active implications and aliases, page by page, saved as the API's own JSON."""
    base = os.environ.get("LORAKIT_DANBOORU_API", DANBOORU).rstrip("/")
    paths = []
    for kind in ("tag_implications", "tag_aliases"):
        rows: list[dict] = []
        for page in range(1, max_pages + 1):
            url = f"{base}/{kind}.json?search[status]=active&limit={page_size}&page={page}"
            try:
                batch = json.loads(_get(url))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise UserError(f"could not read {url} ({getattr(exc, 'reason', exc)}); save the "
                                f"API's JSON pages as one list in {kind}.json and pass it with --from") from None
            rows += batch
            if len(batch) < page_size:
                break
        path = folder / f"{kind}-danbooru.json"
        write_text(path, json.dumps(rows))
        paths.append(path)
    return paths


def fetch_exports(vocab: str, today: dt.date) -> list[Path]:
    """`today` dates e621's exports (Danbooru's API has no dates); the command line passes the
    real date, tests a fixed one."""
    folder = cache_path(vocab).parent / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    return fetch_e621(folder, today) if vocab == "e621" else fetch_danbooru(folder)
