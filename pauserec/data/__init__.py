"""Datasets: loading, the leave-one-out split, raw public files and exports.

| module   | holds                                                                            |
|----------|----------------------------------------------------------------------------------|
| datasets | ``ml-100k`` and LC-Rec datasets, :class:`Item`, the split, seeded samples, stats |
| command  | ``python -m pauserec data stats``                                                |
| prepare  | ``data prepare``: raw Amazon / MovieLens files -> the LC-Rec layout              |
| rawdata  | readers of the raw public formats (counted skips of malformed lines)             |
| download | ``--download`` of the public raw files                                           |
| export   | ``data export``: RecBole atomic files with exactly our split                     |

The names below are what the rest of the workbench uses (``data.load_dataset``, ``data.split``,
...).
"""

from pauserec.data.datasets import (
    AMAZON,
    DATA_ENV,
    MIN_INTERACTIONS,
    TEXT_FIELDS,
    TRAIN_TARGETS,
    Dataset,
    Example,
    Item,
    Window,
    data_root_arg,
    dataset_arg,
    default_roots,
    folder_name,
    format_split,
    format_stats,
    load_dataset,
    resolve_dir,
    sample,
    source_paths,
    split,
    stats,
    windows,
)

__all__ = [
    "AMAZON",
    "DATA_ENV",
    "MIN_INTERACTIONS",
    "TEXT_FIELDS",
    "TRAIN_TARGETS",
    "Dataset",
    "Example",
    "Item",
    "Window",
    "data_root_arg",
    "dataset_arg",
    "default_roots",
    "folder_name",
    "format_split",
    "format_stats",
    "load_dataset",
    "resolve_dir",
    "sample",
    "source_paths",
    "split",
    "stats",
    "windows",
]
