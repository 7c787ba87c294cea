"""``python -m pauserec data stats``: users, items, interactions, sequence lengths and split
sizes."""

from __future__ import annotations

from dataclasses import dataclass

from pauserec.config import arg, parse_args
from pauserec.data import datasets as data
from pauserec.data.datasets import data_root_arg, dataset_arg


@dataclass
class DataArgs:
    """Print users, items, interactions and the sequence-length distribution of a dataset."""

    dataset: str = dataset_arg()
    data_root: str | None = data_root_arg()
    max_history: int = arg(20, "history truncation for the split counts", min=1)


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
