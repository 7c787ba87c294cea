"""``data export``: a dataset in RecBole's atomic-file format, so a baseline trains on exactly our
split.

Writes ``OUT/<name>/<name>.inter`` (``user_id:token  item_id:token  timestamp:float``),
``OUT/<name>/<name>.item`` (title, categories, brand, year) and ``OUT/recbole.yaml``. The LC-Rec
layout stores order, not time, so an interaction's timestamp is its position in the user's sequence
(0, 1, 2, ...): RecBole's ``eval_args: {split: {LS: valid_and_test}, order: TO}`` with
``MAX_ITEM_LIST_LENGTH`` = our ``max_history`` then yields our leave-one-out split
(:func:`pauserec.data.split`) example for example.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pauserec import data, files
from pauserec.config import arg, parse_args
from pauserec.data.datasets import data_root_arg, dataset_arg
from pauserec.errors import UserError

FORMATS = ("recbole",)
INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float"
ITEM_HEADER = "item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\tyear:token"


@dataclass
class ExportArgs:
    """Write a dataset in a standard toolkit's format with our leave-one-out order."""

    dataset: str = dataset_arg()
    data_root: str | None = data_root_arg()
    format: str = arg("recbole", "recbole (atomic files + a yaml)", choices=FORMATS)
    out: str | None = arg(None, "output folder")
    overwrite: bool = arg(False, "replace an existing non-empty --out")
    max_history: int = arg(20, "history truncation (MAX_ITEM_LIST_LENGTH)", min=1)


def _field(value: str) -> str:
    """One atomic-file field: no tabs or line breaks inside."""
    return " ".join(value.split())


def inter_text(ds: data.Dataset) -> str:
    rows = [INTER_HEADER]
    for user, seq in ds.sequences.items():
        rows += [f"{_field(user)}\t{ds.items[i].item_id}\t{pos}" for pos, i in enumerate(seq)]
    return "\n".join(rows) + "\n"


def item_text(ds: data.Dataset) -> str:
    rows = [ITEM_HEADER]
    for it in ds.items:
        cats = " ".join(c.strip().replace(" ", "_") for c in it.categories.split(",") if c.strip())
        rows.append("\t".join([it.item_id, _field(it.title), cats, _field(it.brand), it.year]))
    return "\n".join(rows) + "\n"


def yaml_text(name: str, data_path: Path, max_history: int) -> str:
    return "\n".join(
        [
            f"# RecBole settings that reproduce the workbench's leave-one-out split of {name}",
            f"dataset: {name}",
            f"data_path: {data_path}",
            'field_separator: "\\t"',
            'seq_separator: " "',
            "USER_ID_FIELD: user_id",
            "ITEM_ID_FIELD: item_id",
            "TIME_FIELD: timestamp",
            "load_col:",
            "  inter: [user_id, item_id, timestamp]",
            f"MAX_ITEM_LIST_LENGTH: {max_history}",
            'user_inter_num_interval: "[0,inf)"  # already filtered: keep every user and item',
            'item_inter_num_interval: "[0,inf)"',
            "eval_args:",
            "  split: {LS: valid_and_test}",
            "  order: TO",
            "  group_by: user",
            "  mode: full",
            "",
        ]
    )


def export_recbole(ds: data.Dataset, out: Path, max_history: int) -> Path:
    """Write the atomic files and the yaml into ``out`` in one atomic rename; returns the yaml's
    path."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", ds.name)
    with files.atomic_dir(out) as tmp:
        files.write_text(tmp / name / f"{name}.inter", inter_text(ds))
        files.write_text(tmp / name / f"{name}.item", item_text(ds))
        files.write_text(tmp / "recbole.yaml", yaml_text(name, out.resolve(), max_history))
    return out / "recbole.yaml"


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(ExportArgs, argv, "pauserec data export")
    if args.format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)} (got '{args.format}')")
    if not args.out:
        raise UserError("data export needs --out DIR")
    out = Path(args.out)
    inputs = [args.dataset, *data.source_paths(args.dataset, args.data_root)]  # names resolved
    with files.claim(out, kind="pauserec data export", overwrite=args.overwrite, inputs=inputs):
        ds = data.load_dataset(args.dataset, args.data_root)
        path = export_recbole(ds, out, args.max_history)
    n = sum(len(s) for s in ds.sequences.values())
    print(
        f"wrote {n:,} interactions of {len(ds.sequences):,} "
        f"users and {len(ds.items):,} items to {out}"
    )
    print(f"RecBole: run_recbole(model='SASRec', dataset='{ds.name}', config_file_list=['{path}'])")
    return path
