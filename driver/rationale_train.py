"""Training-time rationale sensitivity: train ``cot-sft`` once per rationale condition, then
tabulate the final Recall/NDCG against the quality of the rationales it was trained on.

``python -m pauserec rationale-train SFT_CKPT --out DIR [--conditions
template,template-leaky,drop50,...]``

A condition is either a rationale source of :mod:`pauserec.rationales` (``template``,
``template-leaky``, ``local``, ``openai``, ...: the trainer builds them, ``--rationale SOURCE``) or
a perturbation of :mod:`probes.perturb` applied to the ``--base-source`` rationales of exactly the
trainer's training examples (written with :func:`pauserec.rationales.write`, passed as
``--rationale-file``; recorded as source ``BASE+PERTURBATION``). Each condition trains from the same
SFT checkpoint into ``WORK/<condition>/`` (``--work``, default ``DIR.runs``; a finished one is
reused) with the preset's ``[train.cot-sft]`` settings (``--max-steps`` / ``--n-train`` /
``--train-batch-size`` override them: the ``quick`` preset with a few steps shows it on CPU; real
runs are GPU-sized), and is evaluated on a seeded sample of test users, writing its own rationale as
deployed.

Rows (``DIR/results.csv``): ``ckpt, stage, variant, perturbation`` (= the condition),
``rationale_source, user_id, item_id, metric, value`` with per-user ``recall@K`` / ``ndcg@K`` /
``test_quality_*`` (the rationale the model wrote) and per-condition means ``train_quality_*`` (the
rationales it was trained on) and ``train_loss``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pauserec import data
from pauserec.config import arg
from pauserec.errors import UserError
from pauserec.evaluation import metrics
from pauserec.evaluation.evaluate import LIST_LEN, MAX_BEAMS, evaluate, examples_for
from pauserec.model import checkpoint
from pauserec.model.device import resolve_device
from pauserec.teacher import rationales
from pauserec.training import stages, train
from probes import perturb
from probes._common import ProbeArgs, cli, label, parse, write_results

log = logging.getLogger(__name__)
CONDITIONS = ("template", "template-leaky", "drop50", "word_shuffle", "swap", "empty", "filler")
QUALITY = ("length", "leakage", "agreement")


@dataclass
class Args(ProbeArgs):
    """Train cot-sft once per rationale source/perturbation; final metrics vs rationale quality."""

    conditions: tuple[str, ...] = arg(CONDITIONS, "sources and/or perturbations (not paraphrase)")
    base_source: str = arg("template", "source the perturbations use", choices=rationales.SOURCES)
    preset: str = arg("quick", "configs/NAME.toml supplies [train.cot-sft]")
    work: str = arg("", "trained checkpoints (default OUT.runs)")
    max_steps: int = arg(0, "trainer --max-steps (0: the preset's)", min=0)
    n_train: int = arg(0, "trainer --n-train (0: the preset's)", min=0)
    train_batch_size: int = arg(0, "trainer --batch-size (0: the preset's)", min=0)
    n_users: int = arg(64, "test users evaluated per condition", min=1)
    beams: int = arg(20, "beam width", min=LIST_LEN, max=MAX_BEAMS)
    top_k: int = arg(10, "K of recall@K / ndcg@K", min=1, max=LIST_LEN)


def train_args(
    args: Args, condition: str, out: Path, rationale_file: Path | None
) -> train.TrainArgs:
    values = {
        "from_ckpt": args.ckpt[0],
        "out": str(out),
        "device": args.device,
        "seed": args.seed,
        "progress": False,
        "resume": True,
    }
    values |= {
        k: v
        for k, v in (
            ("max_steps", args.max_steps),
            ("n_train", args.n_train),
            ("batch_size", args.train_batch_size),
        )
        if v
    }
    values |= (
        {"rationale_file": str(rationale_file)} if rationale_file else {"rationale": condition}
    )
    return train.stage_args("cot-sft", args.preset, **values)


def training_examples(sft: checkpoint.Checkpoint, targs: train.TrainArgs) -> list[data.Example]:
    """The examples ``cot-sft`` trains on (the trainer's own sample; it refuses a file missing
    any)."""
    return [ex for w in stages.training_windows(sft, targs)[0] for ex in w.examples()]


def write_perturbed(args: Args, condition: str, targs: train.TrainArgs, path: Path) -> None:
    """The base source's rationales of the training examples, perturbed, as a rationale file."""
    sft = checkpoint.load(args.ckpt[0])
    examples = training_examples(sft, targs)
    base = rationales.build(args.base_source, sft.catalog, examples)
    rng = np.random.default_rng([args.seed, *condition.encode()])
    texts = perturb.apply(condition, [r.text for r in base], examples, sft.catalog, rng)
    leaky = any(r.leaky for r in base) or condition in perturb.UPPER_BOUND
    rationales.write(
        path,
        examples,
        [rationales.Rationale(t, leaky, f"{args.base_source}+{condition}") for t in texts],
    )


def train_condition(args: Args, condition: str, work: Path) -> Path:
    out = work / condition
    if (out / checkpoint.META_FILE).is_file():
        log.info("%s: trained earlier, reused (%s)", condition, out)
        return out
    file = None
    if condition not in rationales.SOURCES:
        file = work / f"{condition}.rationales.jsonl"
        write_perturbed(args, condition, train_args(args, condition, out, file), file)
    train.run(train_args(args, condition, out, file))
    return out


def condition_rows(args: Args, condition: str, path: Path) -> pd.DataFrame:
    """Per-user final metrics and test-rationale quality, and the training rationales' mean
    quality."""
    ckpt = checkpoint.load(path, resolve_device(args.device))
    examples = examples_for(ckpt, "test", args.n_users, args.seed)
    _, frame = evaluate(ckpt, examples=examples, beams=args.beams, latency_samples=0)
    k, cat = args.top_k, ckpt.catalog
    source = (ckpt.meta.get("rationale") or {}).get("source", condition)
    base = {**label(ckpt), "perturbation": condition, "rationale_source": source}
    ranks = frame["rank"].to_numpy()
    per_user = {
        f"recall@{k}": metrics.recall_at_k(ranks, k),
        f"ndcg@{k}": metrics.ndcg_at_k(ranks, k),
    }
    written = frame["rationale"] if "rationale" in frame else [""] * len(frame)
    q = [perturb.quality(r, ex, cat) for r, ex in zip(written, examples)]
    per_user |= {f"test_quality_{m}": np.array([x[m] for x in q]) for m in QUALITY}
    ids = {
        "user_id": [ex.user for ex in examples],
        "item_id": [cat.items[ex.target].item_id for ex in examples],
    }
    frames = [pd.DataFrame({**base, **ids, "metric": m, "value": v}) for m, v in per_user.items()]
    trained = rationales.read(path / "rationales.jsonl")
    tq = [perturb.quality(r.text, ex, cat) for ex, r in trained.items()]
    log_file = path / "train_log.csv"
    loss = float(pd.read_csv(log_file)["loss"].iloc[-1]) if log_file.is_file() else float("nan")
    means = {f"train_quality_{m}": float(np.mean([x[m] for x in tq])) for m in QUALITY} | {
        "train_loss": loss
    }
    frames.append(pd.DataFrame([{**base, "metric": m, "value": v} for m, v in means.items()]))
    return pd.concat(frames, ignore_index=True)


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per condition: mean final metrics and rationale quality."""
    return df.pivot_table(index="perturbation", columns="metric", values="value", aggfunc="mean")


def run(args: Args) -> pd.DataFrame:
    """Train, evaluate and tabulate every condition; write ``args.out`` (results.csv, meta.json)."""
    if len(args.ckpt) != 1:
        raise UserError("rationale-train takes exactly one SFT checkpoint")
    unknown = [c for c in args.conditions if c not in rationales.SOURCES]
    perturb.check(unknown)
    if "paraphrase" in unknown:
        raise UserError(
            "paraphrase at training time is not supported: write a rationale file "
            "(`python -m pauserec rationales`) and train with --rationale-file"
        )
    work = Path(args.work or f"{args.out}.runs")
    df = pd.concat(
        [condition_rows(args, c, train_condition(args, c, work)) for c in args.conditions],
        ignore_index=True,
    )
    summary = table(df)
    print(summary.round(4).to_string())
    write_results(
        df,
        args,
        extra={"probe": "rationale_train", "table": summary.reset_index().to_dict("records")},
    )
    return df


def main(argv: list[str] | None = None) -> pd.DataFrame:
    return run(parse(Args, argv, "pauserec rationale-train"))


if __name__ == "__main__":
    cli(main)
