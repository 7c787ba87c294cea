"""``python -m pauserec experiment``: the paper's matrix -- train, evaluate, probe, report -- resumable.

Layout of ``--out``::

    seed{S}/{init,cpt,sft,pause-pretrain}/     shared stages (pipeline)
    seed{S}/pause-k{K}/  seed{S}/pause-k5-{INIT}/  seed{S}/cot-{SOURCE}/    the cells
    seed{S}/eval/{CELL}/metrics.json, per_user.csv                          evaluation
    probes/{alignment,attention,verbalization,rationale}/                   probes (seed 0)
    report/REPORT.md                                                        analysis.make_report

Every finished piece (a checkpoint, an evaluation, a probe) is skipped on a rerun.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pauserec import evaluate, pipeline, train
from pauserec.config import parse_args
from pauserec.errors import UserError

log = logging.getLogger(__name__)
PROBES = ("alignment", "attention", "verbalization", "rationale")


@dataclass
class ExperimentArgs:
    """Run the paper's matrix (plain, pause k-sweep and inits, CoT sources), evaluate, probe, report."""

    out: str = field(default="", metadata={"help": "experiment directory"})
    dataset: str = field(default="ml-100k", metadata={"help": "ml-100k, office, beauty, toys, or a directory"})
    backbone: str = field(default="smollm2-135m", metadata={"help": "smollm2-135m, tiny, or a HF id/dir"})
    preset: str = field(default="quick", metadata={"help": "configs/NAME.toml ([experiment], [train.*])"})
    data_root: str | None = field(default=None, metadata={"help": "folder holding Office/ Beauty/ Toys/"})
    seeds: int = field(default=1, metadata={"help": "training seeds (0..N-1)"})
    ks: tuple[int, ...] = field(default=(1, 3, 5, 10), metadata={"help": "pause counts (init pretrained)"})
    pause_inits: tuple[str, ...] = field(default=("mean-text", "mean-sid", "default"),
                                         metadata={"help": "other pause inits, at k=5"})
    rationales: tuple[str, ...] = field(default=("template", "template-leaky", "local", "openai"),
                                        metadata={"help": "cot-sft rationale sources"})
    eval_users: int = field(default=0, metadata={"help": "seeded sample of test users (0: all)"})
    beams: int = field(default=20, metadata={"help": "beam width for evaluation"})
    probes: tuple[str, ...] = field(default=PROBES, metadata={"help": "probes to run (seed 0)"})
    probe_users: int = field(default=64, metadata={"help": "users for attention/rationale probes"})
    probe_items: int = field(default=100, metadata={"help": "items for the verbalization probe"})
    device: str | None = field(default=None, metadata={"help": "override every stage's device"})
    report: str = field(default="", metadata={"help": "report directory (default OUT/report)"})


def parse(argv: list[str] | None) -> ExperimentArgs:
    argv = list(argv or [])
    if not any(a == "--preset" or a.startswith("--preset=") for a in argv):
        argv += ["--preset", "quick"]
    args = parse_args(ExperimentArgs, argv, "pauserec experiment", section="experiment")
    if not args.out:
        raise UserError("pauserec experiment needs --out DIR")
    unknown = sorted(set(args.probes) - set(PROBES))
    if unknown:
        raise UserError(f"unknown probe(s) {', '.join(unknown)} (known: {', '.join(PROBES)})")
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    return args


def cells(args: ExperimentArgs) -> dict[str, list[str]]:
    """Cell name -> extra train flags. ``sft`` (plain) is a cell too, trained by the pipeline."""
    out: dict[str, list[str]] = {"sft": []}
    for k in args.ks:
        out[f"pause-k{k}"] = ["--stage", "pause-sft", "--k", str(k), "--pause-init", "pretrained"]
    for init in args.pause_inits:
        out[f"pause-k5-{init}"] = ["--stage", "pause-sft", "--k", "5", "--pause-init", init]
    for source in args.rationales:
        if source.startswith("openai") and not os.environ.get("PAUSEREC_OPENAI_BASE_URL"):
            log.warning("cot-%s skipped: set PAUSEREC_OPENAI_BASE_URL (and _MODEL) to an endpoint", source)
            continue
        out[f"cot-{source}"] = ["--stage", "cot-sft", "--rationale", source]
    return out


def _done(path: Path, marker: str) -> bool:
    return (path / marker).is_file()


def run_seed(args: ExperimentArgs, seed: int) -> Path:
    """Shared stages, then every cell, then their evaluation, for one seed."""
    root = Path(args.out) / f"seed{seed}"
    common = ["--dataset", args.dataset, "--backbone", args.backbone, "--preset", args.preset,
              "--stages", "cpt,sft,pause-pretrain", "--out", str(root)]
    common += (["--data-root", args.data_root] if args.data_root else [])
    common += (["--device", args.device] if args.device else [])
    pipeline.main(common)
    for name, flags in cells(args).items():
        path = root / name
        if name != "sft" and not _done(path, "pauserec.json"):
            print(f"== seed {seed}: train {name}", flush=True)
            extra = ["--pause-from", str(root / "pause-pretrain")] if "pause-sft" in flags else []
            train.main(flags + extra + ["--from", str(root / "sft"), "--out", str(path), "--preset",
                                        args.preset, "--seed", str(seed), "--resume"]
                       + (["--device", args.device] if args.device else []))
        ev = root / "eval" / name
        if not _done(ev, "metrics.json"):
            print(f"== seed {seed}: evaluate {name}", flush=True)
            evaluate.main([str(path), "--split", "test", "--out", str(ev), "--beams", str(args.beams)]
                          + (["--n-users", str(args.eval_users)] if args.eval_users else [])
                          + (["--device", args.device] if args.device else []))
    return root


def probe_plan(args: ExperimentArgs, root: Path) -> dict[str, list[str]]:
    """Probe -> argv (checkpoints + options). Trajectories run over the stages of seed 0."""
    pause = next((c for c in (f"pause-k{k}" for k in (5, *args.ks)) if (root / c).is_dir()), None)
    cot = next((c for c in (f"cot-{s}" for s in ("template", *args.rationales)) if (root / c).is_dir()), None)
    stages = [str(root / s) for s in ("init", "cpt", "sft", pause, cot) if s and (root / s).is_dir()]
    dev = ["--device", args.device] if args.device else []
    plan = {
        "alignment": stages + ["--no-umap"] + dev,
        "attention": ([str(root / pause), "--n-users", str(args.probe_users), "--interventions",
                       "--intervention-users", str(min(args.probe_users, 64))] + dev) if pause else None,
        "verbalization": stages + ["--n-items", str(args.probe_items)] + dev,
        "rationale": ([str(root / cot), "--n-users", str(args.probe_users)] + dev) if cot else None,
    }
    return {name: argv for name, argv in plan.items() if name in args.probes and argv}


def run_probes(args: ExperimentArgs, root: Path) -> None:
    for name, argv in probe_plan(args, root).items():
        out = Path(args.out) / "probes" / name
        if _done(out, "results.csv"):
            print(f"== probe {name}: finished earlier, skipped", flush=True)
            continue
        print(f"== probe {name}", flush=True)
        t = time.perf_counter()
        importlib.import_module(f"probes.{name}").main(argv + ["--out", str(out)])
        print(f"   {name} took {time.perf_counter() - t:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    start = time.perf_counter()
    roots = [run_seed(args, seed) for seed in range(args.seeds)]
    run_probes(args, roots[0])
    report = Path(args.report or Path(args.out) / "report")
    from analysis import make_report

    make_report.main([args.out, "--out", str(report)])
    print(f"experiment finished in {time.perf_counter() - start:.0f}s; report: {report / 'REPORT.md'}")
    return report
