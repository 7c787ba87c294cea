"""``python -m pauserec train --stage S --from CKPT --out DIR``: one training stage, checkpoint in
and out.

Stages and their surgery are in :mod:`pauserec.stages`; the loop every stage shares is
:mod:`pauserec.loop`. Defaults come from ``[train.STAGE]`` of ``--preset`` (``paper`` unless given);
flags override single fields. Drivers call :func:`run` with :func:`stage_args` instead of argv
lists.

Writes ``DIR`` (the checkpoint, with ``train_log.csv``) only when the stage finishes; meanwhile the
live log and resumable state are in ``DIR.partial``. An existing ``DIR`` is refused unless
``--overwrite``. Launch with ``torchrun --nproc-per-node N -m pauserec train ...`` for data-parallel
training on N GPUs (or CPU processes, gloo).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch.distributed as dist

from pauserec import files, registry
from pauserec.config import arg, build, parse_args, pauses_arg, to_dict
from pauserec.data import TRAIN_TARGETS
from pauserec.errors import UserError
from pauserec.model import checkpoint, prompts
from pauserec.model.checkpoint import Checkpoint
from pauserec.model.device import describe, resolve_device
from pauserec.model.prompts import PromptBuilder, format_of
from pauserec.registry import PAPER_PAUSES, STAGES
from pauserec.teacher import rationales
from pauserec.training import stages, trainstate
from pauserec.training.corpus import LAYOUTS
from pauserec.training.loop import LoopConfig, Result, fit
from pauserec.training.validate import Validator

log = logging.getLogger(__name__)
NOT_FINGERPRINTED = (
    "resume",
    "overwrite",
    "progress",
    "device",
    "out",
    "save_every",
    "log_every",
    "preset",
    "valid_every",
    "valid_users",
)


@dataclass
class TrainArgs(LoopConfig):
    """One training stage: a checkpoint in, a checkpoint out."""

    stage: str = arg("", "{choices}", choices=STAGES)
    from_ckpt: str = arg("", "source checkpoint directory", flag="--from")
    out: str = arg("", "output checkpoint directory (must not exist)")
    preset: str = arg("paper", "configs/NAME.toml supplies [train.STAGE]")
    resume: bool = arg(False, "continue from OUT.partial after a kill")
    overwrite: bool = arg(False, "replace an existing OUT")
    n_train: int = arg(
        0,
        "seeded sample of training windows (cpt: items x directions; next-item stages: "
        "windows of targets sharing a history, one per user under --train-targets last) "
        "(0: all)",
        min=0,
    )
    train_targets: str = arg(
        "all",
        "all (every item of the training part, sliding histories), last (the paper: one "
        "example per user, the third-to-last item) or windows (every item once, in windows "
        "of max_history+1 items)",
        choices=TRAIN_TARGETS,
    )
    layout: str = arg(
        "example",
        "next-item stages: example (one sequence per target: the paper's), exact (the "
        "paper's prompt, a window's targets in one pass; same loss and gradients), stream "
        "(the history as one sequence, loss on every item; decoded in the stream format)",
        choices=LAYOUTS,
    )
    valid_every: int = arg(0, "next-item stages: valid Recall@10 every N steps (0: off)", min=0)
    valid_users: int = arg(256, "--valid-every: seeded validation users", min=1)
    max_history: int = arg(0, "history truncation (0: the checkpoint's)", min=0)
    desc_words: int = arg(prompts.DESC_WORDS, "cpt: description words per item", min=0)
    pause_ratio: float = arg(0.1, "pause-pretrain: pauses per token", gt=0.0, max=0.99)
    n_pauses: int = pauses_arg(PAPER_PAUSES, "pause-sft: pauses in the think block")
    pause_init: str = arg("pretrained", "pause-sft: {choices}", choices=registry.PAUSE_INITS)
    pause_from: str = arg("", "pause-sft: the pause-pretrain checkpoint")
    control: str = arg("", "pause-sft control: {choices}", choices=("", *registry.CONTROLS))
    rationale: str = arg("template", "cot-sft: {choices}", choices=rationales.SOURCES)
    rationale_file: str = arg("", "cot-sft: JSONL from `pauserec rationales`")
    rationale_loss: bool = arg(True, "cot-sft: loss on the rationale too")
    rationale_max_tokens: int = arg(96, "cot-sft local/openai: length cap", min=1)
    llm_base_url: str | None = arg(None, "cot-sft openai: endpoint")
    llm_model: str | None = arg(None, "cot-sft openai: model name")


def stage_args(stage: str, preset: str = "paper", **values: Any) -> TrainArgs:
    """The arguments of ``stage``: ``[train.STAGE]`` of ``preset``, then ``values`` (field
    names)."""
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    return check(
        build(TrainArgs, {**values, "stage": stage, "preset": preset}, preset, f"train.{stage}")
    )


def check(args: TrainArgs) -> TrainArgs:
    """Relations between fields that no single field's range can say."""
    if not args.from_ckpt or not args.out:
        raise UserError(
            "usage: python -m pauserec train --stage S --from CKPT --out DIR [--preset P]"
        )
    if args.control and args.stage != "pause-sft":
        raise UserError(f"--control {args.control} is a pause-sft control; --stage is {args.stage}")
    if args.stage == "pause-sft" and not args.control and args.n_pauses < 1:
        raise UserError("--n-pauses 0 is the think-only control: pass --control think-only")
    if args.resume and args.overwrite:
        raise UserError(
            "--resume continues OUT.partial and --overwrite starts over: pass one of them"
        )
    if args.stage in registry.GROUNDING and (args.layout != "example" or args.valid_every):
        raise UserError(
            f"--layout and --valid-every apply to next-item stages; {args.stage} trains on the "
            "item corpus"
        )
    if args.layout == "stream" and args.stage == "cot-sft":
        raise UserError(
            "--layout stream has no rationale before each history item: train cot-sft with "
            "--layout exact (every target in one pass, the paper's prompt) or example"
        )
    if args.layout == "exact" and args.pack:
        raise UserError(
            "--layout exact shares each window's history through its attention mask: it is "
            "never packed (drop --pack)"
        )
    return args


def check_sources(args: TrainArgs) -> None:
    """The checkpoints a stage reads, before anything is claimed or loaded: ``--from`` and, for
    ``pause-sft`` with the pretrained init, ``--pause-from`` -- a trained pause-pretrain
    checkpoint."""
    checkpoint.read_meta(args.from_ckpt)
    if args.stage != "pause-sft" or args.control or args.pause_init != "pretrained":
        return
    if not args.pause_from:
        raise UserError("--pause-init pretrained needs --pause-from PAUSE_PRETRAIN_CKPT")
    stage = checkpoint.read_meta(args.pause_from).get("stage", "init")
    if stage != "pause-pretrain":
        raise UserError(
            f"--pause-from {args.pause_from} is a '{stage}' checkpoint; it must be a "
            "trained pause-pretrain checkpoint"
        )


def inputs(args: TrainArgs) -> list[str | Path]:
    """What a stage reads (an output may overlap none of it): the checkpoints and their datasets, a
    rationale file."""
    paths: list[str | Path] = [*checkpoint.source_paths(args.from_ckpt)]
    paths += [args.pause_from] if args.pause_from else []
    return paths + ([args.rationale_file] if args.rationale_file else [])


def parse(argv: list[str] | None) -> TrainArgs:
    """Flags over ``[train.STAGE]`` of the preset (``paper`` unless ``--preset`` is given)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    stage = None
    if "-h" not in argv and "--help" not in argv:
        stage = next((a.split("=", 1)[1] for a in argv if a.startswith("--stage=")), None)
        if stage is None and "--stage" in argv[:-1]:
            stage = argv[argv.index("--stage") + 1]
        if stage not in STAGES:
            raise UserError(
                f"pauserec train needs --stage, one of {', '.join(STAGES)} (got {stage!r})"
            )
    return check(parse_args(TrainArgs, argv, "pauserec train", section=f"train.{stage}"))


def cell_name(args: TrainArgs, rats: list) -> str:
    """The experiment cell a stage's checkpoint is (:func:`pauserec.registry.cell_name`)."""
    source = rats[0].source if rats and rats[0].source else args.rationale
    return registry.cell_name(args.stage, args.n_pauses, args.pause_init, args.control, source)


def stage_meta(
    parent: dict,
    args: TrainArgs,
    info: dict,
    rats: list,
    timing: dict,
    pause_src: Checkpoint | None,
    tok,
) -> dict:
    """The new checkpoint's metadata: the parent's backbone, dataset and SIDs, plus this stage; its
    ``timings`` cover the whole lineage (parent's stages, the pause-pretrain source's, this one)."""
    meta = {key: parent[key] for key in ("backbone", "dataset", "sid") if key in parent}
    if args.max_history and args.stage not in registry.GROUNDING:
        meta["dataset"] = {**meta.get("dataset", {}), "max_history": args.max_history}
    rationale = None
    if rats:
        rationale = {
            "source": rats[0].source or args.rationale,
            "leaky": any(r.leaky for r in rats),
            "file": args.rationale_file or None,
            "n": len(rats),
        }
    pause_init = {
        "pause-pretrain": "mean-all",
        "pause-sft": args.pause_init if not args.control else None,
    }
    n_pauses = (
        0
        if args.stage != "pause-sft" or args.control in registry.CONTROL_NO_PAUSES
        else args.n_pauses
    )
    lineage = {
        **parent.get("timings", {}),
        **(pause_src.meta.get("timings", {}) if pause_src else {}),
    }
    meta.update(
        variant=registry.variant_of(args.stage, args.control),
        stage=args.stage,
        cell=cell_name(args, rats),
        n_pauses=n_pauses,
        pause_init=pause_init.get(args.stage),
        pause_token=stages.filler_token(tok) if args.control == "filler" else None,
        control=args.control or None,
        rationale=rationale,
        train_seed=args.seed,
        train_targets=None if args.stage in registry.GROUNDING else args.train_targets,
        layout=None if args.stage in registry.GROUNDING else args.layout,
        metrics={},
        parent=str(args.from_ckpt),
        configs={**parent.get("configs", {}), args.stage: {**to_dict(args), "corpus": info}},
        timings={**lineage, args.stage: timing},
    )
    return meta


def timing(result: Result, wall_s: float, cpu_s: float, device) -> dict:
    """What a stage cost: wall time (the stage's clock: all segments of a resumed run),
    device-hours, tokens and targets (per second of that clock), where."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    return {
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "device_hours": wall_s * world / 3600,
        "tokens": result.tokens,
        "labelled_tokens": result.labelled,
        "targets": result.targets,
        "tokens_per_s": result.tokens / max(result.seconds, 1e-9),
        "targets_per_s": result.targets / max(result.seconds, 1e-9),
        "train_s": result.seconds,
        "steps": result.steps,
        "world_size": world,
        **describe(device, result.dtype),
    }


def save_stage(
    ckpt: Checkpoint, out: str | Path, result: Result, examples: list, rats: list
) -> None:
    """The final checkpoint, its training log and (cot-sft) rationales, in one atomic directory."""
    with files.atomic_dir(out) as tmp:
        checkpoint.save(ckpt, tmp)
        files.write_csv(
            tmp / trainstate.LOG_FILE, pd.DataFrame(result.log, columns=trainstate.LOG_FIELDS)
        )
        if result.valid:
            files.write_csv(
                tmp / trainstate.VALID_FILE,
                pd.DataFrame(result.valid, columns=trainstate.VALID_FIELDS),
            )
        if rats:
            rationales.write(tmp / "rationales.jsonl", examples, rats)
    ckpt.path = Path(out)
    shutil.rmtree(trainstate.partial_dir(out), ignore_errors=True)


def run(args: TrainArgs, on_step: Callable[[int], None] | None = None) -> Checkpoint:
    """Train one stage (see the module docstring). ``on_step(step)`` runs after each optimizer
    step."""
    clock, cpu_start = trainstate.Clock(), time.process_time()
    check_sources(args)  # a bad input fails before anything is claimed or loaded
    if args.resume and (Path(args.out) / checkpoint.META_FILE).is_file():
        raise UserError(
            f"{args.out} is a finished checkpoint: nothing to resume (--overwrite retrains it)"
        )
    partial = trainstate.partial_dir(args.out)  # never a user's own folder, nor an input
    trainstate.check_owner(partial)
    files.check_apart(partial, inputs(args), flag="--out (its .partial)")
    if args.resume:
        trainstate.check(partial)  # a cut-short state fails before any loading
    # under torchrun, rank 0 owns (and locks) the output
    rank0 = int(os.environ.get("RANK", "0")) == 0
    claim = (
        nullcontext()
        if not rank0
        else files.claim(
            args.out, kind=trainstate.KIND, overwrite=args.overwrite, inputs=inputs(args)
        )
    )
    with claim:
        ckpt = checkpoint.load(args.from_ckpt)
        masks, pause_src = stages.prepare(ckpt, args)
        data_, examples, rats = stages.build_corpus(ckpt, args)
        log.info("%s: %d sequences, %d tokens", args.stage, len(data_), int(data_.lengths().sum()))
        tok = ckpt.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        fingerprint = {k: v for k, v in to_dict(args).items() if k not in NOT_FINGERPRINTED}
        try:
            result = _fit(ckpt, data_, args, pad, masks, fingerprint, on_step, clock)
            if dist.is_initialized() and dist.get_rank() != 0:
                dist.barrier()  # rank 0 writes the checkpoint
                return ckpt
            ckpt.model.eval()
            times = timing(
                result, clock(), time.process_time() - cpu_start, resolve_device(args.device)
            )
            ckpt.meta = stage_meta(ckpt.meta, args, data_.info, rats, times, pause_src, tok)
            save_stage(ckpt, args.out, result, examples, rats)
            if dist.is_initialized():
                dist.barrier()
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    t = ckpt.meta["timings"][args.stage]
    print(
        f"wrote checkpoint {args.out} ({args.stage}: {t['steps']} steps, {t['tokens']:,} tokens, "
        f"{t['tokens_per_s']:.0f} tokens/s, loss {result.loss:.4f}, {t['wall_s']:.0f}s)"
    )
    return ckpt


def _fit(ckpt, data_, args, pad, masks, fingerprint, on_step, clock) -> Result:
    """The loop; a run that fails before saving any resumable state leaves no ``OUT.partial``
    behind."""
    partial = trainstate.partial_dir(args.out)
    validate = validator(ckpt, args) if args.valid_every else None
    try:
        return fit(
            ckpt.model,
            data_,
            args,
            out=args.out,
            pad_id=pad,
            row_masks=masks,
            resume=args.resume,
            fingerprint=fingerprint,
            clock=clock,
            validate=validate,
            valid_every=args.valid_every,
            on_step=on_step,
        )
    except BaseException:
        if not (partial / trainstate.STATE_FILE).is_file():
            shutil.rmtree(partial, ignore_errors=True)
        raise


def validator(ckpt: Checkpoint, args: TrainArgs) -> Validator:
    """The stage's validation measurement, decoding with the prompt the stage trains."""
    filler = stages.filler_token(ckpt.tokenizer) if args.control == "filler" else None
    builder = PromptBuilder(ckpt.tokenizer, ckpt.catalog, filler, format_of(args.layout))
    n_pauses = 0 if args.control in registry.CONTROL_NO_PAUSES else args.n_pauses
    return Validator(
        ckpt,
        builder,
        registry.variant_of(args.stage, args.control),
        n_pauses,
        args.valid_users,
        seed=0,
    )


def main(argv: list[str] | None = None) -> Checkpoint:
    return run(parse(argv))
