"""``python -m pauserec experiment``: the paper's matrix -- train, evaluate, probe, report --
resumable.

Layout of ``--out``::

    init/                                 shared: backbone + SID tokens (SIDs fixed per dataset)
    seed{S}/{cpt,sft,pause-pretrain}/     shared stages of seed S (every stage trains with seed S)
    seed{S}/{CELL}/                       the cells: pause-k{K}, pause-k5-{INIT}, the controls
                                          (think-only, sft-continued, filler-k5), cot-{SOURCE}
    seed{S}/eval/{CELL}/metrics.json, per_user.csv
    seed{S}/eval-valid/{CELL}/            the best-of candidates on the validation split
    baselines/{popularity,markov,sasrec-seed{S}}/             classical baselines, evaluation format
    probes/{alignment,attention,verbalization,rationale}/    probes (seed 0)
    report/REPORT.md                                         analysis.make_report

Every finished piece (a checkpoint, an evaluation, a probe) is skipped on a rerun.

Claims that pick the best of several cells ("5 pauses is the best count", "a pre-trained pause beats
other inits and filler") choose on the validation split and test once: the candidates
(:func:`candidates`) are evaluated on ``valid`` too. The classical baselines read the history length
and learn from the training targets the trained conditions' checkpoints record, on the same
evaluated users.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis import make_report
from driver import gpu_prepare, pipeline
from driver.pipeline import RunArgs
from pauserec import config, registry
from pauserec.config import PROBE_NAMES, arg, build, parse_args
from pauserec.errors import UserError
from pauserec.evaluation import evaluate
from pauserec.evaluation.baselines import NAMES as BASELINES
from pauserec.evaluation.baselines import command
from pauserec.model import backbone, checkpoint
from pauserec.registry import CONTROLS, PAPER_PAUSES
from pauserec.teacher.rationales import SOURCES
from pauserec.training import train
from probes import alignment, attention, rationale, verbalization

log = logging.getLogger(__name__)
PROBES = dict(zip(PROBE_NAMES, (alignment, attention, verbalization, rationale)))
TRAJECTORY = ("init", "cpt", "sft", "pause", "cot")
ROLES = evaluate.VARIANTS  # the main conditions (see main_cells)


@dataclass
class ExperimentArgs(RunArgs):
    """Run the paper's matrix (plain, pause k-sweep and inits, compute-matched controls, CoT
    sources, classical baselines), evaluate, probe, report."""

    seeds: int = arg(1, "training seeds (0..N-1); verdicts need 3+", min=1, max=100)
    pause_counts: tuple[int, ...] = arg(
        (1, 3, 5, 10), "pause counts (init pretrained)", min=1, deprecated=("--ks",)
    )
    pause_inits: tuple[str, ...] = arg(
        ("mean-text", "mean-sid", "default"),
        f"other pause inits, at {PAPER_PAUSES} pauses",
        choices=registry.PAUSE_INITS,
    )
    controls: tuple[str, ...] = arg(CONTROLS, "compute-matched controls", choices=CONTROLS)
    rationales: tuple[str, ...] = arg(
        ("template", "template-leaky", "local", "openai"),
        "cot-sft rationale sources",
        choices=SOURCES,
    )
    main_rationale: str = arg("template", "CoT source the claims compare against", choices=SOURCES)
    baselines: tuple[str, ...] = arg(BASELINES, "classical baselines", choices=BASELINES)
    sasrec_seconds: float | None = arg(None, "sasrec: seconds cap a seed (irreproducible)", gt=0.0)
    eval_users: int = arg(0, "seeded sample of test users (0: all)", min=0)
    beams: int = arg(20, "beam width for evaluation", min=evaluate.LIST_LEN, max=evaluate.MAX_BEAMS)
    latency_samples: int = arg(500, "users timed for latency (0: skip)", min=0)
    probes: tuple[str, ...] = arg(tuple(PROBES), "probes to run (seed 0)", choices=tuple(PROBES))
    probe_users: int = arg(64, "users for attention/rationale probes", min=2)
    probe_items: int = arg(100, "items for the verbalization probe", min=1)
    umap: bool = arg(True, "alignment probe: the UMAP map of SID and words")
    alignment_stages: tuple[str, ...] = arg(TRAJECTORY, "stages probed", choices=TRAJECTORY)
    verbalization_stages: tuple[str, ...] = arg(TRAJECTORY, "stages probed", choices=TRAJECTORY)
    latency_roles: tuple[str, ...] = arg(ROLES, "main conditions timed for latency", choices=ROLES)
    report: str = arg("", "report directory (default OUT/report)")


# Every preset section, and the arguments each is checked against before any work.
SCHEMAS = {
    **pipeline.SCHEMAS,
    "experiment": ExperimentArgs,
    "evaluate": evaluate.EvalArgs,
    "baselines": command.BaselineArgs,
    "gpu": gpu_prepare.PrepareArgs,
    **{f"probes.{name}": module.Args for name, module in PROBES.items()},
}


def cells(args: ExperimentArgs) -> list[registry.Cell]:
    """The cells every seed trains (``sft`` is one of the shared stages), from
    :mod:`pauserec.registry`."""
    return registry.matrix(args.pause_counts, args.pause_inits, args.controls, sources(args))


def sources(args: ExperimentArgs, warn: bool = True) -> list[str]:
    """The rationale sources trained: ``openai*`` only where an endpoint is set."""
    out = []
    for source in args.rationales:
        if source.startswith("openai") and not os.environ.get("PAUSEREC_OPENAI_BASE_URL"):
            if warn:
                log.warning(
                    "cot-%s skipped: set PAUSEREC_OPENAI_BASE_URL (and _MODEL) to an endpoint",
                    source,
                )
            continue
        out.append(source)
    return out


def shared_args(args: ExperimentArgs, seed: int) -> pipeline.PipelineArgs:
    """The pipeline of one seed's shared stages (``seed{S}/``), on the run's one init checkpoint."""
    values = {
        "out": str(Path(args.out) / f"seed{seed}"),
        "dataset": args.dataset,
        "seed": seed,
        "backbone": args.backbone,
        "preset": args.preset,
        "data_root": args.data_root,
        "device": args.device,
        "stages": registry.SHARED,
        "init": str(Path(args.out) / "init"),
    }
    return build(pipeline.PipelineArgs, values, args.preset, "pipeline")


def cell_args(args: ExperimentArgs, seed: int, cell: registry.Cell) -> train.TrainArgs:
    root = Path(args.out) / f"seed{seed}"
    extra = {"pause_from": str(root / "pause-pretrain")} if cell.pause_source else {}
    extra |= {"device": args.device} if args.device else {}
    return train.stage_args(
        cell.stage,
        args.preset,
        **cell.train_values(),
        **extra,
        from_ckpt=str(root / cell.parent),
        out=str(root / cell.name),
        seed=seed,
        resume=True,
    )


def eval_args(
    args: ExperimentArgs, ckpt: Path, out: Path, split: str = "test"
) -> evaluate.EvalArgs:
    timed = split == "test" and ckpt.name in {main_cells(args)[r] for r in args.latency_roles}
    values = {
        "ckpt": str(ckpt),
        "out": str(out),
        "beams": args.beams,
        "split": split,
        "n_users": args.eval_users or None,
        "device": args.device or "auto",
        "latency_samples": args.latency_samples if timed else 0,
    }
    return build(evaluate.EvalArgs, values)


def baseline_args(
    args: ExperimentArgs, name: str, seed: int | None, out: Path
) -> command.BaselineArgs:
    """A baseline on the conditions' footing (:func:`footing`) and users; ``[baselines]`` of the
    preset tunes it (e.g. ``sasrec_epochs``)."""
    values = {
        "model": name,
        "dataset": args.dataset,
        "data_root": args.data_root,
        "out": str(out),
        "n_users": args.eval_users or None,
        "eval_seed": 0,
        "seed": seed or 0,
        **footing(args),
        "device": args.device or "auto",
    }
    values |= {"sasrec_seconds": args.sasrec_seconds} if args.sasrec_seconds else {}
    return build(command.BaselineArgs, values, args.preset, "baselines")


def probe_run_args(args: ExperimentArgs, name: str, values: dict[str, Any]):
    """A probe's arguments: ``[probes.NAME]`` of the preset tunes it; ``values`` name its
    checkpoints."""
    out = Path(args.out) / "probes" / name
    return build(PROBES[name].Args, {**values, "out": str(out)}, args.preset, f"probes.{name}")


def report_args(args: ExperimentArgs) -> make_report.Args:
    values = {
        "runs": [args.out],
        "out": str(report_dir(args)),
        "overwrite": True,
        "main_rationale": args.main_rationale,
    }
    return build(make_report.Args, values)


def report_dir(args: ExperimentArgs) -> Path:
    return Path(args.report or Path(args.out) / "report")


def check(args: ExperimentArgs) -> dict:
    """``--out`` as an experiment run directory, then the whole plan (:func:`check_plan`); returns
    the run's settings (:func:`driver.pipeline.settings`)."""
    if not args.out:
        raise UserError("pauserec experiment needs --out DIR")
    wanted = pipeline.settings(args)
    pipeline.check_run(args.out, "experiment", wanted)
    check_plan(args)
    pipeline.check_inputs(args, [])
    return wanted


def check_plan(args: ExperimentArgs) -> None:
    """The whole experiment before any work: every preset section, the main CoT source among the
    trained ones, and the arguments of every stage, cell, evaluation, baseline, probe and the report
    as they will run (placeholder checkpoints where they do not exist yet)."""
    config.check_preset(args.preset, SCHEMAS)
    trained = sources(args, warn=False)
    if trained and args.main_rationale not in trained:
        raise UserError(
            f"--main-rationale {args.main_rationale} is not among the trained "
            f"rationale sources ({', '.join(trained)}; openai needs "
            "PAUSEREC_OPENAI_BASE_URL)"
        )
    pipeline.check_plan(shared_args(args, 0))  # the seeds differ in their seed only
    for cell in cells(args):
        cell_args(args, 0, cell)
    eval_args(args, Path(args.out) / "seed0" / "sft", Path(args.out) / "seed0" / "eval" / "sft")
    for name in args.baselines:
        baseline_args(args, name, 0, Path(args.out) / "baselines" / name)
    for name in args.probes:
        probe_run_args(args, name, {"ckpt": [str(Path(args.out) / "init")]})
    report_args(args)


def run_seed(args: ExperimentArgs, seed: int) -> Path:
    """Shared stages, then every cell, then their evaluation, for one training seed."""
    shared = shared_args(args, seed)
    pipeline.run(shared)
    root = Path(shared.out)
    for cell in cells(args):
        path = root / cell.name
        if cell.stage not in registry.SHARED and not pipeline.done(path):
            print(f"== seed {seed}: train {cell.name}", flush=True)
            train.run(cell_args(args, seed, cell))
        run_eval(args, path, root / "eval" / cell.name)
        if cell in candidates(args):
            run_eval(args, path, root / "eval-valid" / cell.name, split="valid")
    return root


def candidates(args: ExperimentArgs) -> list[registry.Cell]:
    """The cells a best-of claim chooses among on the validation split: the other pause inits and
    the filler control, the other pause counts -- each family only with two or more to choose."""
    rivals = [
        c
        for c in cells(args)
        if c.stage == "pause-sft"
        and c.control in ("", "filler")
        and c.name != main_cells(args)["pause"]
    ]
    inits = [c for c in rivals if c.control == "filler" or c.pause_init != "pretrained"]
    counts = [c for c in rivals if c.control == "" and c.pause_init == "pretrained"]
    return [c for family in (inits, counts) if len(family) > 1 for c in family]


def main_cells(args: ExperimentArgs) -> dict[str, str]:
    """{role: cell name} of the main conditions: plain SFT, the paper's pause cell, the main CoT
    source."""
    return {
        "plain": "sft",
        "pause": registry.cell_name("pause-sft", PAPER_PAUSES),
        "cot": registry.cell_name("cot-sft", rationale=args.main_rationale),
    }


def run_eval(args: ExperimentArgs, ckpt: Path, out: Path, split: str = "test") -> None:
    if (out / "metrics.json").is_file():
        return
    print(f"== evaluate {ckpt.parent.name}/{ckpt.name} ({split})", flush=True)
    evaluate.run(eval_args(args, ckpt, out, split))


def footing(args: ExperimentArgs) -> dict[str, Any]:
    """The history length and training targets the baselines share with the trained conditions, as
    the checkpoints record them (seed 0's paper pause cell, else its sft)."""
    root = Path(args.out) / "seed0"
    for name in (main_cells(args)["pause"], "sft"):
        if pipeline.done(root / name):
            meta = checkpoint.read_meta(root / name)
            return {
                "max_history": (meta.get("dataset") or {}).get("max_history", 20),
                "train_targets": meta.get("train_targets") or "all",
            }
    return {}


def run_baselines(args: ExperimentArgs) -> None:
    """Each classical baseline on the evaluated users, with the conditions' history length and
    training targets (:func:`footing`); sasrec once per training seed, early-stopped on the
    validation split. The preset's ``[baselines]`` section tunes them (e.g. ``sasrec_epochs``)."""
    for name in args.baselines:
        for seed in range(args.seeds) if name == "sasrec" else [None]:
            out = Path(args.out) / "baselines" / (name if seed is None else f"{name}-seed{seed}")
            if (out / "metrics.json").is_file():
                continue
            print(f"== baseline {out.name}", flush=True)
            command.run(baseline_args(args, name, seed, out))


def probe_args(args: ExperimentArgs, root: Path) -> dict[str, dict[str, Any]]:
    """Probe -> its arguments (checkpoints + options). Trajectories run over the stages of seed
    0."""
    counts = sorted(args.pause_counts, key=lambda n: n != PAPER_PAUSES)  # the paper's count first
    pause = next(
        (c for c in (registry.cell_name("pause-sft", n) for n in counts) if (root / c).is_dir()),
        None,
    )
    cot = main_cells(args)["cot"] if (root / main_cells(args)["cot"]).is_dir() else None
    where = {
        "init": Path(args.out) / "init",
        "cpt": root / "cpt",
        "sft": root / "sft",
        "pause": root / pause if pause else None,
        "cot": root / cot if cot else None,
    }

    def trajectory(names: tuple[str, ...]) -> list[str]:
        return [
            str(where[n])
            for n in TRAJECTORY
            if n in names and where[n] and (where[n] / "pauserec.json").is_file()
        ]

    common = {"device": args.device or "auto", "seed": 0}
    plan = {
        "alignment": {"ckpt": trajectory(args.alignment_stages), "umap": args.umap},
        "attention": {
            "ckpt": [str(root / pause)],
            "n_users": args.probe_users,
            "interventions": True,
        }
        if pause
        else None,
        "verbalization": {
            "ckpt": trajectory(args.verbalization_stages),
            "n_items": args.probe_items,
        },
        "rationale": {"ckpt": [str(root / cot)], "n_users": args.probe_users} if cot else None,
    }
    if not backbone.language_model(args.backbone):
        for name in ("alignment", "verbalization"):
            if plan.pop(name, None) and name in args.probes:
                print(
                    f"== probe {name}: skipped, it needs a pretrained language model and "
                    f"{args.backbone} is trained from scratch here",
                    flush=True,
                )
    return {
        name: {**values, **common}
        for name, values in plan.items()
        if name in args.probes and values
    }


def run_probes(args: ExperimentArgs, root: Path) -> None:
    for name, values in probe_args(args, root).items():
        out = Path(args.out) / "probes" / name
        if (out / "results.csv").is_file():
            print(f"== probe {name}: finished earlier, skipped", flush=True)
            continue
        print(f"== probe {name}", flush=True)
        t = time.perf_counter()
        PROBES[name].run(probe_run_args(args, name, values))
        print(f"   {name} took {time.perf_counter() - t:.0f}s", flush=True)


def run(args: ExperimentArgs, report: bool = True) -> Path:
    """The whole matrix for every seed, the probes on seed 0, then (``report``) the report; returns
    the report's directory (``OUT/report`` unless ``--report``)."""
    start = time.perf_counter()
    wanted = check(args)
    with pipeline.claim_run(args.out, "experiment", wanted):  # resumed, never replaced
        first = shared_args(args, 0)
        if not pipeline.done(pipeline.init_path(first)):  # one init for every seed, built first
            pipeline.run_stage(first, "init")
        roots = [run_seed(args, seed) for seed in range(args.seeds)]
        run_baselines(args)
        run_probes(args, roots[0])
        if report:
            make_report.run(report_args(args))
    where = report_dir(args)
    print(
        f"experiment finished in {time.perf_counter() - start:.0f}s"
        + (f"; report: {where / 'REPORT.md'}" if report else "")
    )
    return where


def main(argv: list[str] | None = None) -> Path:
    return run(parse_args(ExperimentArgs, argv, "pauserec experiment", section="experiment"))
