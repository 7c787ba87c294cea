"""``python -m pauserec baseline --model NAME --dataset D --out DIR``: a classical baseline,
evaluated like a checkpoint.

Fits on the training targets of the leave-one-out split, cut with the history length and training
targets of the LLM it is compared with (``--max-history``, ``--train-targets``; the experiment
passes its checkpoints' values), ranks the same (seeded sample of) test users, and writes
``metrics.json`` + ``per_user.csv`` in the evaluation format, every row carrying the baseline's
identity (``cell`` = its name, ``stage`` = ``baseline``, ``train_targets``), so the report puts it
in the same tables, paired statistics and figures as the trained models. SASRec stops early on the
validation split (never when that is the split evaluated: then it trains for its epoch cap).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from pauserec import data, files
from pauserec.config import arg, parse_args
from pauserec.data import TRAIN_TARGETS, data_root_arg, dataset_arg
from pauserec.errors import UserError
from pauserec.evaluation import baselines, evaluate
from pauserec.model.checkpoint import IDENTITY
from pauserec.model.device import DEVICES_HELP, describe, resolve_device


@dataclass
class BaselineArgs:
    """Fit a classical baseline on the training split and evaluate it on the LLM's test users."""

    model: str = arg("markov", "{choices}", choices=baselines.NAMES)
    dataset: str = dataset_arg()
    data_root: str | None = data_root_arg()
    out: str = arg("", "write metrics.json and per_user.csv here (must not exist)")
    overwrite: bool = arg(False, "replace an existing --out")
    split: str = arg("test", "test or valid", choices=("test", "valid"))
    n_users: int | None = arg(None, "seeded sample of users (default: all)", min=1)
    eval_seed: int = arg(0, "seed of the user sample (as in evaluate)", min=0)
    seed: int = arg(0, "training seed (sasrec)", min=0)
    max_history: int = arg(20, "history items read (the LLM's max_history)", min=1)
    train_targets: str = arg("all", "the LLM's: all (every prefix) or last", choices=TRAIN_TARGETS)
    exclude_history: bool = arg(False, "never recommend an item already seen")
    sasrec_epochs: int = arg(200, "sasrec: cap on epochs", min=1)
    sasrec_patience: int = arg(5, "sasrec: epochs without a better valid NDCG@10 to stop", min=1)
    sasrec_seconds: float | None = arg(None, "sasrec: hard cap on seconds (irreproducible)", gt=0.0)
    device: str = arg("auto", "sasrec: " + DEVICES_HELP)


def identity(args: BaselineArgs, options: dict[str, Any]) -> dict[str, Any]:
    """The identity columns of a baseline (what a checkpoint's ``identity`` is for a trained
    model)."""
    key = json.dumps(
        {
            "model": args.model,
            "dataset": args.dataset,
            "options": options,
            "max_history": args.max_history,
            "train_targets": args.train_targets,
            "seed": args.seed if args.model == "sasrec" else None,
        },
        sort_keys=True,
        default=str,
    )
    ident = {k: "" for k in IDENTITY}
    ident.update(
        ckpt=args.model,
        ckpt_hash=hashlib.sha256(key.encode()).hexdigest()[:16],
        dataset=args.dataset,
        variant="baseline",
        stage="baseline",
        cell=args.model,
        n_pauses=0,
        rationale_leaky=False,
        train_targets=args.train_targets,
        train_seed=args.seed if args.model == "sasrec" else None,
    )
    return ident


def run(args: BaselineArgs) -> dict[str, Any]:
    """Fit, evaluate and write (see the module docstring)."""
    if not args.out:
        raise UserError("usage: python -m pauserec baseline --model NAME --dataset D --out DIR")
    options: dict[str, Any] = {"exclude_history": args.exclude_history}
    if args.model == "sasrec":
        device = resolve_device(args.device)
        options.update(
            max_len=args.max_history,
            max_seconds=args.sasrec_seconds,
            epochs=args.sasrec_epochs,
            patience=args.sasrec_patience,
            device=str(device),
        )
    inputs = [args.dataset, *data.source_paths(args.dataset, args.data_root)]  # names resolved
    with files.claim(args.out, kind="pauserec baseline", overwrite=args.overwrite, inputs=inputs):
        ds = data.load_dataset(args.dataset, args.data_root)
        split = data.split(ds, args.max_history, args.train_targets)
        users = split[args.split]
        examples = [users[i] for i in data.sample(len(users), args.n_users, args.eval_seed)]
        start = time.perf_counter()
        stop_on = split["valid"] if args.split != "valid" else None  # never tune on what is scored
        model = baselines.make(args.model, **options).fit(
            ds, split["train"], seed=args.seed, valid=stop_on
        )
        fit_s = time.perf_counter() - start
        summary, frame = baselines.evaluate_baseline(model, examples, evaluate.LIST_LEN)
        metrics = {k: summary[k] for k in summary if k.startswith(("recall@", "ndcg@"))}
        out = {
            "split": args.split,
            "eval_seed": args.eval_seed,
            "n_users": len(examples),
            "max_history": args.max_history,
            **metrics,
            **health(frame, ds, split),
            "fit_seconds": fit_s,
            "baseline_info": {k: v for k, v in summary.items() if k not in metrics},
            **describe(resolve_device(args.device if args.model == "sasrec" else "cpu"), "fp32"),
        }
        evaluate.write(args.out, identity(args, options), out, frame, {**vars(args)})
    print(
        f"{args.model} on {args.dataset} ({len(examples):,} {args.split} users): recall@10 "
        f"{out['recall@10']:.4f}  ndcg@10 {out['ndcg@10']:.4f}  (fit {fit_s:.1f}s)"
    )
    return out


def health(frame, ds: data.Dataset, split: dict) -> dict[str, Any]:
    """The same health figures evaluate reports for a trained model."""
    import numpy as np

    from pauserec.evaluation import metrics

    items = np.array([[int(x) for x in row.split()] for row in frame["top_items"]])
    counts = np.bincount([ex.target for ex in split["train"]], minlength=len(ds.items))
    return metrics.health(items, len(ds.items), np.argsort(-counts, kind="stable")[:10].tolist())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse_args(BaselineArgs, argv, "pauserec baseline"))
