"""The main job on the embedded defaults -- what ``make demo`` runs.

Dataset stats, then the ``quick`` experiment (SIDs, every training stage with the real SmolLM2 backbone,
the compute-matched controls, the classical baselines, evaluation, every probe) and the report, all on
CPU. It is ``pauserec experiment`` with the demo's defaults, so a rerun skips what is finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from driver import experiment
from driver.pipeline import RunArgs
from pauserec.config import build, parse_args
from pauserec.data import command as data_command


@dataclass
class DemoArgs(RunArgs):
    """The quick experiment on the embedded default dataset, end to end, with a report."""

    out: str = field(default="runs/demo", metadata={"help": "run directory"})


def run(args: DemoArgs) -> None:
    start = time.perf_counter()
    values = {"out": args.out, "dataset": args.dataset, "backbone": args.backbone, "preset": args.preset,
              "data_root": args.data_root, "device": args.device}
    exp = build(experiment.ExperimentArgs, values, args.preset, "experiment")
    experiment.check(exp)  # the whole run, before the dataset stats; experiment.run claims --out
    print(f"== dataset {args.dataset}", flush=True)
    data_args = {"dataset": args.dataset, "data_root": args.data_root}
    data_command.stats(build(data_command.DataArgs, data_args))
    report = experiment.run(exp)
    print(f"demo finished in {time.perf_counter() - start:.0f}s -- open {report / 'REPORT.html'} in a browser")


def main(argv: list[str] | None = None) -> None:
    run(parse_args(DemoArgs, argv, "pauserec demo"))
