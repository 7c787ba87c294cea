"""The main job on the embedded defaults: what ``make demo`` runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pauserec import checkpoint, commands
from pauserec.config import parse_args


@dataclass
class DemoArgs:
    """Dataset stats -> Semantic IDs -> an untrained checkpoint that every later tool accepts."""

    dataset: str = field(default="ml-100k", metadata={"help": "dataset name or directory"})
    backbone: str = field(default="smollm2-135m", metadata={"help": "backbone name, HF id or directory"})
    preset: str = field(default="quick", metadata={"help": "configs/NAME.toml"})
    out: str = field(default="runs/demo", metadata={"help": "run directory"})
    data_root: str | None = field(default=None, metadata={"help": "folder holding Office/ Beauty/ Toys/"})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(DemoArgs, argv, "pauserec demo")
    start = time.perf_counter()
    out = Path(args.out)
    print(f"== 1/3 dataset {args.dataset}")
    common = ["--dataset", args.dataset] + (["--data-root", args.data_root] if args.data_root else [])
    commands.data_stats(common)
    print("== 2/3 Semantic IDs")
    commands.sid_build(common + ["--preset", args.preset, "--out", str(out / "sids")])
    print(f"== 3/3 checkpoint with backbone {args.backbone}")
    commands.init_ckpt(common + ["--preset", args.preset, "--backbone", args.backbone,
                                 "--sid-source", str(out / "sids" / "sids.json"), "--out", str(out / "init")])
    t = time.perf_counter()
    ckpt = checkpoint.load(out / "init")
    print(f"reloaded {out / 'init'} in {time.perf_counter() - t:.1f}s: stage {ckpt.stage}, "
          f"{len(ckpt.catalog):,} items; demo finished in {time.perf_counter() - start:.0f}s")
