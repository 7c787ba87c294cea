"""``data prepare``: raw public files -> the LC-Rec layout (``X.inter.json``, ``X.item.json``) the
workbench reads.

Steps, in order: read (:mod:`pauserec.rawdata`); drop ratings below ``--min-rating``; keep each
user-item pair's earliest interaction; k-core: drop users with fewer than ``max(k, 3)`` and items
with fewer than ``k`` interactions, repeated until nothing changes; order each user's items by time,
ties broken by the order of the lines in the interactions file (a stable sort, as RecBole's); number
users 0.. by raw id (numerically where all ids are numbers) and items 0.. by first appearance in
that user order. Everything is written in one atomic rename, with ``X.prepare.json`` (settings,
counts, notes, and the raw ids of users and items).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pauserec import data, files
from pauserec.config import arg, parse_args, to_dict
from pauserec.data import download, rawdata
from pauserec.errors import UserError

log = logging.getLogger(__name__)
TIE_BREAK = "timestamp, then line order in the interactions file"


@dataclass
class PrepareArgs:
    """Turn raw public files (Amazon 2014 / 2023 reviews + metadata, MovieLens ratings + movies)
    into the LC-Rec layout: k-core filtered, chronological, with a stats report."""

    format: str = arg("", "amazon2014, amazon2023 or movielens", choices=("", *rawdata.FORMATS))
    raw: str | None = arg(None, "folder with the raw files (--download saves there)")
    category: str | None = arg(None, "category in file names: Beauty (2023: All_Beauty), ml-1m ...")
    out: str | None = arg(None, "output folder (its name is the dataset name)")
    kcore: int = arg(5, "min interactions per item and per user (users >= 3)", min=1)
    min_rating: float = arg(0.0, "drop interactions rated below this", min=0.0)
    strict: bool = arg(False, "a malformed line is an error (default: skip, count)")
    download: bool = arg(False, "fetch the public files into --raw first")
    overwrite: bool = arg(False, "replace an existing non-empty --out")
    max_history: int = arg(20, "history truncation for the split counts", min=1)


def filter_interactions(
    raw: rawdata.Raw, kcore: int, min_rating: float
) -> tuple[pd.DataFrame, list[str]]:
    """Rating threshold, first interaction per user-item pair, iterated k-core; returns the rows and
    notes."""
    df = pd.DataFrame(raw.interactions, columns=["user", "item", "time", "rating"])
    df["line"] = range(len(df))
    notes = []
    if min_rating > 0:
        low = df["rating"] < min_rating
        df = df[~low]
        notes.append(f"dropped {int(low.sum()):,} interaction(s) rated below {min_rating:g}")
    df = df.sort_values(["time", "line"], kind="stable")
    repeated = df.duplicated(["user", "item"], keep="first")
    if repeated.any():
        df = df[~repeated]
        notes.append(
            f"dropped {int(repeated.sum()):,} repeated "
            "user-item pair(s) (kept each pair's earliest)"
        )
    before = len(df)
    df, rounds = kcore_filter(df, max(kcore, data.MIN_INTERACTIONS), kcore)
    notes.append(f"k-core {kcore}: {rounds} round(s), kept {len(df):,} of {before:,} interactions")
    if df.empty:
        raise UserError(f"no interactions left after the {kcore}-core filter")
    return df, notes


def kcore_filter(df: pd.DataFrame, min_user: int, min_item: int) -> tuple[pd.DataFrame, int]:
    """Drop users and items below their minimum until none is; returns the rows and the rounds
    taken."""
    rounds = 0
    while True:
        rounds += 1
        users = df.groupby("user")["item"].transform("size")
        items = df.groupby("item")["user"].transform("size")
        keep = (users >= min_user) & (items >= min_item)
        if keep.all():
            return df, rounds
        df = df[keep]


def number(df: pd.DataFrame) -> tuple[list[str], list[str], list[list[int]]]:
    """(raw user ids, raw item ids, per user item numbers oldest first) -- see the module
    docstring."""
    users = sorted(df["user"].unique(), key=_user_key(df["user"]))
    rank = {u: i for i, u in enumerate(users)}
    df = df.assign(u=df["user"].map(rank)).sort_values(["u", "time", "line"], kind="stable")
    items = list(dict.fromkeys(df["item"]))
    index = {it: i for i, it in enumerate(items)}
    sequences: list[list[int]] = [[] for _ in users]
    for u, item in zip(df["u"], df["item"]):
        sequences[u].append(index[item])
    return users, items, sequences


def _user_key(column: pd.Series):
    numeric = column.str.fullmatch(r"\d+").all()
    return (lambda u: int(u)) if numeric else (lambda u: u)


def write(
    out: Path,
    users: list[str],
    items: list[str],
    sequences: list[list[int]],
    raw: rawdata.Raw,
    provenance: dict,
) -> None:
    """The LC-Rec files plus ``X.prepare.json``, named after the ``out`` folder, in one atomic
    rename."""
    name = out.name
    empty = {"title": "", "description": "", "brand": "", "categories": ""}
    item_json = {str(i): {**empty, **raw.meta.get(it, {})} for i, it in enumerate(items)}
    with files.atomic_dir(out) as tmp:
        files.write_json(
            tmp / f"{name}.inter.json", {str(u): seq for u, seq in enumerate(sequences)}
        )
        files.write_json(tmp / f"{name}.item.json", item_json)
        files.write_json(
            tmp / f"{name}.prepare.json", {**provenance, "users": users, "items": items}
        )


def main(argv: list[str] | None = None) -> data.Dataset:
    args = parse_args(PrepareArgs, argv, "pauserec data prepare")
    if args.format not in rawdata.FORMATS:
        raise UserError(
            f"--format must be one of {', '.join(rawdata.FORMATS)} (got '{args.format}')"
        )
    if args.kcore < 1 or not args.raw:
        raise UserError("data prepare needs --raw DIR and --kcore >= 1")
    if not args.out:
        raise UserError("data prepare needs --out DIR")
    claim = files.claim(
        args.out, kind="pauserec data prepare", overwrite=args.overwrite, inputs=[args.raw]
    )
    with claim:
        return prepare(args, Path(args.out))


def prepare(args: PrepareArgs, out: Path) -> data.Dataset:
    """Read, filter, number and write (see the module docstring); ``out`` is claimed."""
    raw_dir = Path(args.raw)
    if args.download:
        download.fetch(args.format, args.category, raw_dir)
    inter_path, item_path = rawdata.find_files(args.format, raw_dir, args.category)
    raw = rawdata.read(args.format, inter_path, item_path, args.strict)
    print(
        f"read {len(raw.interactions):,} interactions from {inter_path.name}, "
        f"{len(raw.meta):,} items from {item_path.name}"
    )
    df, notes = filter_interactions(raw, args.kcore, args.min_rating)
    users, items, sequences = number(df)
    missing = sum(1 for it in items if it not in raw.meta)
    if missing == len(items) or (missing and args.strict):
        raise UserError(
            f"{missing:,} of the {len(items):,} reviewed items have no record in "
            f"{item_path}: are the reviews and the metadata of the same category?"
        )
    notes = (
        raw.notes + notes + ([f"{missing:,} item(s) have no metadata record"] if missing else [])
    )
    provenance = {
        "format": args.format,
        "files": [str(inter_path), str(item_path)],
        "tie_break": TIE_BREAK,
        "args": to_dict(args),
        "notes": notes,
    }
    write(out, users, items, sequences, raw, provenance)
    for note in notes:
        print(note)
    ds = data.load_dataset(str(out))
    s = data.stats(ds)
    print(data.format_stats(s))
    print(
        data.format_split(
            {k: len(v) for k, v in data.split(ds, args.max_history).items()}, args.max_history
        )
    )
    print(f"wrote {out}")
    return ds
