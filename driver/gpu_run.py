"""``python -m pauserec gpu run DIR``: the paper's comparison in one hard-budgeted command on a GPU.

Joins the backbone's GGUF parts, builds the init checkpoint from the carried data and SIDs, trains
cpt -> sft -> pause-pretrain -> pause-sft (5 pauses) -> the think-only control -> cot-sft
(template),
evaluates the four cells and the three classical baselines on the same test users and times latency
with the paper's protocol -- all inside ``--budget-s``, counted from the start of the process:

* Each part has its share of the budget up front (:data:`driver.gpu_prepare.SHARES`, re-derived by
  :func:`driver.gpu_prepare.budget` for this budget); a part's deadline is the sum of the shares up
  to it, so time one part leaves goes to the next.
* Training scales the steps of every stage still to train to the training deadline: from the plan's
  assumed throughput and per-stage overhead at first, then from what each finished stage measured.
  A stage's steps are decided once, and every cell of a stage trains that many (pause-k5 and its
  control think-only).
* Evaluation (:mod:`driver.gpu_eval`): the plan's number of test users at most, in rounds that every
  cell runs on the same users, until the evaluation deadline; the baselines on exactly those users;
  latency per cell within its deadline.

After every stage, evaluation round, baseline and latency the results so far go to ``--export``
(``$OUT`` on the device machine): ``results.tar.gz`` (every small result file, no weights; what
``analysis.make_report`` reads), ``results.json`` (the record: plan, budget, versions, decisions,
timings, metrics) and ``run.log`` (all the run printed, appended as it goes), so a run killed at any
moment returns everything finished before it. A rerun with the same ``--work`` resumes: finished
stages, rounds, baselines and latencies are kept and the decided steps reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from driver import gpu_eval, gpu_prepare
from driver.gpu_prepare import STAGE_PLAN
from pauserec import files
from pauserec.config import arg, build, parse_args
from pauserec.errors import UserError
from pauserec.model import checkpoint, init_ckpt
from pauserec.model.compat import VERSIONS
from pauserec.model.device import DEVICES_HELP, name_of, resolve_device
from pauserec.training import train

log = logging.getLogger(__name__)
WORK = "/tmp/pauserec-gpu"  # survives between calls on a warm device machine: a rerun resumes
KEEP = ("pauserec.json", "train_log.csv", "metrics.json", "per_user.csv")  # exported; never weights
EXPORT_MIB = 16  # the device tool returns files up to this size


@dataclass
class GpuRunArgs:
    """Run the prepared comparison in one command (see the module docstring)."""

    folder: str = arg("", "the prepared run/ folder", positional=True)
    part1: str = arg("", "the GGUF's first part (default: FOLDER/../part1/...)")
    work: str = arg(WORK, "experiment directory (a rerun resumes it)")
    export: str = arg("", "results.tar.gz/.json, run.log (default: $OUT, else WORK/export)")
    budget_s: float = arg(300.0, "total budget, seconds, counted from the process's start", gt=0.0)
    eval_batch: int = arg(256, "users decoded together", min=1)
    latency_samples: int = arg(500, "timed users per cell (fewer near its deadline)", min=16)
    sasrec_seconds: float = arg(30.0, "SASRec seconds, at most (less near its deadline)", gt=0.0)
    max_users: int = arg(0, "cap on evaluated users below the plan's (0: the plan's)", min=0)
    device: str = arg("auto", DEVICES_HELP)


def process_start() -> float:
    """``time.time()`` at this process's start (imports count against the budget); now off Linux."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


class Clock:
    """Seconds used, and seconds left until a part's deadline (seconds from the start)."""

    def __init__(self, deadlines: dict[str, float], start: float):
        self.deadlines, self.start = deadlines, start

    def used(self) -> float:
        return time.time() - self.start

    def left(self, part: str) -> float:
        return self.deadlines[part] - self.used()


class Tee(io.TextIOBase):
    """A text stream that also appends everything to a log file."""

    def __init__(self, stream, log_file):
        self.stream, self.log_file = stream, log_file

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log_file.write(text)
        self.log_file.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self) -> str:
        return self.stream.encoding


@contextlib.contextmanager
def logged_to(path: Path) -> Iterator[None]:
    """Everything printed or logged meanwhile goes to ``path`` too (appended, flushed per write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
    ]
    with open(path, "a", encoding="utf-8") as fh:
        old = sys.stdout, sys.stderr, [h.stream for h in handlers]
        sys.stdout, sys.stderr = Tee(sys.stdout, fh), Tee(sys.stderr, fh)
        for h in handlers:
            h.setStream(sys.stderr if h.stream is old[1] else sys.stdout)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old[0], old[1]
            for h, stream in zip(handlers, old[2]):
                h.setStream(stream)


def tar_gz(root: Path, paths: list[Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in paths:
            tar.add(p, arcname=str(p.relative_to(root)))
    return buf.getvalue()


def export(work: Path, dest: Path, record: dict) -> None:
    """``results.tar.gz`` + ``results.json`` into ``dest``, each replaced in one rename; the record
    is also kept in ``work`` for a rerun. Over the device tool's file size, the per-user rows go to
    a second archive, ``per_user.tar.gz`` (extracted into the same folder)."""

    def kept(p: Path) -> bool:
        parts = p.relative_to(work).parts
        hidden = any(x.startswith(".") or x.endswith(".partial") for x in parts)
        return p.name in KEEP and not hidden and parts[0] != "export"

    paths = [p for p in sorted(work.rglob("*")) if kept(p)]
    archives = {"results.tar.gz": tar_gz(work, paths)}
    if len(archives["results.tar.gz"]) > EXPORT_MIB * 2**20:
        rows = [p for p in paths if p.name == "per_user.csv"]
        archives = {
            "results.tar.gz": tar_gz(work, [p for p in paths if p not in rows]),
            "per_user.tar.gz": tar_gz(work, rows),
        }
    for name, blob in archives.items():
        if len(blob) > EXPORT_MIB * 2**20:
            log.warning(
                "%s is %.1f MiB: the device tool returns at most %d MiB a file",
                name,
                len(blob) / 2**20,
                EXPORT_MIB,
            )
        files.write_bytes(dest / name, blob)
    files.write_json(dest / "results.json", record)
    files.write_json(work / "record.json", record)


def backbone_file(folder: Path, plan: dict, part1: str, work: Path) -> str:
    """The backbone to load: ``tiny`` for rehearsals, else the GGUF file joined in ``work`` (checked
    by sha256)."""
    if "gguf_sha256" not in plan:
        return plan["backbone"]
    first = Path(part1) if part1 else folder.parent / "part1" / "backbone.gguf.part1"
    if not first.is_file():
        raise UserError(
            f"the GGUF's first part is missing ({first}); carry it first (gpu/oneshot.sh)"
        )
    joined = work / "backbone.gguf"
    blob = first.read_bytes() + (folder / "backbone.gguf.part2").read_bytes()
    if hashlib.sha256(blob).hexdigest() != plan["gguf_sha256"]:
        raise UserError(
            "the joined GGUF does not match the prepared one: a part is truncated or stale"
        )
    files.write_bytes(joined, blob)
    return str(joined)


def init(args: GpuRunArgs, folder: Path, plan: dict, work: Path) -> None:
    if (work / "init" / checkpoint.META_FILE).is_file():
        return
    values = {
        "dataset": plan["source_dataset"],
        "data_root": str(folder / "data"),
        "backbone": backbone_file(folder, plan, args.part1, work),
        "sid_source": str(folder / "sids.json"),
        "max_history": plan["max_history"],
        "out": str(work / "init"),
    }
    init_ckpt.create(build(init_ckpt.InitArgs, values))


def throughput(plan: dict, done: dict) -> tuple[float, float]:
    """(tokens/s, overhead seconds per stage): measured over the finished stages, else assumed."""
    if not done:
        assumed = plan["budget"]["assumed"]
        return assumed["tokens_per_s"], assumed["stage_overhead_s"]
    runs = done.values()
    return (
        sum(r["tokens"] for r in runs) / max(sum(r["train_s"] for r in runs), 1e-9),
        sum(r["overhead_s"] for r in runs) / len(runs),
    )


def train_all(plan: dict, work: Path, clock: Clock, device: str, record: dict, publish) -> None:
    """Every stage, its steps scaled to the training deadline (see the module docstring)."""
    seed_dir = work / "seed0"
    steps, done = record.setdefault("steps", {}), record.setdefault("stages", {})
    for i, cell in enumerate(STAGE_PLAN):
        speed, overhead = throughput(plan, done)
        todo, out = plan["stages"][cell.name], seed_dir / cell.name
        if cell.stage not in steps:  # decided once per stage: its cells train equally long
            rest = sum(plan["stages"][c.name]["tokens"] for c in STAGE_PLAN[i:])
            room = clock.left("train") - (len(STAGE_PLAN) - i) * overhead
            scale = min(1.0, max(room, 0.0) * speed / max(rest, 1))
            steps[cell.stage] = max(1, math.floor(scale * todo["steps"]))
        if not (out / checkpoint.META_FILE).is_file():
            src = work / "init" if cell.parent == "init" else seed_dir / cell.parent
            more = {"pause_from": str(seed_dir / "pause-pretrain")} if cell.pause_source else {}
            args = train.stage_args(
                cell.stage,
                plan["preset"],
                **cell.train_values(),
                **more,
                from_ckpt=str(src),
                out=str(out),
                max_steps=steps[cell.stage],
                device=device,
                resume=True,
            )
            train.run(args)
        t = checkpoint.read_meta(out)["timings"][cell.stage]  # measured: the later stages use it
        done[cell.name] = {
            "steps": t["steps"],
            "planned_steps": todo["steps"],
            "scale": t["steps"] / todo["steps"],
            "tokens": t["tokens"],
            "train_s": t["train_s"],
            "wall_s": t["wall_s"],
            "overhead_s": max(t["wall_s"] - t["train_s"], 0.0),
        }
        print(
            f"== {cell.name}: {t['steps']}/{todo['steps']} steps, {t['tokens_per_s']:,.0f} "
            f"tokens/s, {t['wall_s']:.0f}s; {clock.left('train'):.0f}s left for training",
            flush=True,
        )
        publish()


def load(args: GpuRunArgs) -> tuple[Path, dict, Path, dict]:
    """(prepared folder, its plan, the work directory, the record of earlier runs there)."""
    if not args.folder:
        raise UserError("usage: python -m pauserec gpu run PREPARED_RUN_FOLDER")
    folder, work = Path(args.folder), Path(args.work)
    if not (folder / "plan.json").is_file():
        raise UserError(
            f"{folder} is not a prepared GPU run (no plan.json): run `python -m "
            "pauserec gpu prepare`"
        )
    plan = files.read_json(folder / "plan.json")
    kept = work / "record.json"
    record = files.read_json(kept) if kept.is_file() else {}
    if record and record["plan"] != plan:
        raise UserError(f"{work} holds the run of another plan: pass a new --work (or remove it)")
    return folder, plan, work, record


def run(args: GpuRunArgs) -> dict:
    start = process_start()
    folder, plan, work, record = load(args)
    dest = Path(args.export or os.environ.get("OUT") or work / "export")
    device = resolve_device(args.device)
    budget = gpu_prepare.budget(
        plan["stages"], plan["users"], args.budget_s, plan["budget"]["assumed"]
    )
    clock = Clock(budget["deadlines"], start)
    record.update(
        plan=plan, budget=budget, versions=VERSIONS, device=name_of(device), status="running"
    )
    publish = lambda: export(work, dest, record)  # noqa: E731
    with logged_to(dest / "run.log"):
        print(
            f"== GPU run on {name_of(device)}: budget {args.budget_s:.0f}s "
            f"({clock.used():.0f}s used by the start); {VERSIONS}",
            flush=True,
        )
        try:
            publish()  # a rerun hands back what earlier runs finished at once
            print(
                f"== {gpu_prepare.format_budget(budget)}; up to {budget['users']:,} test users",
                flush=True,
            )
            init(args, folder, plan, work)
            print(f"== init: {clock.used():.0f}s used", flush=True)
            publish()
            train_all(plan, work, clock, str(device), record, publish)
            users = min(budget["users"], args.max_users or budget["users"])
            gpu_eval.evaluate_all(args, plan, folder, work, clock, users, record, publish)
        except BaseException as err:
            record["status"] = f"stopped after {clock.used():.0f}s: {type(err).__name__}: {err}"
            print(f"== {record['status']}", flush=True)
            publish()
            raise
        record.update(status="done", seconds=clock.used())
        publish()
        print(
            f"== done in {clock.used():.0f}s of {args.budget_s:.0f}s; results in {dest}", flush=True
        )
        print(gpu_eval.format_metrics(record), flush=True)
    return record


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(GpuRunArgs, argv, "pauserec gpu run"))
