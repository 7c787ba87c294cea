"""Leak-free evaluation: trie-constrained beam search on held-out users, Recall/NDCG@K, health,
latency.

``python -m pauserec evaluate CKPT --split test --out DIR`` writes ``DIR/metrics.json`` (the summary
with the checkpoint's identity, device and dtype) and ``DIR/per_user.csv`` (one row per user
carrying the same identity columns, so checkpoints can be compared with paired tests and analysis
never guesses from paths). The checkpoint itself is never written.

Health of a recommender (``coverage@10``, ``distinct_lists@10``, ``popular_overlap@10``): a model
whose top-10 lists do not depend on the user has not learned to recommend, whatever its recall says.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pauserec import data, files, registry
from pauserec.config import arg, parse_args, pauses_arg, to_dict
from pauserec.decoding import Trie, recommend
from pauserec.errors import UserError
from pauserec.evaluation import metrics
from pauserec.model import checkpoint
from pauserec.model.checkpoint import Checkpoint
from pauserec.model.device import (
    DEVICES_HELP,
    DTYPES,
    describe,
    resolve_device,
    resolve_dtype,
    synchronize,
)
from pauserec.model.prompts import PromptBuilder

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
LIST_LEN = max(metrics.KS)  # the length of the ranked list every K in metrics.KS is read off
LATENCY_BATCH = 16  # the paper's latency protocol: batches of 16, greedy SID decoding
MAX_BEAMS = 1024  # a sane bound: beams x users x catalog codes must fit in memory
VARIANTS = ("plain", "pause", "cot")


@dataclass
class EvalArgs:
    """Recall/NDCG@{1,5,10,20} of a checkpoint with trie-constrained beam search, health and
    latency."""

    ckpt: str = arg("", "checkpoint directory", positional=True)
    out: str = arg("", "write metrics.json and per_user.csv here (must not exist)")
    overwrite: bool = arg(False, "replace an existing --out")
    split: str = arg("test", "test, valid or train", choices=SPLITS)
    n_users: int | None = arg(None, "seeded sample of users (default: all)", min=1)
    eval_seed: int = arg(0, "seed of the user sample", min=0, aliases=("--seed",))
    beams: int = arg(20, "beam width (never shrinks)", min=LIST_LEN, max=MAX_BEAMS)
    batch_size: int = arg(16, "users decoded together", min=1)
    variant: str | None = arg(None, "plain, pause or cot (default: checkpoint's)", choices=VARIANTS)
    n_pauses: int | None = pauses_arg(None, "pause count (default: checkpoint's)")
    cot_max_new_tokens: int = arg(64, "cap on a generated rationale", min=1)
    latency_samples: int = arg(500, f"timed users, batches of {LATENCY_BATCH} (0: none)", min=0)
    constrained: bool = arg(True, "decode under the catalog trie")
    device: str = arg("auto", DEVICES_HELP)
    dtype: str = arg("auto", "weights: auto (bf16 where native), bf16, fp16, fp32", choices=DTYPES)


def examples_for(
    ckpt: Checkpoint, split: str = "test", n_users: int | None = None, seed: int = 0
) -> list[data.Example]:
    """The checkpoint's dataset (``meta["dataset"]``), split leave-one-out; a seeded sample of
    users."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    if n_users is not None and n_users < 1:
        raise UserError("n_users must be at least 1")
    ds = checkpoint.dataset_of(ckpt)
    examples = data.split(ds, ckpt.meta["dataset"].get("max_history", 20))[split]
    return [examples[i] for i in data.sample(len(examples), n_users, seed)]


def prompt_variant(
    ckpt: Checkpoint, variant: str | None = None, n_pauses: int | None = None
) -> tuple[str, int]:
    """The decoding variant and pause count: overrides, else the checkpoint's (``base`` ->
    ``plain``)."""
    variant = registry.prompt_of(variant or ckpt.variant)
    n_pauses = ckpt.n_pauses if n_pauses is None else n_pauses
    return variant, n_pauses if variant == "pause" else 0


def popular_items(ckpt: Checkpoint, k: int = 10) -> list[int]:
    """The ``k`` most frequent training targets (the most-popular baseline's list)."""
    ds = checkpoint.dataset_of(ckpt)
    counts = np.bincount([ex.target for ex in data.split(ds, 1)["train"]], minlength=len(ds.items))
    return np.argsort(-counts, kind="stable")[:k].tolist()


def evaluate(
    ckpt: Checkpoint,
    split: str = "test",
    n_users: int | None = None,
    seed: int = 0,
    beams: int = 20,
    batch_size: int = 16,
    examples: list[data.Example] | None = None,
    latency_samples: int = 0,
    popular: list[int] | None = None,
    **decode_kw: Any,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """(summary, per-user frame) for ``examples`` (default: :func:`examples_for`).

    ``popular``: :func:`popular_items` of the checkpoint, when the caller has it (repeated calls).

    ``decode_kw`` go to :func:`pauserec.decode.recommend` (``variant``, ``n_pauses``,
    ``rationales``, ``constrained``, ``cot_max_new_tokens``, ``mask_segments``).
    """
    examples = examples if examples is not None else examples_for(ckpt, split, n_users, seed)
    if not examples:
        raise UserError(f"no {split} examples to evaluate")
    variant, n_pauses = prompt_variant(
        ckpt, decode_kw.pop("variant", None), decode_kw.pop("n_pauses", None)
    )
    builder = PromptBuilder.for_checkpoint(ckpt)
    histories = [ex.history for ex in examples]
    start = time.perf_counter()
    recs = recommend(
        ckpt.model,
        builder,
        histories,
        variant=variant,
        n_pauses=n_pauses,
        top_k=LIST_LEN,
        beams=beams,
        batch_size=batch_size,
        **decode_kw,
    )
    seconds = time.perf_counter() - start
    targets = np.array([ex.target for ex in examples])
    r = metrics.ranks(targets, recs.items)
    summary: dict[str, Any] = {
        "split": split,
        "n_users": len(examples),
        "eval_seed": seed,
        "prompt": variant,
        "prompt_pauses": n_pauses,
        "beams": beams,
        "top_k": LIST_LEN,
        "constrained": decode_kw.get("constrained", True),
        **metrics.summarize(r),
        **metrics.health(
            recs.items, len(ckpt.catalog), popular if popular is not None else popular_items(ckpt)
        ),
        "invalid_rate": recs.invalid_rate,
        "beam_seconds": seconds,
        "throughput_users_per_s": len(examples) / seconds,
        "batch_size": batch_size,
    }
    if latency_samples:
        summary.update(
            latency(ckpt, builder, histories, latency_samples, variant, n_pauses, **decode_kw)
        )
    return summary, per_user_frame(examples, r, recs)


Part = tuple[dict[str, Any], pd.DataFrame]  # (summary, per-user frame) of one evaluate call


def merge(ckpt: Checkpoint, parts: list[Part], popular: list[int] | None = None) -> Part:
    """Evaluations of disjoint chunks of users (one checkpoint, the same settings) as one: the
    per-user rows concatenated, quality and health recomputed over all users, seconds summed."""
    frame = pd.concat([f for _, f in parts], ignore_index=True)
    sizes = [s["n_users"] for s, _ in parts]
    items = np.array([[int(x) for x in row.split()] for row in frame["top_items"]])
    seconds = sum(s["beam_seconds"] for s, _ in parts)
    summary = {
        **parts[0][0],
        "n_users": len(frame),
        **metrics.summarize(frame["rank"].to_numpy()),
        **metrics.health(
            items, len(ckpt.catalog), popular if popular is not None else popular_items(ckpt)
        ),
        "invalid_rate": sum(s["invalid_rate"] * n for (s, _), n in zip(parts, sizes)) / sum(sizes),
        "beam_seconds": seconds,
        "throughput_users_per_s": len(frame) / max(seconds, 1e-9),
    }
    return summary, frame


def latency_of(
    ckpt: Checkpoint, examples: list[data.Example], n_samples: int, **decode_kw: Any
) -> dict[str, Any]:
    """:func:`latency` of ``ckpt`` on ``examples`` with its own prompt (as :func:`evaluate` has)."""
    variant, n_pauses = prompt_variant(
        ckpt, decode_kw.pop("variant", None), decode_kw.pop("n_pauses", None)
    )
    return latency(
        ckpt,
        PromptBuilder.for_checkpoint(ckpt),
        [ex.history for ex in examples],
        n_samples,
        variant,
        n_pauses,
        **decode_kw,
    )


def latency(
    ckpt: Checkpoint,
    builder: PromptBuilder,
    histories,
    n_samples: int,
    variant: str,
    n_pauses: int,
    **decode_kw: Any,
) -> dict[str, Any]:
    """The paper's protocol: greedy (1-beam) SID decoding in batches of 16; wall time per sample.

    ``n_samples`` users (cycling through ``histories`` when there are fewer), timed batch by batch
    after one untimed full batch; the trie is built before timing. ``latency_batches_ms`` lists the
    per-sample time of every batch, so analysis can give a CI over batches.
    """
    keep = ("rationales", "cot_max_new_tokens", "mask_segments")
    decode_kw = {key: v for key, v in decode_kw.items() if key in keep}
    device = next(ckpt.model.parameters()).device
    trie = Trie(builder.item_ids).to(device)
    users = [histories[i % len(histories)] for i in range(max(n_samples, LATENCY_BATCH))]
    rats = decode_kw.pop("rationales", None)
    rats = [rats[i % len(rats)] for i in range(len(users))] if rats is not None else None

    def one(lo: int) -> float:
        part = slice(lo, lo + LATENCY_BATCH)
        synchronize(device)
        t = time.perf_counter()
        recommend(
            ckpt.model,
            builder,
            users[part],
            variant=variant,
            n_pauses=n_pauses,
            top_k=1,
            beams=1,
            batch_size=LATENCY_BATCH,
            trie=trie,
            rationales=None if rats is None else rats[part],
            **decode_kw,
        )
        synchronize(device)
        return 1000 * (time.perf_counter() - t) / len(users[part])

    one(0)  # warm-up: a full batch, untimed
    per_batch = [one(lo) for lo in range(0, n_samples, LATENCY_BATCH)]
    return {
        "latency_ms_per_sample": float(np.mean(per_batch)),
        "latency_samples": n_samples,
        "latency_batch_size": LATENCY_BATCH,
        "latency_batches_ms": per_batch,
    }


def per_user_frame(examples: list[data.Example], ranks: np.ndarray, recs) -> pd.DataFrame:
    """One row per user: user, target, rank (0 = miss), hit@K, ndcg@K, top-20 items, best score."""
    frame = pd.DataFrame(
        {
            "user": [ex.user for ex in examples],
            "target": [ex.target for ex in examples],
            "rank": ranks,
            "history_len": [len(ex.history) for ex in examples],
        }
    )
    for k in metrics.KS:
        frame[f"hit@{k}"] = metrics.recall_at_k(ranks, k)
        frame[f"ndcg@{k}"] = metrics.ndcg_at_k(ranks, k)
    frame["top_items"] = [" ".join(map(str, row)) for row in recs.items.tolist()]
    frame["top_score"] = recs.scores[:, 0]
    if recs.rationales is not None:
        frame["rationale"] = recs.rationales
    return frame


def write(
    out: str,
    ident: dict[str, Any],
    summary: dict[str, Any],
    frame: pd.DataFrame,
    args: dict[str, Any],
) -> None:
    """``metrics.json`` and ``per_user.csv`` in one atomic directory; every row carries
    ``ident``."""
    rows = frame.assign(
        **{k: v for k, v in ident.items() if k not in frame.columns},
        split=summary["split"],
        eval_seed=summary["eval_seed"],
    )
    rows = rows[[*ident, "split", "eval_seed", *frame.columns]]
    with files.atomic_dir(out) as tmp:
        files.write_json(tmp / "metrics.json", {**ident, **summary, "args": args})
        files.write_csv(tmp / "per_user.csv", rows)


def run(args: EvalArgs) -> dict[str, Any]:
    """Evaluate ``args.ckpt`` and write ``args.out`` (see the module docstring)."""
    if not args.ckpt or not args.out:
        raise UserError("usage: python -m pauserec evaluate CKPT --out DIR [--split test]")
    checkpoint.read_meta(args.ckpt)  # fail fast on a bad checkpoint, before loading any weights
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    inputs = checkpoint.source_paths(args.ckpt)
    with files.claim(args.out, kind="pauserec evaluate", overwrite=args.overwrite, inputs=inputs):
        ckpt = checkpoint.load(args.ckpt, device=device, dtype=dtype)
        summary, frame = evaluate(
            ckpt,
            args.split,
            args.n_users,
            args.eval_seed,
            args.beams,
            args.batch_size,
            latency_samples=args.latency_samples,
            variant=args.variant,
            n_pauses=args.n_pauses,
            cot_max_new_tokens=args.cot_max_new_tokens,
            constrained=args.constrained,
        )
        summary.update(describe(device, dtype))
        write(args.out, ckpt.identity(), summary, frame, to_dict(args))
    print(format_summary(summary))
    print(f"wrote {args.out}/metrics.json and per_user.csv")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse_args(EvalArgs, argv, "pauserec evaluate"))


def format_summary(s: dict[str, Any]) -> str:
    ks = metrics.KS
    lines = [
        f"{s['split']}: {s['n_users']:,} users, prompt {s['prompt']} ({s['prompt_pauses']} "
        f"pauses), {s['beams']} beams" + (f", {s['device']} {s['dtype']}" if "device" in s else ""),
        "recall " + "  ".join(f"@{k} {s[f'recall@{k}']:.4f}" for k in ks),
        "ndcg   " + "  ".join(f"@{k} {s[f'ndcg@{k}']:.4f}" for k in ks),
        f"health coverage@10 {s['coverage@10']:.4f}  distinct lists {s['distinct_lists@10']:.4f}  "
        f"overlap with most-popular {s['popular_overlap@10']:.4f}",
        f"invalid SIDs {s['invalid_rate']:.4f}; beam "
        f"search {s['throughput_users_per_s']:.1f} users/s",
    ]
    if s.get("user_independent"):
        lines.append(
            "WARNING: every user gets (nearly) the same top-10 list: this model has not learned "
            "to condition on the user"
        )
    if "latency_ms_per_sample" in s:
        lines.append(
            f"latency {s['latency_ms_per_sample']:.1f} ms/sample (greedy, batch "
            f"{s['latency_batch_size']}, {s['latency_samples']} samples)"
        )
    return "\n".join(lines)
