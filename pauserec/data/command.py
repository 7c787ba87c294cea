"""``python -m pauserec data stats``: users, items, interactions, sequence lengths and split
sizes."""

from __future__ import annotations

from dataclasses import dataclass, field

from pauserec.config import parse_args
from pauserec.data import datasets as data


@dataclass
class DataArgs:
    """Print users, items, interactions and the sequence-length distribution of a dataset."""

    dataset: str = field(
        default="ml-100k", metadata={"help": "ml-100k, office, beauty, toys, or a directory"}
    )
    data_root: str | None = field(
        default=None, metadata={"help": "folder holding Office/ Beauty/ Toys/"}
    )
    max_history: int = field(
        default=20, metadata={"help": "history truncation for the split counts", "min": 1}
    )


def data_stats(argv: list[str] | None = None) -> dict:
    return stats(parse_args(DataArgs, argv, "pauserec data stats"))


def stats(args: DataArgs) -> dict:
    """Print (and return) a dataset's size, sequence lengths and split sizes."""
    ds = data.load_dataset(args.dataset, args.data_root)
    s = data.stats(ds)
    s["split"] = {k: len(v) for k, v in data.split(ds, args.max_history).items()}
    print(data.format_stats(s))
    print(data.format_split(s["split"], args.max_history))
    return s
