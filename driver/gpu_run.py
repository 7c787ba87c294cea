"""``python -m pauserec gpu run DIR``: the paper's comparison in one time-boxed command on one GPU.

Joins the backbone's GGUF parts, builds the init checkpoint from the carried data and SIDs, trains
cpt -> sft -> pause-pretrain -> pause-sft (5 pauses) -> the think-only control -> cot-sft (template), runs the
classical baselines, evaluates every cell on the test users with 20 beams and times latency with the
paper's protocol -- all within ``--budget-s``. Training takes a share of the budget: after the first
stage it knows its real tokens/s and scales every later stage's steps to fit (the scale is recorded);
evaluation then covers as many users as the remaining time allows (all, when it can). Writes the
experiment layout under ``--work`` and exports the results (no weights) as ``results.tar.gz`` plus
``results.json`` into ``--export`` (``$OUT`` on the device machine), which ``analysis.make_report`` reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from driver import gpu_prepare
from driver.gpu_prepare import STAGE_PLAN
from pauserec import files
from pauserec.config import build, parse_args
from pauserec.errors import UserError
from pauserec.evaluation import evaluate
from pauserec.evaluation.baselines import command as baseline
from pauserec.model import init_ckpt
from pauserec.model.device import DEVICES_HELP, name_of, resolve_device
from pauserec.training import train

log = logging.getLogger(__name__)
CELLS = tuple(c.name for c in gpu_prepare.CELLS)  # evaluated, in this order
TRAIN_SHARE = 0.55  # of the budget; evaluation, baselines and latency take the rest


@dataclass
class GpuRunArgs:
    """Run the prepared comparison in one command (see the module docstring)."""

    folder: str = field(default="", metadata={"positional": True, "help": "the prepared run/ folder"})
    part1: str = field(default="", metadata={"help": "the GGUF's first part (default: FOLDER/../part1/...)"})
    work: str = field(default="", metadata={"help": "experiment directory (default: /tmp/pauserec-gpu)"})
    export: str = field(default="", metadata={"help": "where results.tar.gz + results.json go (default: $OUT, "
                                                      "else WORK/export)"})
    budget_s: float = field(default=510.0, metadata={"help": "total time budget, seconds", "gt": 0.0})
    eval_batch: int = field(default=256, metadata={"help": "users decoded together", "min": 1})
    latency_samples: int = field(default=500, metadata={"help": "timed users (batches of 16)", "min": 16})
    sasrec_seconds: float = field(default=30.0, metadata={"help": "SASRec training time", "gt": 0.0})
    max_users: int = field(default=0, metadata={"help": "cap on evaluated users (0: all)", "min": 0})
    device: str = field(default="auto", metadata={"help": DEVICES_HELP})


class Clock:
    """Seconds left of the budget."""

    def __init__(self, budget: float):
        self.start, self.budget = time.perf_counter(), budget

    def used(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.used()


def backbone_file(folder: Path, plan: dict, part1: str) -> str:
    """The backbone to load: ``tiny`` for rehearsals, else the joined GGUF file (checked by sha256)."""
    if "gguf_sha256" not in plan:
        return plan["backbone"]
    first = Path(part1) if part1 else folder.parent / "part1" / "backbone.gguf.part1"
    if not first.is_file():
        raise UserError(f"the GGUF's first part is missing ({first}); carry it first (see README, GPU run)")
    joined = Path("/tmp/pauserec-backbone.gguf")
    blob = first.read_bytes() + (folder / "backbone.gguf.part2").read_bytes()
    if hashlib.sha256(blob).hexdigest() != plan["gguf_sha256"]:
        raise UserError("the joined GGUF does not match the prepared one: a part is truncated or stale")
    joined.write_bytes(blob)
    return str(joined)


def init(folder: Path, plan: dict, work: Path, model: str) -> None:
    if (work / "init" / "pauserec.json").is_file():
        return
    values = {"dataset": plan["source_dataset"], "data_root": str(folder / "data"), "backbone": model,
              "sid_source": str(folder / "sids.json"), "max_history": plan["max_history"], "out": str(work / "init")}
    init_ckpt.create(build(init_ckpt.InitArgs, values))


def train_all(plan: dict, work: Path, clock: Clock, device: str) -> dict:
    """Every stage, the later ones scaled to the training share of the budget; returns the scales."""
    seed_dir, scales, speed = work / "seed0", {}, plan["budget"]["assumed_tokens_per_s"]
    train_end = TRAIN_SHARE * clock.budget
    for i, cell in enumerate(STAGE_PLAN):
        name = cell.name
        todo = plan["stages"][name]
        rest = sum(plan["stages"][c.name]["tokens"] for c in STAGE_PLAN[i:])
        scale = min(1.0, max(train_end - clock.used(), 1.0) * speed / max(rest, 1))
        steps = max(1, math.floor(scale * todo["steps"]))
        scales[name] = {"scale": scale, "steps": steps, "planned_steps": todo["steps"]}
        out = seed_dir / name
        if not (out / "pauserec.json").is_file():
            src = work / "init" if cell.parent == "init" else seed_dir / cell.parent
            more = {"pause_from": str(seed_dir / "pause-pretrain")} if cell.pause_source else {}
            args = train.stage_args(cell.stage, plan["preset"], **cell.train_values(), **more, from_ckpt=str(src),
                                    out=str(out), max_steps=steps, device=device, resume=True)
            done = train.run(args)
            speed = done.meta["timings"][cell.stage]["tokens_per_s"]  # measured: the later stages use it
        print(f"== {name}: {steps}/{todo['steps']} steps (scale {scale:.2f}); {clock.left():.0f}s left", flush=True)
    return scales


def evaluate_all(args: GpuRunArgs, work: Path, clock: Clock, users: int) -> dict:
    """Each cell on as many test users as the time left allows (the same users for every cell)."""
    n = min(users, args.max_users or users)
    out = {"users": n}
    for i, cell in enumerate(CELLS):
        dest = work / "seed0" / "eval" / cell
        if (dest / "metrics.json").is_file():
            continue
        values = {"ckpt": str(work / "seed0" / cell), "out": str(dest), "n_users": n, "batch_size": args.eval_batch,
                  "latency_samples": args.latency_samples, "device": args.device}
        summary = evaluate.run(build(evaluate.EvalArgs, values))
        per_user_s = summary["beam_seconds"] / max(summary["n_users"], 1)
        share = clock.left() / max(len(CELLS) - i - 1, 1) - 15  # keep some seconds for the export
        if i == 0 and per_user_s * n > share:  # the first cell tells how many users the rest can afford
            n = max(64, int(share / per_user_s))
            out.update(users=n, reduced=f"users cut to {n} after {cell} ran at {1 / per_user_s:.0f} users/s")
    return out


def export(work: Path, dest: Path, record: dict) -> None:
    """``results.tar.gz`` (every small result file, no weights) and ``results.json``."""
    dest.mkdir(parents=True, exist_ok=True)
    keep = ("pauserec.json", "metrics.json", "per_user.csv", "train_log.csv", "results.csv", "meta.json")
    with tarfile.open(dest / "results.tar.gz", "w:gz") as tar:
        for p in sorted(work.rglob("*")):
            if p.name in keep and ".tmp" not in str(p):
                tar.add(p, arcname=str(p.relative_to(work)))
    files.write_json(dest / "results.json", record)


def run(args: GpuRunArgs) -> dict:
    if not args.folder:
        raise UserError("usage: python -m pauserec gpu run PREPARED_RUN_FOLDER")
    folder = Path(args.folder)
    plan_path = folder / "plan.json"
    if not plan_path.is_file():
        raise UserError(f"{folder} is not a prepared GPU run (no plan.json): run `python -m pauserec gpu prepare`")
    plan = files.read_json(plan_path)
    clock, device = Clock(args.budget_s), str(resolve_device(args.device))
    work = Path(args.work or "/tmp/pauserec-gpu")
    print(f"== GPU run on {name_of(resolve_device(args.device))}: budget {args.budget_s:.0f}s", flush=True)
    init(folder, plan, work, backbone_file(folder, plan, args.part1))
    record = {"plan": plan, "device": name_of(resolve_device(args.device)), "scales": train_all(plan, work, clock,
                                                                                                device)}
    for name in ("popularity", "markov", "sasrec"):
        out = work / "baselines" / name
        if not (out / "metrics.json").is_file():
            values = {"model": name, "dataset": plan["source_dataset"], "data_root": str(folder / "data"),
                      "out": str(out), "sasrec_seconds": args.sasrec_seconds, "device": args.device}
            baseline.run(build(baseline.BaselineArgs, values))
    record["evaluation"] = evaluate_all(args, work, clock, plan["users"])
    record["seconds"] = clock.used()
    record["metrics"] = {p.parent.name: {k: v for k, v in json.loads(p.read_text()).items()
                                         if k.startswith(("recall@", "ndcg@", "latency_ms", "coverage", "distinct"))}
                         for p in work.rglob("metrics.json")}
    export(work, Path(args.export or os.environ.get("OUT") or work / "export"), record)
    print(f"== done in {clock.used():.0f}s of {args.budget_s:.0f}s: {json.dumps(record['metrics'], indent=1)}")
    return record


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(GpuRunArgs, argv, "pauserec gpu run"))

