"""``python -m pauserec pipeline --dataset D --backbone B --preset P --out runs/NAME``: every stage
in order.

init-ckpt -> cpt -> sft -> pause-pretrain -> pause-sft, and cot-sft, each into
``runs/NAME/<stage>/`` with the ``[train.<stage>]`` settings of the preset and one training seed
(``--seed``). A finished stage (its checkpoint exists) is skipped on a rerun and an interrupted one
resumes from its saved state, so rerunning the command continues. Each stage's wall time and
device-hours are in its ``pauserec.json``; ``runs/NAME/pipeline.json`` sums up.

``--out`` is a run directory, always resumed: it may be missing, empty, or a run this workbench
made (it holds ``run.json``, written when a run starts, with the run's kind, dataset, backbone and
preset; runs from before that are recognised by ``pipeline.json``). Anything else -- a file, a
folder of other things (a checkpoint, say), another kind of run, a run of another dataset, backbone
or preset -- is refused, and so is a second run into the same directory while one is running
(``pipeline``, ``experiment`` and ``demo`` alike). The whole run is checked before any of it starts
(:func:`check_plan`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pauserec import config, data, files, registry
from pauserec.config import arg, build, parse_args, to_dict
from pauserec.data import data_root_arg, dataset_arg
from pauserec.errors import UserError
from pauserec.model import backbone, checkpoint, init_ckpt
from pauserec.model.device import DEVICES_HELP, resolve_device
from pauserec.registry import STAGES
from pauserec.training import train

log = logging.getLogger(__name__)


@dataclass
class RunArgs:
    """What every driver takes: where, on what, with which preset."""

    out: str = arg("", "run directory")
    dataset: str = dataset_arg()
    backbone: str = arg("smollm2-135m", "smollm2-135m, tiny, or a HF id/dir")
    preset: str = arg("quick", "configs/NAME.toml")
    data_root: str | None = data_root_arg()
    device: str | None = arg(None, "override every stage's device: " + DEVICES_HELP)


@dataclass
class PipelineArgs(RunArgs):
    """Train every stage of the PauseRec matrix in order, skipping finished ones."""

    stages: tuple[str, ...] = arg(STAGES, "comma-separated subset, in order", choices=STAGES)
    max_history: int = arg(20, "history length recorded in the init checkpoint", min=1)
    seed: int = arg(0, "the training seed of every stage", min=0)
    init: str = arg("", "an init checkpoint to start from (default: OUT/init, built when missing)")


RUN_MARKER = "run.json"
# The preset sections a pipeline reads, and the arguments each is checked against before any work.
SCHEMAS = {
    "sid": init_ckpt.InitArgs,
    "init": init_ckpt.InitArgs,
    "pipeline": PipelineArgs,
    **{f"train.{s}": train.TrainArgs for s in STAGES},
}


def settings(args: RunArgs, **more: object) -> dict:
    """What a run directory is a run of (recorded in ``run.json``; a rerun with other settings is
    refused): the dataset, the backbone and the preset, each as it resolves."""
    dataset = (
        args.dataset.lower()
        if args.dataset.lower() in ("ml-100k", *data.AMAZON)
        else str(Path(args.dataset).resolve())
    )
    return {"dataset": dataset, "backbone": args.backbone, "preset": preset_id(args.preset), **more}


def preset_id(name: str) -> str:
    """A preset by name (``configs/NAME.toml``), or a preset file by what it sets (a digest of its
    values: the same settings in another file are the same preset, an edited file is another)."""
    if not Path(name).suffix:
        return name
    values = json.dumps(config.load_preset(name), sort_keys=True, default=str)
    return f"a file with settings {hashlib.sha256(values.encode()).hexdigest()[:12]}"


def is_run(path: Path) -> bool:
    """Whether ``path`` is a run directory this workbench made (see the module docstring)."""
    return (path / RUN_MARKER).is_file() or (path / "pipeline.json").is_file()


def check_run(out: str, kind: str, wanted: dict) -> Path:
    """``out`` as a run directory to create or resume; a file, someone else's folder, another kind
    of run or a run with other settings (``wanted``, see :func:`settings`) is refused."""
    path = Path(out)
    if os.path.lexists(path) and not path.is_dir():
        raise UserError(f"--out {out} is a file, not a workbench run directory; pick another --out")
    if files.is_empty(path):
        return path
    if not is_run(path):
        raise UserError(
            f"--out {out} exists and is not a workbench run (no {RUN_MARKER}); a run "
            "directory is resumed, never replaced: pick another --out"
        )
    recorded = files.read_json(path / RUN_MARKER) if (path / RUN_MARKER).is_file() else {}
    recorded = recorded if isinstance(recorded, dict) else {}
    if recorded.get("kind", kind) != kind:
        raise UserError(
            f"--out {out} is a {recorded['kind']} run, not a {kind} run: pick another --out"
        )
    changed = [k for k, v in wanted.items() if k in recorded and recorded[k] != v]
    if changed:
        was = ", ".join(f"{k} {recorded[k]}" for k in changed)
        now = ", ".join(f"{k} {wanted[k]}" for k in changed)
        raise UserError(
            f"--out {out} is a run of {was}; this one asks for {now}: a run is resumed "
            "with its own settings, never relabelled -- pick another --out"
        )
    return path


@contextlib.contextmanager
def claim_run(out: str, kind: str, wanted: dict) -> Iterator[Path]:
    """Check ``out`` (:func:`check_run`), hold its lock while the run writes it, record the run."""
    path = check_run(out, kind, wanted)
    with files.claim(path, kind=f"pauserec {kind}", resume=True):
        recorded = files.read_json(path / RUN_MARKER) if (path / RUN_MARKER).is_file() else {}
        record = {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **wanted, **recorded}
        if record != recorded:
            files.write_json(path / RUN_MARKER, record)
        yield path


def done(path: Path) -> bool:
    return (path / checkpoint.META_FILE).is_file()


def init_path(args: PipelineArgs) -> Path:
    return Path(args.init) if args.init else Path(args.out) / "init"


def stage_path(args: PipelineArgs, stage: str) -> Path:
    return init_path(args) if stage == "init" else Path(args.out) / stage


def stage_args(args: PipelineArgs, stage: str) -> init_ckpt.InitArgs | train.TrainArgs:
    """The arguments of one stage (the init checkpoint or a training stage): the preset's settings
    and the run's seed."""
    if stage == "init":
        values = {
            "dataset": args.dataset,
            "backbone": args.backbone,
            "preset": args.preset,
            "max_history": args.max_history,
            "data_root": args.data_root,
            "out": str(init_path(args)),
        }
        return build(init_ckpt.InitArgs, values, args.preset, init_ckpt.INIT_SECTIONS)
    extra = {"pause_from": str(stage_path(args, "pause-pretrain"))} if stage == "pause-sft" else {}
    extra |= {"device": args.device} if args.device else {}
    source = str(stage_path(args, registry.PARENT[stage]))
    return train.stage_args(
        stage,
        args.preset,
        from_ckpt=source,
        out=str(stage_path(args, stage)),
        resume=True,
        seed=args.seed,
        **extra,
    )


def order(args: PipelineArgs) -> list[str]:
    return ["init", *[s for s in STAGES if s in args.stages]]


def check_plan(args: PipelineArgs) -> None:
    """The whole run before any work: the preset's sections, the backbone, the device, the dataset,
    and every stage's arguments as it will run (an ``--init`` must exist: see :func:`run`)."""
    config.check_preset(args.preset, SCHEMAS)
    backbone.check_backbone(args.backbone)
    if args.device:
        resolve_device(args.device)
    data.load_dataset(args.dataset, args.data_root)
    for stage in order(args):
        stage_args(args, stage)


def run_stage(args: PipelineArgs, stage: str) -> None:
    """Build the init checkpoint or train one stage (:func:`stage_args`)."""
    values = stage_args(args, stage)
    if isinstance(values, init_ckpt.InitArgs):
        init_ckpt.create(values)
    else:
        train.run(values)


def run(args: PipelineArgs) -> dict:
    """Every stage in order (init first); finished ones are skipped. The run is checked first."""
    if not args.out:
        raise UserError(
            "usage: python -m pauserec pipeline --dataset D --backbone B --preset P --out DIR"
        )
    if args.init and not done(Path(args.init)):
        raise UserError(
            f"--init {args.init} is not a checkpoint (no {checkpoint.META_FILE}); "
            "leave --init out to build one in OUT/init"
        )
    wanted = settings(args, seed=args.seed)
    check_run(args.out, "pipeline", wanted)
    check_plan(args)
    check_inputs(args, [args.init] if args.init else [])
    with claim_run(args.out, "pipeline", wanted):
        return _run(args)


def check_inputs(args: RunArgs, more: list[str]) -> None:
    """A run directory never holds, is, or sits inside its dataset or data root, nor ``more`` inputs
    (an init checkpoint inside the run is its own)."""
    out = Path(args.out).resolve()
    inputs = [*data.source_paths(args.dataset, args.data_root), *more]
    files.check_apart(out, [p for p in inputs if not Path(p).resolve().is_relative_to(out)])


def _run(args: PipelineArgs) -> dict:
    stages, rows, start = order(args), [], time.perf_counter()
    for n, stage in enumerate(stages, 1):
        path = stage_path(args, stage)
        if done(path):
            print(f"== [{n}/{len(stages)}] {stage}: finished earlier, skipped ({path})", flush=True)
            rows.append(summary_row(stage, path, "skipped"))
            continue
        print(f"== [{n}/{len(stages)}] {stage} -> {path}", flush=True)
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
        lines.append(
            f"{r['stage']:<16} {r['status']:<8} {r['wall_s'] or 0:8.1f} {cpu}  {tps}  {where}"
        )
    lines.append(f"total this run: {summary['wall_s']:.1f}s")
    return "\n".join(lines)
