"""What every probe shares: its argument base class, checkpoint loading and the results contract.

Every probe writes, atomically, ``OUT/results.csv`` (tidy: one measurement per row, always ``variant,
metric, value`` plus ``ckpt, stage`` and whichever of ``layer, head, pos, user_id, item_id, seed`` apply),
``OUT/meta.json`` (args, versions, checkpoint hashes) and its figures as ``OUT/figures/NAME.{png,pdf}``.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pauserec import __version__, checkpoint, files
from pauserec.checkpoint import Checkpoint
from pauserec.cli import run, setup_logging
from pauserec.config import parse_args, to_dict
from pauserec.errors import UserError

REQUIRED_COLUMNS = ("variant", "metric", "value")


@dataclass
class ProbeArgs:
    """Base arguments of every probe."""

    ckpt: list[str] = field(default_factory=list, metadata={"positional": True, "help": "checkpoint dir(s)"})
    out: str = field(default="", metadata={"help": "output directory (results.csv, meta.json, figures/)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:1, ..."})


def parse(cls, argv: list[str] | None, prog: str):
    args = parse_args(cls, argv, prog)
    if not args.out:
        raise UserError(f"{prog}: --out DIR is required")
    for path in args.ckpt:
        checkpoint.read_meta(path)  # fail fast, before any work, on a bad checkpoint
    return args


def iter_ckpts(paths: list[str], device: str = "cpu", **kwargs) -> Iterator[Checkpoint]:
    """Load checkpoints one at a time (a trajectory of stages never sits in memory at once)."""
    for path in paths:
        yield checkpoint.load(path, device=device, **kwargs)


def label(ckpt: Checkpoint) -> dict[str, Any]:
    """Columns that identify a checkpoint in results: ``ckpt`` (dir name), ``stage``, ``variant``."""
    name = ckpt.path.name if ckpt.path else "ckpt"
    return {"ckpt": name, "stage": ckpt.stage, "variant": ckpt.variant}


def ckpt_hash(path: str | Path) -> str:
    """Content hash of a checkpoint's metadata, catalog and config (cheap; weights by size)."""
    path = Path(path)
    h = hashlib.sha256()
    for name in ("pauserec.json", "items.jsonl", "config.json"):
        p = path / name
        if p.is_file():
            h.update(p.read_bytes())
    for p in sorted(path.glob("model*.safetensors")):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
        with open(p, "rb") as fh:  # header + first MiB: changes whenever the weights do, in practice
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def write_results(df: pd.DataFrame, args, figures: dict[str, Any] | None = None,
                  extra: dict[str, Any] | None = None) -> Path:
    """Write results.csv, meta.json and figures into ``args.out`` in one atomic step."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results lack required column(s) {missing}")
    import torch
    import transformers

    meta = {
        "probe": getattr(args, "probe_name", "") or type(args).__module__.rsplit(".", 1)[-1],
        "args": to_dict(args),
        "versions": {"pauserec": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "checkpoints": {str(p): ckpt_hash(p) for p in args.ckpt},
        "rows": len(df),
        **(extra or {}),
    }
    with files.atomic_dir(args.out) as tmp:
        df.to_csv(tmp / "results.csv", index=False)
        files.write_json(tmp / "meta.json", meta)
        if figures:
            from analysis.theme import save_figure

            for name, fig in figures.items():
                save_figure(fig, tmp / "figures" / name)
    return Path(args.out)


def cli(main: Callable[[list[str] | None], object]) -> None:
    """``if __name__ == "__main__": cli(main)`` -- one-line errors, exit code 2 on bad input."""
    setup_logging()
    sys.exit(run(main))
