"""Readers for the raw public files: interactions in file order, and item metadata.

* ``amazon2014``: ``reviews_<Cat>_5.json.gz`` (JSON per line: reviewerID, asin, unixReviewTime,
  overall) and ``meta_<Cat>.json.gz`` (a Python dict literal per line: asin, title, brand,
  description, categories).
* ``amazon2023``: ``<Cat>.jsonl[.gz]`` (user_id, parent_asin, timestamp in ms, rating) and
  ``meta_<Cat>.jsonl[.gz]`` (parent_asin, title, store, categories, main_category, description
  list).
* ``movielens``: ``ratings.dat`` / ``movies.dat`` (``::``-separated, latin-1; ml-1m, ml-10m) or
  ``ratings.csv`` / ``movies.csv`` (with headers; ml-latest, ml-20m, ml-25m). ``Title (1995)``
  becomes title ``Title`` and year ``1995``; genres become categories.

A malformed line is skipped and counted (the count and the first bad line are reported), or, with
``strict``, is an error naming the file and line. Nothing is dropped silently.
"""

from __future__ import annotations

import ast
import csv
import gzip
import html
import json
import math
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pauserec.errors import UserError

FORMATS = ("amazon2014", "amazon2023", "movielens")
_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


@dataclass
class Raw:
    """What the raw files hold, before any filtering."""

    # user, item, time, rating
    interactions: list[tuple[str, str, float, float]] = field(default_factory=list)
    # raw item id -> title, categories, ...
    meta: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was skipped, per file


def text(value) -> str:
    """Clean item text: lists joined, HTML entities unescaped, whitespace collapsed; None -> ""."""
    if isinstance(value, (list, tuple)):
        value = " ".join(text(v) for v in value)
    return " ".join(html.unescape(str(value or "")).split())


def _id(value) -> str:
    if not isinstance(value, (str, int)) or not str(value).strip():
        raise ValueError(f"bad id {value!r}")
    return str(value).strip()


def _number(value, what: str) -> float:
    """A time or rating: a finite number (NaN or infinity is a malformed line, never a sort key)."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} is {value!r}, not a finite number")
    return number


def _json(line: str) -> dict:
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def _literal(line: str) -> dict:
    """A 2014 meta line: a Python dict literal (strict JSON is accepted too)."""
    try:
        obj = ast.literal_eval(line.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        try:
            obj = json.loads(line)
        except ValueError:
            raise ValueError("neither a Python dict literal nor a JSON object") from None
    if not isinstance(obj, dict):
        raise ValueError("not a dict literal")
    return obj


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_lines(
    path: Path,
    parse: Callable[[str], object],
    notes: list[str],
    strict: bool,
    encodings: tuple[str, ...] = ("utf-8",),
    header: bool = False,
) -> Iterator:
    """Yield ``parse(line)`` for every non-blank line; malformed lines are counted or, if strict,
    fatal."""
    bad, first = 0, ""
    try:
        with _open_binary(path) as fh:
            for number, raw in enumerate(fh, 1):
                if (header and number == 1) or not raw.strip():
                    continue
                try:
                    yield parse(_decode(raw, encodings).rstrip("\r\n"))
                except (
                    ValueError,
                    SyntaxError,
                    KeyError,
                    TypeError,
                    IndexError,
                    UnicodeDecodeError,
                    RecursionError,
                ) as err:
                    why = (
                        f"missing field {err}"
                        if isinstance(err, KeyError)
                        else str(err).split("\n")[0][:120]
                    )
                    if strict:
                        raise UserError(f"malformed line {number} in {path}: {why}") from None
                    bad, first = bad + 1, first or f"line {number}: {why}"
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if bad:
        notes.append(f"skipped {bad:,} malformed line(s) in {path.name} (first: {first})")


def _decode(raw: bytes, encodings: tuple[str, ...]) -> str:
    for encoding in encodings[:-1]:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            pass
    return raw.decode(encodings[-1])


def _review_2014(line: str) -> tuple[str, str, float, float]:
    r = _json(line)
    return (
        _id(r["reviewerID"]),
        _id(r["asin"]),
        _number(r["unixReviewTime"], "the time"),
        _number(r.get("overall") or 0, "the rating"),
    )


def _meta_2014(line: str) -> tuple[str, dict]:
    m = _literal(line)
    cats: list[str] = []
    for path in m.get("categories") or []:  # a path repeats no names of the paths before it
        earlier = set(cats)
        cats += [
            text(c) for c in (path if isinstance(path, list) else [path]) if text(c) not in earlier
        ]
    return _id(m["asin"]), {
        "title": text(m.get("title")),
        "description": text(m.get("description")),
        "brand": text(m.get("brand")),
        "categories": ", ".join(cats),
    }


def _review_2023(line: str) -> tuple[str, str, float, float]:
    r = _json(line)
    return (
        _id(r["user_id"]),
        _id(r["parent_asin"]),
        _number(r["timestamp"], "the time") / 1000,
        _number(r.get("rating") or 0, "the rating"),
    )


def _meta_2023(line: str) -> tuple[str, dict]:
    m = _json(line)
    cats = m.get("categories") or ([m["main_category"]] if m.get("main_category") else [])
    return _id(m["parent_asin"]), {
        "title": text(m.get("title")),
        "description": text(m.get("description")),
        "brand": text(m.get("store")),
        "categories": ", ".join(map(text, cats)),
    }


def _split_fields(line: str, sep: str, n: int) -> list[str]:
    if sep == ",":
        parts = next(csv.reader([line]))
    else:
        parts = line.split(sep)
    if len(parts) != n:
        raise ValueError(f"expected {n} fields, got {len(parts)}")
    return parts


def _rating_ml(sep: str) -> Callable[[str], tuple[str, str, float, float]]:
    def parse(line: str) -> tuple[str, str, float, float]:
        user, item, rating, when = _split_fields(line, sep, 4)
        return _id(user), _id(item), _number(when, "the time"), _number(rating, "the rating")

    return parse


def _movie_ml(sep: str) -> Callable[[str], tuple[str, dict]]:
    def parse(line: str) -> tuple[str, dict]:
        item, title, genres = _split_fields(line, sep, 3)
        match = _YEAR.match(title.strip())
        name, year = (match.group(1), match.group(2)) if match else (title, "")
        cats = [] if genres.strip() == "(no genres listed)" else genres.strip().split("|")
        return _id(item), {
            "title": text(name),
            "year": year,
            "categories": ", ".join(map(text, cats)),
        }

    return parse


def _first(directory: Path, names: list[str]) -> Path | None:
    return next((directory / n for n in names if (directory / n).is_file()), None)


def find_files(fmt: str, raw_dir: Path, category: str | None) -> tuple[Path, Path]:
    """(interactions file, item file) for a format in ``raw_dir``; a clear error names what is
    missing."""
    if fmt not in FORMATS:
        raise UserError(f"unknown raw format '{fmt}' (known: {', '.join(FORMATS)})")
    if not raw_dir.is_dir():
        raise UserError(f"raw data folder {raw_dir} not found")
    if fmt == "movielens":
        named = raw_dir / category if category else None  # e.g. raw/ml-1m/ as the archive unpacks
        folders = (
            [named]
            if named and named.is_dir()
            else [raw_dir, *sorted(p for p in raw_dir.iterdir() if p.is_dir())]
        )
        for folder in folders:
            for ext in (".dat", ".csv"):
                pair = _first(folder, [f"ratings{ext}"]), _first(folder, [f"movies{ext}"])
                if all(pair):
                    return pair  # type: ignore[return-value]
        raise UserError(f"no ratings.dat + movies.dat or ratings.csv + movies.csv in {raw_dir}")
    if not category:
        raise UserError(
            f"--format {fmt} needs --category (the name in the file names, e.g. Beauty)"
        )
    if fmt == "amazon2014":
        names = (
            [f"reviews_{category}_5.json.gz", f"reviews_{category}_5.json"],
            [f"meta_{category}.json.gz", f"meta_{category}.json"],
        )
    else:
        names = (
            [f"{category}.jsonl", f"{category}.jsonl.gz"],
            [f"meta_{category}.jsonl", f"meta_{category}.jsonl.gz"],
        )
    found = _first(raw_dir, names[0]), _first(raw_dir, names[1])
    if not all(found):
        missing = " or ".join(names[0] if found[0] is None else names[1])
        raise UserError(f"{missing} not found in {raw_dir}")
    return found  # type: ignore[return-value]


def read(fmt: str, interactions: Path, items: Path, strict: bool = False) -> Raw:
    """Read both files of a format (see :func:`find_files`)."""
    raw = Raw()
    if fmt == "movielens":
        sep, header = ("::", False) if interactions.suffix == ".dat" else (",", True)
        parse_inter, parse_item = _rating_ml(sep), _movie_ml(sep)
    else:
        header = False
        parse_inter, parse_item = (
            (_review_2014, _meta_2014) if fmt == "amazon2014" else (_review_2023, _meta_2023)
        )
    raw.interactions = list(read_lines(interactions, parse_inter, raw.notes, strict, header=header))
    repeated = 0
    for item, meta in read_lines(
        items, parse_item, raw.notes, strict, ("utf-8", "latin-1"), header
    ):
        repeated += item in raw.meta
        raw.meta.setdefault(item, meta)
    if repeated:
        raw.notes.append(
            f"{repeated:,} repeated item record(s) in {items.name}: kept the first of each"
        )
    return raw
