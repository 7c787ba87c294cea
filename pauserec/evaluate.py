"""Leak-free evaluation: trie-constrained beam search on held-out users, Recall/NDCG@K, latency.

``python -m pauserec evaluate CKPT --split test --out DIR`` writes ``DIR/metrics.json`` and
``DIR/per_user.csv`` (one row per user, so checkpoints can be compared with paired tests) and records
the summary in the checkpoint's ``pauserec.json`` under ``metrics[split]``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from pauserec import checkpoint, data, files, metrics
from pauserec.checkpoint import Checkpoint
from pauserec.config import parse_args, to_dict
from pauserec.decode import recommend
from pauserec.errors import UserError
from pauserec.prompts import PromptBuilder

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
TOP_K = max(metrics.KS)  # every K in metrics.KS is read off one top-20 list
LATENCY_BATCH = 16  # the paper's latency protocol: batches of 16, greedy SID decoding


@dataclass
class EvalArgs:
    """Recall/NDCG@{1,5,10,20} of a checkpoint with trie-constrained beam search, plus latency."""

    ckpt: str = field(default="", metadata={"positional": True, "help": "checkpoint directory"})
    out: str = field(default="", metadata={"help": "write metrics.json and per_user.csv here"})
    split: str = field(default="test", metadata={"help": "test, valid or train"})
    n_users: int | None = field(default=None, metadata={"help": "seeded sample of users (default: all)"})
    seed: int = field(default=0, metadata={"help": "seed of the user sample"})
    beams: int = field(default=20, metadata={"help": "beam width (never shrinks)"})
    batch_size: int = field(default=16, metadata={"help": "users decoded together"})
    variant: str | None = field(default=None, metadata={"help": "plain, pause or cot (default: checkpoint's)"})
    k: int | None = field(default=None, metadata={"help": "pause count (default: checkpoint's)"})
    cot_max_new_tokens: int = field(default=64, metadata={"help": "cap on a generated rationale"})
    latency_samples: int = field(default=128, metadata={"help": "users timed for latency (0: skip)"})
    constrained: bool = field(default=True, metadata={"help": "decode under the catalog trie"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:1, ..."})


def examples_for(ckpt: Checkpoint, split: str = "test", n_users: int | None = None,
                 seed: int = 0) -> list[data.Example]:
    """The checkpoint's dataset (``meta["dataset"]``), split leave-one-out; a seeded sample of users."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    if n_users is not None and n_users < 1:
        raise UserError("n_users must be at least 1")
    spec = ckpt.meta.get("dataset") or {}
    if not spec.get("name"):
        raise UserError(f"checkpoint {ckpt.path} names no dataset in its metadata")
    ds = data.load_dataset(spec["name"], spec.get("data_root"))
    if [it.item_id for it in ds.items] != [it.item_id for it in ckpt.catalog.items]:
        raise UserError(f"checkpoint {ckpt.path}: its catalog does not match dataset '{spec['name']}'")
    examples = data.split(ds, spec.get("max_history", 20))[split]
    if n_users is None or n_users >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(seed).choice(len(examples), n_users, replace=False))
    return [examples[i] for i in keep]


def prompt_variant(ckpt: Checkpoint, variant: str | None = None, k: int | None = None) -> tuple[str, int]:
    """The decoding variant and pause count: overrides, else the checkpoint's (``base`` -> ``plain``)."""
    variant = variant or ckpt.variant
    variant = "plain" if variant == "base" else variant
    k = int(ckpt.meta.get("k") or 0) if k is None else k
    if variant == "pause" and k < 1:
        raise UserError("variant 'pause' needs k >= 1 pauses")
    return variant, k


def evaluate(ckpt: Checkpoint, split: str = "test", n_users: int | None = None, seed: int = 0,
             beams: int = 20, batch_size: int = 16, examples: list[data.Example] | None = None,
             latency_samples: int = 128, **decode_kw: Any) -> tuple[dict[str, Any], pd.DataFrame]:
    """(summary, per-user frame) for ``examples`` (default: :func:`examples_for`).

    ``decode_kw`` go to :func:`pauserec.decode.recommend` (``variant``, ``k``, ``rationales``,
    ``constrained``, ``cot_max_new_tokens``, ``mask_segments``, ``device``).
    """
    examples = examples if examples is not None else examples_for(ckpt, split, n_users, seed)
    if not examples:
        raise UserError(f"no {split} examples to evaluate")
    variant, k = prompt_variant(ckpt, decode_kw.pop("variant", None), decode_kw.pop("k", None))
    builder = PromptBuilder(ckpt.tokenizer, ckpt.catalog)
    histories = [ex.history for ex in examples]
    start = time.perf_counter()
    recs = recommend(ckpt.model, builder, histories, variant=variant, k=k, top_k=TOP_K, beams=beams,
                     batch_size=batch_size, **decode_kw)
    seconds = time.perf_counter() - start
    targets = np.array([ex.target for ex in examples])
    r = metrics.ranks(targets, recs.items)
    summary: dict[str, Any] = {
        "split": split, "n_users": len(examples), "seed": seed, "variant": variant, "k": k,
        "beams": beams, "top_k": TOP_K, "constrained": decode_kw.get("constrained", True),
        **metrics.summarize(r), "invalid_rate": recs.invalid_rate,
        "beam_seconds": seconds, "throughput_users_per_s": len(examples) / seconds, "batch_size": batch_size,
        "device": str(next(ckpt.model.parameters()).device),
    }
    if latency_samples:
        summary.update(latency(ckpt, builder, histories[:latency_samples], variant, k, **decode_kw))
    return summary, per_user_frame(examples, r, recs)


def latency(ckpt: Checkpoint, builder: PromptBuilder, histories, variant: str, k: int,
            **decode_kw: Any) -> dict[str, Any]:
    """The paper's protocol: greedy (1-beam) SID decoding in batches of 16, wall time per sample."""
    decode_kw = {key: v for key, v in decode_kw.items() if key in ("rationales", "cot_max_new_tokens",
                                                                      "mask_segments", "device")}
    if decode_kw.get("rationales") is not None:
        decode_kw["rationales"] = list(decode_kw["rationales"])[:len(histories)]
    recommend(ckpt.model, builder, histories[:1], variant=variant, k=k, top_k=1, beams=1, **decode_kw)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    recommend(ckpt.model, builder, histories, variant=variant, k=k, top_k=1, beams=1,
              batch_size=LATENCY_BATCH, **decode_kw)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"latency_ms_per_sample": 1000 * seconds / len(histories), "latency_samples": len(histories),
            "latency_batch_size": LATENCY_BATCH}


def per_user_frame(examples: list[data.Example], ranks: np.ndarray, recs) -> pd.DataFrame:
    """One row per user: user, target, rank (0 = miss), hit@K, ndcg@K, top-20 items, best score."""
    frame = pd.DataFrame({"user": [ex.user for ex in examples], "target": [ex.target for ex in examples],
                          "rank": ranks, "history_len": [len(ex.history) for ex in examples]})
    for k in metrics.KS:
        frame[f"hit@{k}"] = metrics.recall_at_k(ranks, k)
        frame[f"ndcg@{k}"] = metrics.ndcg_at_k(ranks, k)
    frame["top_items"] = [" ".join(map(str, row)) for row in recs.items.tolist()]
    frame["top_score"] = recs.scores[:, 0]
    if recs.rationales is not None:
        frame["rationale"] = recs.rationales
    return frame


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(EvalArgs, argv, "pauserec evaluate")
    if not args.ckpt or not args.out:
        raise UserError("usage: python -m pauserec evaluate CKPT --out DIR [--split test]")
    if args.split not in SPLITS:
        raise UserError(f"unknown split '{args.split}' (known: {', '.join(SPLITS)})")
    if args.n_users is not None and args.n_users < 1:
        raise UserError("--n-users must be at least 1")
    if args.beams < TOP_K:
        raise UserError(f"--beams must be at least {TOP_K} (metrics read a top-{TOP_K} list)")
    checkpoint.read_meta(args.ckpt)  # fail fast on a bad checkpoint, before loading any weights
    ckpt = checkpoint.load(args.ckpt, device=args.device)
    summary, frame = evaluate(ckpt, args.split, args.n_users, args.seed, args.beams, args.batch_size,
                              latency_samples=args.latency_samples, variant=args.variant, k=args.k,
                              cot_max_new_tokens=args.cot_max_new_tokens, constrained=args.constrained)
    with files.atomic_dir(args.out) as tmp:
        files.write_json(tmp / "metrics.json", {"ckpt": str(args.ckpt), "args": to_dict(args), **summary})
        files.write_csv(tmp / "per_user.csv", frame)
    stored = checkpoint.read_meta(args.ckpt).get("metrics") or {}
    checkpoint.update_meta(args.ckpt, metrics={**stored, args.split: summary})
    print(format_summary(summary))
    print(f"wrote {args.out}/metrics.json and per_user.csv; recorded metrics['{args.split}'] in {args.ckpt}")
    return summary


def format_summary(s: dict[str, Any]) -> str:
    ks = metrics.KS
    lines = [f"{s['split']}: {s['n_users']:,} users, variant {s['variant']} (k={s['k']}), {s['beams']} beams",
             "recall " + "  ".join(f"@{k} {s[f'recall@{k}']:.4f}" for k in ks),
             "ndcg   " + "  ".join(f"@{k} {s[f'ndcg@{k}']:.4f}" for k in ks),
             f"invalid SIDs {s['invalid_rate']:.4f}; beam search {s['throughput_users_per_s']:.1f} users/s"]
    if "latency_ms_per_sample" in s:
        lines.append(f"latency {s['latency_ms_per_sample']:.1f} ms/sample (greedy, batch "
                     f"{s['latency_batch_size']}, {s['latency_samples']} samples)")
    return "\n".join(lines)
