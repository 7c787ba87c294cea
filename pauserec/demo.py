"""The main job on the embedded defaults -- what ``make demo`` runs.

Dataset stats, then the ``quick`` experiment (SIDs, every training stage with the real SmolLM2 backbone,
evaluation, every probe) and the report, all on CPU in minutes. It is ``pauserec experiment`` with the demo's
defaults, so a rerun skips what is finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pauserec import commands, experiment
from pauserec.config import parse_args


@dataclass
class DemoArgs:
    """The quick experiment on the embedded default dataset, end to end, with a report."""

    dataset: str = field(default="ml-100k", metadata={"help": "dataset name or directory"})
    backbone: str = field(default="smollm2-135m", metadata={"help": "backbone name, HF id or directory"})
    preset: str = field(default="quick", metadata={"help": "configs/NAME.toml"})
    out: str = field(default="runs/demo", metadata={"help": "run directory"})
    data_root: str | None = field(default=None, metadata={"help": "folder holding Office/ Beauty/ Toys/"})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(DemoArgs, argv, "pauserec demo")
    start = time.perf_counter()
    root = ["--data-root", args.data_root] if args.data_root else []
    print(f"== dataset {args.dataset}", flush=True)
    commands.data_stats(["--dataset", args.dataset, *root])
    report = experiment.main(["--dataset", args.dataset, "--backbone", args.backbone, "--preset", args.preset,
                              "--out", args.out, *root])
    print(f"demo finished in {time.perf_counter() - start:.0f}s -- open {report / 'REPORT.html'} in a browser")
