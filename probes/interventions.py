"""Do the pauses matter? Decode the same users with the pauses removed (``n_pauses=0``), hidden as
attention keys, or with the ``<pause>`` embedding replaced (mean text embedding / zeros), and
compare Recall@10 and NDCG@10 with the unmodified model, paired per user.

Rows: per user ``recall@10`` / ``ndcg@10`` (beam search, column ``intervention``) and
``target_logprob`` (teacher-forced log-probability of the target's SID, sensitive even where no
target reaches the top 10), ``intervention_delta_*`` (intervention minus ``none``); summaries
``intervention_delta_*_mean`` / ``_lo`` / ``_hi`` (95% paired-bootstrap CI over users). Replacing
the embedding edits the input row in place and restores it afterwards; on a tied model the output
row moves with it, which only shifts the softmax normaliser.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import torch

from pauserec import data, tokens
from pauserec.decoding import recommend
from pauserec.evaluation import metrics, stats
from pauserec.model import backbone
from pauserec.model.checkpoint import Checkpoint
from pauserec.model.prompts import PromptBuilder

log = logging.getLogger(__name__)
CONDITIONS = ("none", "no-pause", "mask-pause", "pause-mean-text", "pause-zeros")
K = 10  # the cut-off of the interventions' Recall@K and NDCG@K


@contextlib.contextmanager
def pause_row(ckpt: Checkpoint, how: str | None) -> Iterator[None]:
    """Temporarily set the ``<pause>`` input-embedding row to the mean text row or zeros."""
    if how is None:
        yield
        return
    w = ckpt.model.get_input_embeddings().weight
    pid = ckpt.tokenizer.convert_tokens_to_ids(tokens.PAUSE)
    saved = w.data[pid].clone()
    with torch.no_grad():
        if how == "mean-text":
            w[pid] = w[backbone.token_groups(ckpt.tokenizer)["text"]].mean(0)
        elif how == "zeros":
            w[pid] = 0.0
        else:
            raise ValueError(f"unknown pause replacement {how!r}")
    try:
        yield
    finally:
        with torch.no_grad():
            w[pid] = saved


def decode(
    ckpt: Checkpoint,
    builder: PromptBuilder,
    examples: list[data.Example],
    condition: str,
    n_pauses: int,
    beams: int,
    batch_size: int,
) -> np.ndarray:
    """1-based rank of each user's target under ``condition`` (0 = not in the top 10)."""
    histories = [ex.history for ex in examples]
    replace = {"pause-mean-text": "mean-text", "pause-zeros": "zeros"}.get(condition)
    with pause_row(ckpt, replace):
        rec = recommend(
            ckpt.model,
            builder,
            histories,
            variant="pause",
            n_pauses=0 if condition == "no-pause" else n_pauses,
            top_k=K,
            beams=max(beams, K),
            batch_size=batch_size,
            mask_segments={"pause"} if condition == "mask-pause" else None,
        )
    return metrics.ranks([ex.target for ex in examples], rec.items)


@torch.no_grad()
def target_logprob(
    ckpt: Checkpoint,
    builder: PromptBuilder,
    examples: list[data.Example],
    condition: str,
    n_pauses: int,
    batch_size: int,
) -> np.ndarray:
    """Summed log-probability of each user's target SID given the prompt under ``condition``.
    ``mask-pause`` hides the pause positions as keys (positions unchanged), as decoding does."""
    replace = {"pause-mean-text": "mean-text", "pause-zeros": "zeros"}.get(condition)
    encs = [
        builder.encode(ex.history, ex.target, "pause", 0 if condition == "no-pause" else n_pauses)
        for ex in examples
    ]
    out = np.zeros(len(encs))
    device = ckpt.model.device
    with pause_row(ckpt, replace):
        for start in range(0, len(encs), batch_size):
            chunk = encs[start : start + batch_size]
            width = max(len(e.input_ids) for e in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            # right padding: hidden anyway
            keys = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, e in enumerate(chunk):
                ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids)
                keys[b, : len(e.input_ids)] = torch.tensor(
                    [0 if condition == "mask-pause" and s == "pause" else 1 for s in e.segments]
                )
            logp = torch.log_softmax(
                ckpt.model(
                    input_ids=ids.to(device),
                    attention_mask=keys.to(device),
                    # (batch, pos, d_vocab)
                    use_cache=False,
                ).logits.float(),
                -1,
            )
            for b, e in enumerate(chunk):
                pos = torch.arange(e.prompt_len - 1, e.prompt_len - 1 + e.target_len, device=device)
                tgt = torch.tensor(
                    e.input_ids[e.prompt_len : e.prompt_len + e.target_len], device=device
                )
                out[start + b] = float(logp[b, pos, tgt].sum())
    return out


def run(
    ckpt: Checkpoint,
    builder: PromptBuilder,
    examples: list[data.Example],
    variant: str,
    n_pauses: int,
    beams: int,
    batch_size: int,
    n_boot: int,
    seed: int,
) -> list[dict]:
    """Every condition's per-user metrics, paired deltas against ``none`` and their CIs."""
    if variant != "pause" or n_pauses < 1:
        log.warning(
            "interventions need the pause prompt with n_pauses >= 1 (got %s, n_pauses=%d): skipped",
            variant,
            n_pauses,
        )
        return []
    users = [ex.user for ex in examples]
    per: dict[str, dict[str, np.ndarray]] = {}
    rows: list[dict] = []
    for condition in CONDITIONS:
        ranks = decode(ckpt, builder, examples, condition, n_pauses, beams, batch_size)
        per[condition] = {
            f"recall@{K}": metrics.recall_at_k(ranks, K),
            f"ndcg@{K}": metrics.ndcg_at_k(ranks, K),
            "target_logprob": target_logprob(
                ckpt, builder, examples, condition, n_pauses, batch_size
            ),
        }
        for metric, values in per[condition].items():
            rows += [
                {"metric": metric, "intervention": condition, "user_id": u, "value": float(v)}
                for u, v in zip(users, values)
            ]
        log.info(
            "intervention %s: recall@%d %.4f, target log-prob %.3f",
            condition,
            K,
            per[condition][f"recall@{K}"].mean(),
            per[condition]["target_logprob"].mean(),
        )
    for condition in CONDITIONS[1:]:
        for metric in per["none"]:
            delta = per[condition][metric] - per["none"][metric]
            name = f"intervention_delta_{metric}"
            rows += [
                {"metric": name, "intervention": condition, "user_id": u, "value": float(d)}
                for u, d in zip(users, delta)
            ]
            mean, lo, hi = stats.bootstrap_mean_ci(delta, n_boot, seed)
            rows += [
                {"metric": f"{name}_{stat}", "intervention": condition, "value": v}
                for stat, v in (("mean", mean), ("lo", lo), ("hi", hi))
            ]
    return rows
