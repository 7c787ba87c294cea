"""``python -m pauserec pipeline --dataset D --backbone B --preset P --out runs/NAME``: every stage in order.

init-ckpt -> cpt -> sft -> pause-pretrain -> pause-sft, and cot-sft, each into ``runs/NAME/<stage>/`` with
the ``[train.<stage>]`` settings of the preset. A finished stage (its checkpoint exists) is skipped on a
rerun and an interrupted one resumes from its saved state, so rerunning the command continues the matrix.
Each stage's wall time and device hours are in its ``pauserec.json``; ``runs/NAME/pipeline.json`` sums up.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pauserec import checkpoint, commands, files, train
from pauserec.config import parse_args, to_dict
from pauserec.errors import UserError

log = logging.getLogger(__name__)
STAGES = ("cpt", "sft", "pause-pretrain", "pause-sft", "cot-sft")
SOURCE = {"cpt": "init", "sft": "cpt", "pause-pretrain": "cpt", "pause-sft": "sft", "cot-sft": "sft"}
EVALUATED = ("sft", "pause-sft", "cot-sft")


@dataclass
class PipelineArgs:
    """Train every stage of the PauseRec matrix in order, skipping finished ones."""

    out: str = field(default="", metadata={"help": "run directory (one checkpoint per stage)"})
    dataset: str = field(default="ml-100k", metadata={"help": "ml-100k, office, beauty, toys, or a directory"})
    backbone: str = field(default="smollm2-135m", metadata={"help": "smollm2-135m, tiny, or a HF id/dir"})
    preset: str = field(default="quick", metadata={"help": "configs/NAME.toml ([pipeline], [train.*])"})
    data_root: str | None = field(default=None, metadata={"help": "folder holding Office/ Beauty/ Toys/"})
    stages: tuple[str, ...] = field(default=STAGES, metadata={"help": "comma-separated subset, in order"})
    max_history: int = field(default=20, metadata={"help": "history length recorded in the init checkpoint"})
    device: str | None = field(default=None, metadata={"help": "override every stage's device"})
    evaluate_users: int = field(default=0, metadata={"help": "test users to evaluate sft/pause/cot on (0: skip)"})


def parse(argv: list[str] | None) -> PipelineArgs:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--preset" or a.startswith("--preset=") or a in ("-h", "--help") for a in argv):
        argv += ["--preset", "quick"]
    args = parse_args(PipelineArgs, argv, "pauserec pipeline", section="pipeline")
    if not args.out:
        raise UserError("usage: python -m pauserec pipeline --dataset D --backbone B --preset P --out DIR")
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage(s) {', '.join(unknown)} (known: {', '.join(STAGES)})")
    return args


def stage_argv(args: PipelineArgs, stage: str) -> list[str]:
    out = Path(args.out)
    argv = ["--stage", stage, "--from", str(out / SOURCE[stage]), "--out", str(out / stage),
            "--preset", args.preset, "--resume"]
    if stage == "pause-sft":
        argv += ["--pause-from", str(out / "pause-pretrain")]
    return argv + (["--device", args.device] if args.device else [])


def done(path: Path) -> bool:
    return (path / checkpoint.META_FILE).is_file()


def run_init(args: PipelineArgs) -> None:
    argv = ["--dataset", args.dataset, "--backbone", args.backbone, "--preset", args.preset,
            "--max-history", str(args.max_history), "--out", str(Path(args.out) / "init")]
    commands.init_ckpt(argv + (["--data-root", args.data_root] if args.data_root else []))


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    out = Path(args.out)
    order = ["init", *[s for s in STAGES if s in args.stages]]
    rows, start = [], time.perf_counter()
    for n, stage in enumerate(order, 1):
        path = out / stage
        if done(path):
            print(f"== [{n}/{len(order)}] {stage}: finished earlier, skipped ({path})")
            rows.append(summary_row(stage, path, "skipped"))
            continue
        print(f"== [{n}/{len(order)}] {stage} -> {path}", flush=True)
        t = time.perf_counter()
        if stage == "init":
            run_init(args)
        else:
            train.main(stage_argv(args, stage))
        rows.append({**summary_row(stage, path, "ran"), "wall_s": time.perf_counter() - t})
    metrics = evaluate_all(args) if args.evaluate_users else {}
    summary = {"args": to_dict(args), "stages": rows, "wall_s": time.perf_counter() - start, "metrics": metrics}
    files.write_json(out / "pipeline.json", summary)
    print(format_summary(summary))
    return summary


def summary_row(stage: str, path: Path, status: str) -> dict:
    timings = checkpoint.read_meta(path).get("timings", {})
    t = timings.get(stage, {}) if stage != "init" else {
        "wall_s": sum(v for v in timings.values() if isinstance(v, (int, float)))}
    return {"stage": stage, "status": status, "wall_s": t.get("wall_s"), "cpu_s": t.get("cpu_s"),
            "tokens": t.get("tokens"),
            "tokens_per_s": t.get("tokens_per_s"), "device_hours": t.get("device_hours"),
            "device": t.get("device")}


def evaluate_all(args: PipelineArgs) -> dict:
    """Recall/NDCG of the sft, pause-sft and cot-sft checkpoints on a seeded sample of test users."""
    try:
        from pauserec.evaluate import evaluate
    except ImportError as err:
        log.warning("evaluation skipped: pauserec.evaluate is not available (%s)", err)
        return {}
    results = {}
    for stage in (s for s in EVALUATED if s in args.stages):
        summary, frame = evaluate(checkpoint.load(Path(args.out) / stage), "test", args.evaluate_users,
                                  latency_samples=0)
        files.write_csv(Path(args.out) / "eval" / f"{stage}.csv", frame)
        results[stage] = summary
        print(f"   {stage}: " + "  ".join(f"{k} {summary[k]:.4f}" for k in ("recall@10", "ndcg@10")))
    return results


def format_summary(summary: dict) -> str:
    lines = ["stage            status     wall s    CPU s   tokens/s  device"]
    for r in summary["stages"]:
        tps = f"{r['tokens_per_s']:9.0f}" if r.get("tokens_per_s") else " " * 9
        cpu = f"{r['cpu_s']:8.1f}" if r.get("cpu_s") else " " * 8
        lines.append(f"{r['stage']:<16} {r['status']:<8} {r['wall_s'] or 0:8.1f} {cpu}  {tps}  "
                     f"{r.get('device') or ''}")
    lines.append(f"total this run: {summary['wall_s']:.1f}s")
    return "\n".join(lines)
