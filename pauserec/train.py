"""``python -m pauserec train --stage S --from CKPT --out DIR``: one training stage, checkpoint in and out.

Stages (defaults: ``[train.STAGE]`` of ``--preset``, ``paper`` unless given; flags override single fields):

* ``cpt`` -- SID grounding on the item corpus in both directions; loss on the answer part.
* ``sft`` -- next-item SFT with the ``plain`` prompt; loss on the target SID only.
* ``pause-pretrain`` -- from the CPT checkpoint: re-initialise ``<pause>`` at the mean of all text + SID
  rows (noise variance 1e-9 x word-embedding variance), insert pauses into ~``pause_ratio`` of the CPT
  corpus and train ONLY the pause row (every other weight, other rows included, stays bit-identical).
* ``pause-sft`` -- from the SFT checkpoint: set the pause row (``--pause-init pretrained`` copies it from
  ``--pause-from``, or mean-text / mean-sid / default), then fine-tune with ``<think>`` + k pauses +
  ``</think>`` before the target; loss on the SID only.
* ``cot-sft`` -- from the SFT checkpoint: ``<think>`` rationale ``</think>`` then the target; loss on
  rationale and SID. ``--rationale`` names a source of :mod:`pauserec.rationales`.

Writes ``DIR`` (the checkpoint, with ``train_log.csv``) only when the stage finishes; meanwhile the live
log and resumable state are in ``DIR.partial``. Launch with ``torchrun --nproc-per-node N -m pauserec
train ...`` for data-parallel training on N GPUs (or CPU processes, gloo).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from pauserec import backbone, checkpoint, corpus, data, files, rationales, tokens, trainstate
from pauserec.checkpoint import Checkpoint
from pauserec.config import parse_args, to_dict
from pauserec.errors import UserError
from pauserec.loop import LoopConfig, Result, fit, native_bf16, resolve_device
from pauserec.prompts import PromptBuilder

log = logging.getLogger(__name__)
VARIANT = {"cpt": "base", "sft": "plain", "pause-pretrain": "base", "pause-sft": "pause", "cot-sft": "cot"}
PARENT = {"pause-pretrain": "cpt", "pause-sft": "sft", "cot-sft": "sft"}  # the expected source stage
PAUSE_INITS = ("pretrained", "mean-text", "mean-sid", "default")
NOT_FINGERPRINTED = ("resume", "progress", "device", "out", "save_every", "log_every", "preset")


@dataclass
class TrainArgs(LoopConfig):
    """One training stage: a checkpoint in, a checkpoint out."""

    stage: str = field(default="", metadata={"help": ", ".join(VARIANT)})
    from_ckpt: str = field(default="", metadata={"flag": "--from", "help": "source checkpoint directory"})
    out: str = field(default="", metadata={"help": "output checkpoint directory"})
    preset: str = field(default="paper", metadata={"help": "configs/NAME.toml supplies [train.STAGE]"})
    resume: bool = field(default=False, metadata={"help": "continue from OUT.partial after a kill"})
    n_train: int = field(default=0, metadata={"help": "seeded sample of training sequences (0: all)"})
    max_history: int = field(default=0, metadata={"help": "history truncation (0: the checkpoint's)"})
    desc_words: int = field(default=32, metadata={"help": "cpt: description words per item"})
    pause_ratio: float = field(default=0.1, metadata={"help": "pause-pretrain: pauses per token"})
    k: int = field(default=5, metadata={"help": "pause-sft: pauses in the think block"})
    pause_init: str = field(default="pretrained", metadata={"help": "pause-sft: " + ", ".join(PAUSE_INITS)})
    pause_from: str = field(default="", metadata={"help": "pause-sft: the pause-pretrain checkpoint"})
    rationale: str = field(default="template", metadata={"help": "cot-sft: " + ", ".join(rationales.SOURCES)})
    rationale_file: str = field(default="", metadata={"help": "cot-sft: JSONL from `pauserec rationales`"})
    rationale_loss: bool = field(default=True, metadata={"help": "cot-sft: loss on the rationale too"})
    rationale_max_tokens: int = field(default=96, metadata={"help": "cot-sft local/openai: length cap"})
    llm_base_url: str | None = field(default=None, metadata={"help": "cot-sft openai: endpoint"})
    llm_model: str | None = field(default=None, metadata={"help": "cot-sft openai: model name"})


def parse(argv: list[str] | None) -> TrainArgs:
    """Flags over ``[train.STAGE]`` of the preset (``paper`` unless ``--preset`` is given)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    stage = None
    if "-h" not in argv and "--help" not in argv:
        stage = next((a.split("=", 1)[1] for a in argv if a.startswith("--stage=")), None)
        if stage is None and "--stage" in argv[:-1]:
            stage = argv[argv.index("--stage") + 1]
        if stage not in VARIANT:
            raise UserError(f"pauserec train needs --stage, one of {', '.join(VARIANT)} (got {stage!r})")
        if not any(a == "--preset" or a.startswith("--preset=") for a in argv):
            argv += ["--preset", "paper"]
    args = parse_args(TrainArgs, argv, "pauserec train", section=f"train.{stage}")
    if not args.from_ckpt or not args.out:
        raise UserError("usage: python -m pauserec train --stage S --from CKPT --out DIR [--preset P]")
    if Path(args.from_ckpt).resolve() == Path(args.out).resolve():
        raise UserError("--out must differ from --from (a checkpoint is never overwritten in place)")
    if args.pause_init not in PAUSE_INITS:
        raise UserError(f"unknown --pause-init '{args.pause_init}' (known: {', '.join(PAUSE_INITS)})")
    if args.k < 1 or args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise UserError("--k, --epochs and --batch-size must be at least 1 and --lr positive")
    return args


def pause_params(model) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of the input embedding, and of the output one when it is not tied."""
    mats = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not mats[0]:
        mats.append(out.weight)
    names = {id(p): n for n, p in model.named_parameters()}
    return [(names[id(m)], m) for m in mats]


def freeze_all_but(model, rows: list[int]) -> dict[str, torch.Tensor]:
    """Freeze every parameter except the embedding matrices, whose other rows get a zero-gradient mask."""
    for p in model.parameters():
        p.requires_grad_(False)
    masks = {}
    for name, weight in pause_params(model):
        weight.requires_grad_(True)
        mask = torch.zeros(weight.shape[0], dtype=torch.bool)
        mask[rows] = True
        masks[name] = mask
    return masks


@torch.no_grad()
def init_pause(ckpt: Checkpoint, how: str, pause_from: str = "", seed: int = 0) -> None:
    """Set the pause row(s): copied from a pause-pretrain checkpoint, or by a backbone init strategy."""
    pid = ckpt.tokenizer.convert_tokens_to_ids(tokens.PAUSE)
    if how != "pretrained":
        backbone.init_rows(ckpt.model, ckpt.tokenizer, [pid], how, seed)
        return
    if not pause_from:
        raise UserError("--pause-init pretrained needs --pause-from PAUSE_PRETRAIN_CKPT")
    src = checkpoint.load(pause_from)
    if src.stage != "pause-pretrain":
        log.warning("--pause-from %s is stage '%s', not pause-pretrain", pause_from, src.stage)
    dst_params, src_params = pause_params(ckpt.model), pause_params(src.model)
    same = (src.tokenizer.convert_tokens_to_ids(tokens.PAUSE) == pid and len(dst_params) == len(src_params)
            and all(a.shape == b.shape for (_, a), (_, b) in zip(dst_params, src_params)))
    if not same:
        raise UserError(f"--pause-from {pause_from}: its vocabulary or embedding size differs from --from")
    for (_, dst), (_, srcw) in zip(dst_params, src_params):
        dst[pid] = srcw[pid].to(dst.device, dst.dtype)


def prepare(ckpt: Checkpoint, args: TrainArgs) -> dict[str, torch.Tensor]:
    """Stage-specific model surgery; returns the row masks of row-only training (pause-pretrain)."""
    expected = PARENT.get(args.stage)
    if expected and ckpt.stage != expected:
        log.warning("stage %s expects a %s checkpoint; --from is stage '%s'", args.stage, expected, ckpt.stage)
    pid = ckpt.tokenizer.convert_tokens_to_ids(tokens.PAUSE)
    if args.stage == "pause-pretrain":
        backbone.init_rows(ckpt.model, ckpt.tokenizer, [pid], "mean-all", args.seed)
        return freeze_all_but(ckpt.model, [pid])
    if args.stage == "pause-sft":
        init_pause(ckpt, args.pause_init, args.pause_from, args.seed)
    return {}


def build_corpus(ckpt: Checkpoint, args: TrainArgs) -> tuple[corpus.Corpus, list, list]:
    """The stage's training sequences, plus (examples, rationales) for cot-sft."""
    spec = ckpt.meta.get("dataset") or {}
    if not spec.get("name"):
        raise UserError(f"checkpoint {ckpt.path} names no dataset in its metadata")
    ds = data.load_dataset(spec["name"], spec.get("data_root"))
    if [it.item_id for it in ds.items] != [it.item_id for it in ckpt.catalog.items]:
        raise UserError(f"checkpoint {ckpt.path}: its catalog does not match dataset '{spec['name']}'")
    tok = ckpt.tokenizer
    if args.stage in ("cpt", "pause-pretrain"):
        c = corpus.subset(corpus.grounding(tok, ckpt.catalog, ds.items, args.desc_words), args.n_train,
                          args.seed)
        if args.stage == "pause-pretrain":
            c = corpus.with_pauses(c, tok.convert_tokens_to_ids(tokens.PAUSE), args.pause_ratio, args.seed)
        return c, [], []
    windows = data.split(ds, args.max_history or spec.get("max_history", 20))["train"]
    keep = corpus.sample(len(windows), args.n_train, args.seed)
    examples = [windows[i] for i in keep]
    builder = PromptBuilder(tok, ckpt.catalog)
    rats = _rationales(ckpt, args, examples) if args.stage == "cot-sft" else []
    variant = VARIANT[args.stage]
    c = corpus.recommendation(builder, examples, variant, args.k,
                              [r.text for r in rats] if rats else None, args.rationale_loss)
    c.info.update(available=len(windows), used=len(examples))
    return c, examples, rats


def _rationales(ckpt: Checkpoint, args: TrainArgs, examples: list) -> list[rationales.Rationale]:
    if args.rationale_file:
        known = rationales.read(args.rationale_file)
        missing = sum(ex not in known for ex in examples)
        if missing:
            raise UserError(f"{missing} of {len(examples)} training examples have no rationale in "
                            f"{args.rationale_file} (write them with `python -m pauserec rationales`)")
        return [known[ex] for ex in examples]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.rationale.split("-")[0] in ("local", "openai"):
        raise UserError("under torchrun, write model rationales first (`python -m pauserec rationales`) "
                        "and pass --rationale-file")
    cache = str(Path(args.out).with_name(Path(args.out).name + ".rationales.jsonl"))
    options: dict = {}
    if args.rationale.startswith("local"):
        options = {"ckpt": ckpt, "cache_path": cache, "max_new_tokens": args.rationale_max_tokens}
    elif args.rationale.startswith("openai"):
        options = {"cache_path": cache, "base_url": args.llm_base_url, "model": args.llm_model,
                   "max_tokens": args.rationale_max_tokens}
    return rationales.build(args.rationale, ckpt.catalog, examples, **options)


def stage_meta(parent: dict, args: TrainArgs, info: dict, rats: list, timing: dict) -> dict:
    """The new checkpoint's metadata: the parent's backbone, dataset and SIDs, plus this stage."""
    meta = {key: parent[key] for key in ("backbone", "dataset", "sid") if key in parent}
    if args.max_history and args.stage not in ("cpt", "pause-pretrain"):
        meta["dataset"] = {**meta.get("dataset", {}), "max_history": args.max_history}
    rationale = None
    if rats:
        rationale = {"source": rats[0].source or args.rationale, "leaky": any(r.leaky for r in rats),
                     "file": args.rationale_file or None, "n": len(rats)}
    pause_init = {"pause-pretrain": "mean-all", "pause-sft": args.pause_init}.get(args.stage)
    meta.update(variant=VARIANT[args.stage], stage=args.stage, k=args.k if args.stage == "pause-sft" else 0,
                pause_init=pause_init, rationale=rationale, metrics={}, parent=str(args.from_ckpt),
                configs={**parent.get("configs", {}), args.stage: {**to_dict(args), "corpus": info}},
                timings={**parent.get("timings", {}), args.stage: timing})
    return meta


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu, {torch.get_num_threads()} thread(s)"


def timing(result: Result, wall_s: float, cpu_s: float, device: torch.device, amp: str) -> dict:
    world = dist.get_world_size() if dist.is_initialized() else 1
    precision = "bf16 autocast" if amp == "bf16" or (amp == "auto" and native_bf16(device)) else "fp32"
    return {"wall_s": wall_s, "cpu_s": cpu_s, "device_hours": wall_s * world / 3600, "tokens": result.tokens,
            "labelled_tokens": result.labelled, "tokens_per_s": result.tokens / max(result.train_s, 1e-9),
            "train_s": result.train_s, "steps": result.steps, "device": device_name(device),
            "world_size": world, "precision": precision}


def save_stage(ckpt: Checkpoint, out: str | Path, result: Result, examples: list, rats: list) -> None:
    """The final checkpoint, its training log and (cot-sft) rationales, in one atomic directory."""
    with files.atomic_dir(out) as tmp:
        checkpoint.save(ckpt, tmp)
        files.write_csv(tmp / trainstate.LOG_FILE, pd.DataFrame(result.log, columns=trainstate.LOG_FIELDS))
        if rats:
            rationales.write(tmp / "rationales.jsonl", examples, rats)
    ckpt.path = Path(out)
    shutil.rmtree(trainstate.partial_dir(out), ignore_errors=True)


def main(argv: list[str] | None = None) -> Checkpoint:
    args = parse(argv)
    start, cpu_start = time.perf_counter(), time.process_time()
    ckpt = checkpoint.load(args.from_ckpt)
    masks = prepare(ckpt, args)
    data_, examples, rats = build_corpus(ckpt, args)
    log.info("%s: %d sequences, %d tokens", args.stage, len(data_), int(data_.lengths().sum()))
    tok = ckpt.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    fingerprint = {k: v for k, v in to_dict(args).items() if k not in NOT_FINGERPRINTED}
    try:
        result = fit(ckpt.model, data_, args, args.out, pad, masks, args.resume, fingerprint)
        if dist.is_initialized() and dist.get_rank() != 0:
            dist.barrier()  # rank 0 writes the checkpoint
            return ckpt
        ckpt.model.eval()
        times = timing(result, time.perf_counter() - start, time.process_time() - cpu_start,
                       resolve_device(args.device), args.amp)
        ckpt.meta = meta = stage_meta(ckpt.meta, args, data_.info, rats, times)
        save_stage(ckpt, args.out, result, examples, rats)
        if dist.is_initialized():
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    t = meta["timings"][args.stage]
    print(f"wrote checkpoint {args.out} ({args.stage}: {t['steps']} steps, {t['tokens']:,} tokens, "
          f"{t['tokens_per_s']:.0f} tokens/s, loss {result.loss:.4f}, {t['wall_s']:.0f}s)")
    return ckpt
