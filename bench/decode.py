"""Trie-constrained beam search: ours (pauserec.decode.recommend) vs Hugging Face generate, side by
side.

Baseline: ``model.generate(num_beams=20, num_return_sequences=10, prefix_allowed_tokens_fn=<trie
lookup>, do_sample=False)``, one batch of 16 users at a time -- the way published generative
recommenders decode. Same model, same prompts; prints ms/user for both, ``speedup: X.XX`` and
``outputs match: true|false`` (the top-10 item lists of every user identical).

    python bench/decode.py --ckpt /tmp/pr/demo/init --n-users 64
    python bench/decode.py --dataset beauty --n-users 32  # builds an untrained SmolLM2 checkpoint
"""

from __future__ import annotations

import logging
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig

from pauserec import data
from pauserec.cli import run, setup_logging
from pauserec.config import arg, parse_args
from pauserec.data import data_root_arg
from pauserec.decoding import build_prompts, pad_left, recommend
from pauserec.evaluation.evaluate import examples_for
from pauserec.model import checkpoint, init_ckpt
from pauserec.model.device import name_of, resolve_device, resolve_dtype
from pauserec.model.prompts import PromptBuilder

TIE_TOL = 1e-4  # summed log-probs closer than this are float-noise ties


@dataclass
class BenchArgs:
    """Time trie-constrained beam search: pauserec.decode vs HF
    generate(prefix_allowed_tokens_fn)."""

    ckpt: str | None = arg(None, "checkpoint (default: init-ckpt into a temp dir)")
    backbone: str = arg("smollm2-135m", "backbone of the built checkpoint")
    dataset: str = arg("ml-100k", "dataset of the built checkpoint")
    data_root: str | None = data_root_arg()
    init: str = arg("default", "built checkpoint's SID-row init ('default': no near-tied scores)")
    sid_source: str | None = arg(None, "built checkpoint's SIDs (default: published or rq-kmeans)")
    n_users: int = arg(32, "test users decoded by both")
    batch_size: int = arg(16, "users per batch (both)")
    beams: int = arg(20, "beam width (both)")
    top_k: int = arg(10, "returned items per user (both)")
    variant: str = arg("plain", "plain or pause")
    n_pauses: int = arg(5, "pauses for --variant pause", aliases=("--k",))
    device: str = arg("auto", "auto, cpu, cuda, ...")
    dtype: str = arg("fp32", "weights of both: fp32 (exact match checks), bf16, fp16, auto")
    repeats: int = arg(1, "time each side this often, keep the fastest")
    threads: int = arg(0, "torch CPU threads (0: torch's default)")
    skip_baseline: bool = arg(False, "time ours only")


def prefix_table(item_ids: list[list[int]]) -> dict[tuple[int, ...], list[int]]:
    """Every SID prefix -> allowed next tokens: the lookup published recommenders hand to
    generate."""
    table: dict[tuple[int, ...], set[int]] = {}
    for sid in item_ids:
        for level in range(len(sid)):
            table.setdefault(tuple(sid[:level]), set()).add(sid[level])
    return {p: sorted(t) for p, t in table.items()}


@torch.no_grad()
def hf_baseline(model, tok, prompts, item_ids, beams, top_k, batch_size):
    """(items (n, top_k), scores (n, top_k)) from HF beam search with prefix_allowed_tokens_fn."""
    table, lookup, levels = (
        prefix_table(item_ids),
        {tuple(s): i for i, s in enumerate(item_ids)},
        len(item_ids[0]),
    )
    gc = GenerationConfig(
        num_beams=beams,
        num_return_sequences=top_k,
        do_sample=False,
        max_new_tokens=levels,
        length_penalty=1.0,
        early_stopping=True,
        pad_token_id=tok.pad_token_id or 0,
        eos_token_id=None,
        bos_token_id=tok.bos_token_id,
    )
    items, scores = [], []
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = pad_left(batch, width, gc.pad_token_id).to(device)
        mask = pad_left([[1] * len(p) for p in batch], width).to(device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=gc,
            prefix_allowed_tokens_fn=lambda _b, seq, w=width: table.get(
                tuple(seq[w:].tolist()), []
            ),
            return_dict_in_generate=True,
            output_scores=True,
        )
        sids = out.sequences[:, width:].tolist()
        items += [lookup.get(tuple(s), -1) for s in sids]
        # undo the length normalisation (same length)
        scores += (out.sequences_scores * levels).tolist()
    return np.array(items).reshape(-1, top_k), np.array(scores).reshape(-1, top_k)


def get_checkpoint(args: BenchArgs, tmp: str) -> Path:
    if args.ckpt:
        return Path(args.ckpt)
    out = Path(tmp) / "init"
    argv = [
        "--backbone",
        args.backbone,
        "--dataset",
        args.dataset,
        "--init",
        args.init,
        "--out",
        str(out),
    ]
    source = args.sid_source
    if source is None and args.dataset.lower() in data.AMAZON:
        name = data.AMAZON[args.dataset.lower()]
        index = data.resolve_dir(args.dataset, args.data_root) / f"{name}.index.rqvae.json"
        source = str(index) if index.is_file() else None
    argv += (["--sid-source", source] if source else []) + (
        ["--data-root", args.data_root] if args.data_root else []
    )
    init_ckpt.main(argv)
    return out


def timed(fn, repeats: int = 1):
    """(result, fastest wall time of ``repeats`` runs)."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return result, best


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(BenchArgs, argv, "bench/decode.py")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        device = resolve_device(args.device)
        ckpt = checkpoint.load(
            get_checkpoint(args, tmp), device=device, dtype=resolve_dtype(args.dtype, device)
        )
    builder = PromptBuilder.for_checkpoint(ckpt)
    exs = examples_for(ckpt, "test", args.n_users, seed=0)
    hs = [e.history for e in exs]
    print(
        f"model {ckpt.meta.get('backbone')} ({ckpt.path}), {len(ckpt.catalog):,} items x "
        f"{ckpt.catalog.n_levels} levels, {len(hs)} users, batch {args.batch_size}, {args.beams} "
        f"beams, top {args.top_k}, {args.variant}, {name_of(device)} "
        f"{resolve_dtype(args.dtype, device)}"
    )
    kw = dict(
        variant=args.variant,
        n_pauses=args.n_pauses,
        top_k=args.top_k,
        beams=args.beams,
        batch_size=args.batch_size,
    )
    recommend(ckpt.model, builder, hs[: args.batch_size], **kw)  # warm-up
    ours, t_ours = timed(lambda: recommend(ckpt.model, builder, hs, **kw), args.repeats)
    print(f"ours:     {1000 * t_ours / len(hs):8.2f} ms/user  ({t_ours:.2f} s)")
    result = {"ours_ms_per_user": 1000 * t_ours / len(hs)}
    if args.skip_baseline:
        print(
            "peak memory (RSS): "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
        )
        return result
    encs, _ = build_prompts(ckpt.model, builder, hs, args.variant, args.n_pauses)
    prompts = [e.input_ids[: e.prompt_len] for e in encs]
    hf = lambda ps: hf_baseline(  # noqa: E731
        ckpt.model, ckpt.tokenizer, ps, builder.item_ids, args.beams, args.top_k, args.batch_size
    )
    hf(prompts[:2])  # warm-up
    (items, scores), t_hf = timed(lambda: hf(prompts), args.repeats)
    print(
        f"baseline: {1000 * t_hf / len(hs):8.2f} ms/user  ({t_hf:.2f} s)  HF "
        "generate(prefix_allowed_tokens_fn)"
    )
    print(f"speedup: {t_hf / t_ours:.2f}")
    same = np.array_equal(items, ours.items)
    print(f"outputs match: {str(same).lower()}")
    tied = bool(np.abs(scores - ours.scores).max() < TIE_TOL)
    print(
        "outputs match up to ties (same score at every "
        f"rank within {TIE_TOL:g}): {str(tied).lower()}"
    )
    report_differences(items, scores, ours)
    print(
        f"peak memory (RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    )
    return {
        **result,
        "baseline_ms_per_user": 1000 * t_hf / len(hs),
        "speedup": t_hf / t_ours,
        "match": same,
    }


def report_differences(items: np.ndarray, scores: np.ndarray, ours) -> None:
    """Say where the lists differ, and whether the scores there are tied within float noise."""
    rows = np.flatnonzero((items != ours.items).any(1))
    gap = np.abs(scores - ours.scores).max()
    print(
        f"users with different lists: {len(rows)}/{len(items)}; max |score diff| at equal ranks "
        f"{gap:.2e}; baseline invalid SIDs {float((items < 0).mean()):.3f}, ours "
        f"{ours.invalid_rate:.3f}"
    )
    for u in rows[:3]:
        j = int(np.flatnonzero(items[u] != ours.items[u])[0])
        print(
            f"  user {u}: first differs at rank {j + 1}: baseline {items[u, j]} "
            f"({scores[u, j]:.6f}) vs ours {ours.items[u, j]} ({ours.scores[u, j]:.6f})"
        )


if __name__ == "__main__":
    logging.getLogger("transformers").setLevel(logging.ERROR)
    setup_logging(logging.WARNING)
    sys.exit(run(main))
