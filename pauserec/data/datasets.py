"""Real datasets and the paper's leave-one-out split.

* ``ml-100k``: MovieLens-100k shipped inside the ``recbole`` wheel (titles, year, genres) -- needs
  only PyPI.
* ``office`` / ``beauty`` / ``toys`` (or any directory) in the LC-Rec layout: ``X.inter.json`` maps
  a user to chronologically ordered item ids, ``X.item.json`` maps an item id to
  title/description/brand/categories.
"""

from __future__ import annotations

import contextlib
import csv
import html
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pauserec import files
from pauserec.config import arg
from pauserec.errors import UserError

AMAZON = {"office": "Office", "beauty": "Beauty", "toys": "Toys"}
DATA_ENV = "PAUSEREC_DATA"
MIN_INTERACTIONS = 3  # test target + validation target + at least one history item
TEXT_FIELDS = ("title", "categories", "brand", "description", "year")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Item:
    """One catalog item. ``title`` is ``""`` where the source has none (see
    :attr:`display_title`)."""

    item_id: str
    title: str
    categories: str = ""
    brand: str = ""
    description: str = ""
    year: str = ""

    @property
    def display_title(self) -> str:
        return self.title or f"untitled item {self.item_id}"

    def text(self, fields: tuple[str, ...] | list[str], desc_words: int | None = None) -> str:
        """The item as text, e.g. ``"Title: X. Categories: Y. Brand: Z."`` (empty fields left out):
        what the text encoder embeds for SIDs and what grounding teaches. ``desc_words`` caps the
        description."""
        unknown = set(fields) - set(TEXT_FIELDS)
        if unknown:
            raise UserError(
                f"unknown item text field(s) {sorted(unknown)} (known: {', '.join(TEXT_FIELDS)})"
            )
        parts = []
        for name in fields:
            value = self.display_title if name == "title" else getattr(self, name)
            if name == "description" and desc_words is not None:
                value = " ".join(value.split()[:desc_words])
            if value:
                parts.append(f"{name.capitalize()}: {value}.")
        return " ".join(parts)


@dataclass
class Dataset:
    name: str
    items: list[Item]  # position = internal item index used everywhere else
    sequences: dict[str, list[int]]  # user -> item indices, oldest first


@dataclass(frozen=True)
class Example:
    """Predict ``target`` from ``history`` (item indices, oldest first, at most ``max_history``)."""

    user: str
    history: tuple[int, ...]
    target: int


def dataset_arg(default: str = "ml-100k") -> Any:
    """The ``--dataset`` field of every command that loads a dataset by name or folder."""
    return arg(default, f"{', '.join(['ml-100k', *AMAZON])}, or a directory")


def data_root_arg() -> Any:
    """The ``--data-root`` field: where the Amazon folders are (else $PAUSEREC_DATA, then
    :func:`default_roots`)."""
    return arg(None, f"folder holding {' '.join(f'{v}/' for v in AMAZON.values())}")


def default_roots() -> list[Path]:
    """Where Amazon datasets are looked for when neither ``--data-root`` nor $PAUSEREC_DATA is
    set."""
    return [
        _PROJECT_ROOT.parent / "shared" / "data" / "amazon",
        Path.cwd().parent / "shared/data/amazon",
    ]


def resolve_dir(name: str, data_root: str | None = None) -> Path:
    """The directory holding ``X.inter.json`` / ``X.item.json`` for a dataset name or path."""
    if name.lower() not in AMAZON:
        path = Path(name)
        if path.is_dir():
            return path
        known = ", ".join(["ml-100k", *AMAZON])
        raise UserError(
            f"unknown dataset '{name}' (known: {known}, or a directory in LC-Rec layout)"
        )
    root = data_root or os.environ.get(DATA_ENV)
    candidates = [Path(root)] if root else default_roots()
    for base in candidates:
        path = base / AMAZON[name.lower()]
        if path.is_dir():
            return path
    where = " or ".join(str(c) for c in candidates)
    raise UserError(
        f"dataset '{name}' not found under {where}; pass --data-root or set ${DATA_ENV} "
        f"to the folder that holds {AMAZON[name.lower()]}/"
    )


def source_paths(name: str, data_root: str | None = None) -> list[Path]:
    """Where :func:`load_dataset` reads a dataset given by name or path: its folder and, for a name,
    the data root it is found under (``--data-root``, ``$PAUSEREC_DATA`` or a default root; ml-100k:
    the folder inside the recbole wheel). An output may overlap none of them
    (:func:`pauserec.files.claim`); an unknown dataset has none (loading it fails later, with its
    own message)."""
    roots = [Path(data_root)] if data_root else []
    copy = Path(data_root) / folder_name(name) if data_root else None
    if copy is not None and copy.is_dir():
        return [copy, *roots]
    if name.lower() == "ml-100k":
        with contextlib.suppress(ModuleNotFoundError):
            wheel = importlib.resources.files("recbole") / "dataset_example" / "ml-100k"
            roots.append(Path(str(wheel)))
        return roots
    try:
        folder = resolve_dir(name, data_root)
    except UserError:
        return roots
    return [folder, folder.parent] if name.lower() in AMAZON else [folder, *roots]


def folder_name(name: str) -> str:
    """The folder a named dataset lives in under a data root (``beauty`` -> ``Beauty``)."""
    return AMAZON.get(name.lower(), name)


def load_dataset(name: str, data_root: str | None = None) -> Dataset:
    """Load a dataset by name (``ml-100k``, ``office``, ``beauty``, ``toys``) or LC-Rec directory.

    With ``data_root``, ``DATA_ROOT/<folder>`` in LC-Rec layout wins for any name -- ml-100k too, so
    a machine without the recbole wheel can read a copy (``python -m pauserec gpu prepare`` writes
    one).
    """
    copy = Path(data_root) / folder_name(name) if data_root else None
    if copy is not None and copy.is_dir():
        ds = _load_lcrec(copy)
        ds.name = name.lower()
    elif name.lower() == "ml-100k":
        ds = _load_movielens()
    else:
        ds = _load_lcrec(resolve_dir(name, data_root))
    _validate(ds)
    return ds


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"missing dataset file {path}")
    data = files.read_json(path)
    if not isinstance(data, dict) or not data:
        raise UserError(f"corrupt dataset file {path}: expected a non-empty JSON object")
    return data


def _find_one(directory: Path, suffix: str) -> Path:
    hits = sorted(directory.glob(f"*{suffix}"))
    if len(hits) != 1:
        what = "no" if not hits else "several"
        raise UserError(f"{what} *{suffix} file(s) in {directory}")
    return hits[0]


def _clean(text) -> str:
    return " ".join(html.unescape(str(text or "")).split())


def _text(value, name: str, key: str, directory: Path) -> str:
    """An item's text field: a string or number, or a list of them (joined with spaces, as ``data
    prepare`` joins Amazon 2023 descriptions); anything else is refused rather than stored as its
    repr."""
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return _clean(" ".join(_clean(v) for v in value))
    if value is None or isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return _clean(value)
    raise UserError(
        f"corrupt item {key!r} in {directory}: {name} is {type(value).__name__} {value!r:.60}; "
        "expected text or a list of text"
    )


def _categories(value, key: str, directory: Path) -> str:
    """Categories as one ``"A, B, C"`` string: a string as is; a list, or a list of category paths
    (Amazon 2014: ``[["Beauty", "Skin Care"], ["Beauty", "Hair"]]``), joined the way
    ``data prepare`` joins them -- each path drops the names the paths before it already gave."""
    if not isinstance(value, list):
        return _text(value, "categories", key, directory)
    names: list[str] = []
    for path in value:
        earlier = set(names)
        parts = path if isinstance(path, list) else [path]
        names += [
            n
            for n in (_text(c, "categories", key, directory) for c in parts)
            if n and n not in earlier
        ]
    return ", ".join(names)


def _load_lcrec(directory: Path) -> Dataset:
    raw_items = _read_json(_find_one(directory, ".item.json"))
    raw_inter = _read_json(_find_one(directory, ".inter.json"))
    ids = sorted(raw_items, key=lambda k: (len(k), k))
    items = []
    for key in ids:
        meta = raw_items[key]
        if not isinstance(meta, dict):
            raise UserError(f"corrupt item {key!r} in {directory}: expected an object")
        text = {
            name: _text(meta.get(name), name, key, directory)
            for name in ("title", "brand", "description", "year")
        }
        items.append(
            Item(
                key,
                text["title"],
                _categories(meta.get("categories"), key, directory),
                text["brand"],
                text["description"],
                text["year"],
            )
        )
    index = {key: i for i, key in enumerate(ids)}
    sequences = {}
    for user, seq in raw_inter.items():
        if not isinstance(seq, list):
            raise UserError(f"corrupt interactions for user {user!r} in {directory}")
        try:
            sequences[str(user)] = [index[str(item)] for item in seq]
        except KeyError as err:
            raise UserError(f"user {user!r} in {directory} refers to unknown item {err}") from None
    name = directory.name.lower()
    return Dataset(name, items, sequences)


def _load_movielens() -> Dataset:
    try:
        base = importlib.resources.files("recbole") / "dataset_example" / "ml-100k"
    except ModuleNotFoundError:
        raise UserError(
            "ml-100k needs the 'recbole' wheel: pip install --no-deps recbole"
        ) from None
    items, index = [], {}
    with (base / "ml-100k.item").open(encoding="utf-8", errors="replace") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            index[row["item_id:token"]] = len(items)
            items.append(
                Item(
                    row["item_id:token"],
                    _clean(row["movie_title:token_seq"]),
                    _clean(row["class:token_seq"]).replace(" ", ", "),
                    year=_clean(row["release_year:token"]),
                )
            )
    rows: dict[str, list[tuple[float, int, int]]] = {}
    with (base / "ml-100k.inter").open(encoding="utf-8") as fh:
        for order, row in enumerate(csv.DictReader(fh, delimiter="\t")):
            when = float(row["timestamp:float"])
            rows.setdefault(row["user_id:token"], []).append(
                (when, order, index[row["item_id:token"]])
            )
    # Chronological; ties keep file order so the split is deterministic.
    sequences = {
        u: [item for *_, item in sorted(r)]
        for u, r in sorted(rows.items(), key=lambda x: int(x[0]))
    }
    return Dataset("ml-100k", items, sequences)


def _validate(ds: Dataset) -> None:
    for user, seq in ds.sequences.items():
        if len(seq) < MIN_INTERACTIONS:
            raise UserError(
                f"dataset {ds.name}: user {user} has {len(seq)} interaction(s); leave-one-out "
                f"needs at least {MIN_INTERACTIONS}"
            )


TRAIN_TARGETS = ("all", "last", "windows")


@dataclass(frozen=True)
class Window:
    """Consecutive items of one user's training part whose targets share a history start: the
    targets are ``items[first:]``, and target ``items[j]`` has the history ``items[:j]``. One
    sequence of the efficient training layouts computes all of a window's targets in one pass."""

    user: str
    items: tuple[int, ...]
    first: int  # index of the first target (>= 1)

    def examples(self) -> list[Example]:
        return [
            Example(self.user, self.items[:j], self.items[j])
            for j in range(self.first, len(self.items))
        ]

    @classmethod
    def of(cls, example: Example) -> Window:
        """The window of one example (its history, then its target)."""
        return cls(example.user, (*example.history, example.target), len(example.history))


def windows(ds: Dataset, max_history: int = 20, train_targets: str = "all") -> list[Window]:
    """The training targets of :func:`split` grouped into :class:`Window` s (``split(...)["train"]``
    is their examples, in order).

    * ``all``: every item of the training part ``seq[:-2]`` but the first is a target with the (at
      most ``max_history``) items before it -- SASRec-style sliding histories. Targets
      ``1..max_history`` share the start 0 (one window); each later target has its own start (a
      window of one target).
    * ``last`` (the paper's): one target per user, the third-to-last item.
    * ``windows``: the training part cut into windows of ``max_history + 1`` items overlapping by
      one, aligned to its end; every item but the first is a target exactly once, with the items
      before it in its window as history (1 to ``max_history`` of them) -- TIGER-style. The cheapest
      set that still trains every item.
    """
    if max_history < 1:
        raise UserError("max_history must be at least 1")
    if train_targets not in TRAIN_TARGETS:
        raise UserError(
            f"unknown train targets '{train_targets}' (known: {', '.join(TRAIN_TARGETS)})"
        )
    out: list[Window] = []
    for user, seq in ds.sequences.items():
        part = seq[:-2]
        if train_targets == "last":
            t = len(part) - 1
            out.append(
                Window(user, tuple(part[max(0, t - max_history) : t + 1]), min(t, max_history))
            )
        elif train_targets == "all":
            out.append(Window(user, tuple(part[: max_history + 1]), 1))
            out += [
                Window(user, tuple(part[t - max_history : t + 1]), max_history)
                for t in range(max_history + 1, len(part))
            ]
        else:
            ends = range(len(part), 1, -max_history)  # exclusive ends, newest window first
            out += [
                Window(user, tuple(part[max(0, end - max_history - 1) : end]), 1)
                for end in reversed(ends)
            ]
    return out


def split(
    ds: Dataset, max_history: int = 20, train_targets: str = "all"
) -> dict[str, list[Example]]:
    """Leave-one-out: last item = test, second-to-last = validation, earlier items = training
    targets (which of them, and with which history, :func:`windows` says). Each history is truncated
    to its most recent ``max_history`` items."""
    out: dict[str, list[Example]] = {
        "train": [ex for w in windows(ds, max_history, train_targets) for ex in w.examples()],
        "valid": [],
        "test": [],
    }
    for user, seq in ds.sequences.items():
        n = len(seq)
        out["valid"].append(
            Example(user, tuple(seq[max(0, n - 2 - max_history) : n - 2]), seq[n - 2])
        )
        out["test"].append(
            Example(user, tuple(seq[max(0, n - 1 - max_history) : n - 1]), seq[n - 1])
        )
    return out


def sample(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of ``n`` out of ``n_total`` (``None`` or ``n <= 0``: all).

    The one way anything is subsampled (training examples, evaluated users, probed users,
    rationales): a prefix of one seeded permutation, so a larger ``n`` extends a smaller one's
    sample.
    """
    if n is None or n <= 0 or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def stats(ds: Dataset) -> dict:
    """Users, items, interactions and the sequence-length distribution."""
    lengths = np.array([len(s) for s in ds.sequences.values()])
    n_inter = int(lengths.sum())
    return {
        "dataset": ds.name,
        "users": len(ds.sequences),
        "items": len(ds.items),
        "interactions": n_inter,
        "density": n_inter / (len(ds.sequences) * len(ds.items)),
        "items_without_title": sum(1 for it in ds.items if not it.title),
        "seq_len": {
            "min": int(lengths.min()),
            "p25": float(np.percentile(lengths, 25)),
            "median": float(np.median(lengths)),
            "mean": float(lengths.mean()),
            "p75": float(np.percentile(lengths, 75)),
            "max": int(lengths.max()),
        },
    }


def format_stats(s: dict) -> str:
    q = s["seq_len"]
    return "\n".join(
        [
            f"dataset       {s['dataset']}",
            f"users         {s['users']:,}",
            f"items         {s['items']:,}  ({s['items_without_title']} without a title)",
            f"interactions  {s['interactions']:,}  (density {s['density']:.5f})",
            f"seq length    min {q['min']}  p25 {q['p25']:g}  median {q['median']:g}  mean "
            f"{q['mean']:.1f}  p75 {q['p75']:g}  max {q['max']}",
        ]
    )


def format_split(counts: dict[str, int], max_history: int) -> str:
    """The split line under :func:`format_stats` (``counts``: examples per part of
    :func:`split`)."""
    return (
        f"split         train {counts['train']:,}  valid {counts['valid']:,}  test "
        f"{counts['test']:,}  (leave-one-out, history <= {max_history})"
    )
