"""``data prepare --download``: fetch the public raw files into a folder (kept files are not fetched
again).

Sources (research use; see each site's terms):
* Amazon 2014 (McAuley et al., SIGIR 2015; "5-core" review files and metadata):
  http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/
* Amazon 2023 (Hou et al., 2024): https://amazon-reviews-2023.github.io/ ->
  https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw/{review,meta}_categories/
* MovieLens (GroupLens): https://files.grouplens.org/datasets/movielens/<name>.zip
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from pauserec.errors import UserError

log = logging.getLogger(__name__)
AMAZON_2014 = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
AMAZON_2023 = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw"
MOVIELENS = "https://files.grouplens.org/datasets/movielens"
TIMEOUT_S = 30


def urls(fmt: str, category: str) -> list[str]:
    """The public files for a format and category (MovieLens: the archive name, e.g. ``ml-1m``)."""
    if fmt == "amazon2014":
        return [
            f"{AMAZON_2014}/reviews_{category}_5.json.gz",
            f"{AMAZON_2014}/meta_{category}.json.gz",
        ]
    if fmt == "amazon2023":
        return [
            f"{AMAZON_2023}/review_categories/{category}.jsonl.gz",
            f"{AMAZON_2023}/meta_categories/meta_{category}.jsonl.gz",
        ]
    return [f"{MOVIELENS}/{category}.zip"]


def fetch(fmt: str, category: str | None, raw_dir: Path) -> None:
    """Download what :func:`urls` names into ``raw_dir`` (unzipping MovieLens); skip files already
    there."""
    if not category:
        raise UserError("--download needs --category (e.g. Beauty, All_Beauty, ml-1m)")
    raw_dir.mkdir(parents=True, exist_ok=True)
    for url in urls(fmt, category):
        path = raw_dir / url.rsplit("/", 1)[1]
        if path.is_file() or (path.suffix == ".zip" and (raw_dir / path.stem).is_dir()):
            print(f"{path} already there; not downloading it again")
            continue
        print(f"downloading {url}")
        _get(url, path)
        if path.suffix == ".zip":
            _unzip(path, raw_dir)


def _get(url: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise UserError(
            f"cannot download {url}: {reason} (no network? download it by hand into "
            f"{path.parent} and run again without --download)"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _unzip(path: Path, raw_dir: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            archive.extractall(raw_dir)
    except zipfile.BadZipFile as err:
        raise UserError(f"corrupt archive {path}: {err}") from None
