"""``python -m pauserec pipeline --dataset D --backbone B --preset P --out runs/NAME``: every stage in order.

init-ckpt -> cpt -> sft -> pause-pretrain -> pause-sft, and cot-sft, each into ``runs/NAME/<stage>/`` with
the ``[train.<stage>]`` settings of the preset and one training seed (``--seed``). A finished stage (its
checkpoint exists) is skipped on a rerun and an interrupted one resumes from its saved state, so rerunning
the command continues. Each stage's wall time and device-hours are in its ``pauserec.json``;
``runs/NAME/pipeline.json`` sums up.

``--out`` is a run directory, always resumed: it may be missing, empty, or a run this workbench made (it
holds ``run.json``, written when a run starts; runs from before that are recognised by ``pipeline.json``
or a checkpoint one level down). Anything else -- a file, a folder of other things -- is refused, and so is
a second run into the same directory while one is running (``pipeline``, ``experiment`` and ``demo`` alike).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pauserec import files, registry
from pauserec.config import build, parse_args, to_dict
from pauserec.errors import UserError
from pauserec.model import checkpoint, init_ckpt
from pauserec.model.device import DEVICES_HELP
from pauserec.registry import STAGES
from pauserec.training import train

log = logging.getLogger(__name__)


@dataclass
class RunArgs:
    """What every driver takes: where, on what, with which preset."""

    out: str = field(default="", metadata={"help": "run directory"})
    dataset: str = field(default="ml-100k", metadata={"help": "ml-100k, office, beauty, toys, or a directory"})
    backbone: str = field(default="smollm2-135m", metadata={"help": "smollm2-135m, tiny, or a HF id/dir"})
    preset: str = field(default="quick", metadata={"help": "configs/NAME.toml"})
    data_root: str | None = field(default=None, metadata={"help": "folder holding Office/ Beauty/ Toys/"})
    device: str | None = field(default=None, metadata={"help": "override every stage's device: " + DEVICES_HELP})


@dataclass
class PipelineArgs(RunArgs):
    """Train every stage of the PauseRec matrix in order, skipping finished ones."""

    stages: tuple[str, ...] = field(default=STAGES, metadata={"help": "comma-separated subset, in order",
                                                              "choices": STAGES})
    max_history: int = field(default=20, metadata={"help": "history length recorded in the init checkpoint",
                                                   "min": 1})
    seed: int = field(default=0, metadata={"help": "the training seed of every stage", "min": 0})
    init: str = field(default="", metadata={"help": "an existing init checkpoint to start from (default: "
                                                    "OUT/init, built when missing)"})


RUN_MARKER = "run.json"


def is_run(path: Path) -> bool:
    """Whether ``path`` is a run directory this workbench made (see the module docstring)."""
    return ((path / RUN_MARKER).is_file() or (path / "pipeline.json").is_file()
            or any(done(p) for p in path.iterdir() if p.is_dir()))


def check_run(out: str) -> Path:
    """``out`` as a run directory to create or resume; a file or someone else's folder is refused."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out} is a file, not a workbench run directory; pick another --out")
    if not files.is_empty(path) and not is_run(path):
        raise UserError(f"--out {out} exists and is not a workbench run (no {RUN_MARKER}); a run directory is "
                        "resumed, never replaced: pick another --out")
    return path


@contextlib.contextmanager
def claim_run(out: str, kind: str) -> Iterator[Path]:
    """Check ``out`` (:func:`check_run`), hold its lock while the run writes it, and mark it as a run."""
    path = check_run(out)
    with files.claim(path, resume=True):
        if not (path / RUN_MARKER).is_file():
            files.write_json(path / RUN_MARKER, {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        yield path


def done(path: Path) -> bool:
    return (path / checkpoint.META_FILE).is_file()


def init_path(args: PipelineArgs) -> Path:
    return Path(args.init) if args.init else Path(args.out) / "init"


def stage_path(args: PipelineArgs, stage: str) -> Path:
    return init_path(args) if stage == "init" else Path(args.out) / stage


def run_stage(args: PipelineArgs, stage: str) -> None:
    """Build the init checkpoint or train one stage, with the preset's settings and the run's seed."""
    if stage == "init":
        values = {"dataset": args.dataset, "backbone": args.backbone, "preset": args.preset,
                  "max_history": args.max_history, "data_root": args.data_root, "out": str(init_path(args))}
        init_ckpt.create(build(init_ckpt.InitArgs, values, args.preset, init_ckpt.INIT_SECTIONS))
        return
    extra = {"pause_from": str(stage_path(args, "pause-pretrain"))} if stage == "pause-sft" else {}
    extra |= {"device": args.device} if args.device else {}
    train.run(train.stage_args(stage, args.preset, from_ckpt=str(stage_path(args, registry.PARENT[stage])),
                               out=str(stage_path(args, stage)), resume=True, seed=args.seed, **extra))


def run(args: PipelineArgs) -> dict:
    """Every stage in order (init first); finished ones are skipped."""
    if not args.out:
        raise UserError("usage: python -m pauserec pipeline --dataset D --backbone B --preset P --out DIR")
    with claim_run(args.out, "pipeline"):
        return _run(args)


def _run(args: PipelineArgs) -> dict:
    order = ["init", *[s for s in STAGES if s in args.stages]]
    rows, start = [], time.perf_counter()
    for n, stage in enumerate(order, 1):
        path = stage_path(args, stage)
        if done(path):
            print(f"== [{n}/{len(order)}] {stage}: finished earlier, skipped ({path})", flush=True)
            rows.append(summary_row(stage, path, "skipped"))
            continue
        print(f"== [{n}/{len(order)}] {stage} -> {path}", flush=True)
        t = time.perf_counter()
        run_stage(args, stage)
        rows.append({**summary_row(stage, path, "ran"), "wall_s": time.perf_counter() - t})
    summary = {"args": to_dict(args), "stages": rows, "wall_s": time.perf_counter() - start}
    files.write_json(Path(args.out) / "pipeline.json", summary)
    print(format_summary(summary))
    return summary


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(PipelineArgs, argv, "pauserec pipeline", section="pipeline"))


def summary_row(stage: str, path: Path, status: str) -> dict:
    t = checkpoint.read_meta(path).get("timings", {}).get(stage, {})
    keys = ("wall_s", "cpu_s", "tokens", "tokens_per_s", "device_hours", "device", "dtype")
    return {"stage": stage, "status": status, **{k: t.get(k) for k in keys}}


def format_summary(summary: dict) -> str:
    lines = ["stage            status     wall s    CPU s   tokens/s  device"]
    for r in summary["stages"]:
        tps = f"{r['tokens_per_s']:9.0f}" if r.get("tokens_per_s") else " " * 9
        cpu = f"{r['cpu_s']:8.1f}" if r.get("cpu_s") else " " * 8
        where = " ".join(str(r[k]) for k in ("device", "dtype") if r.get(k))
        lines.append(f"{r['stage']:<16} {r['status']:<8} {r['wall_s'] or 0:8.1f} {cpu}  {tps}  {where}")
    lines.append(f"total this run: {summary['wall_s']:.1f}s")
    return "\n".join(lines)
