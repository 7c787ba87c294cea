"""Trie-constrained recommendation: prompts for every history (plain, pause, cot), batched beam
search, top-K items per user. Nothing here reads a model's ``generation_config``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel

from pauserec.decoding.generate import generate, model_device
from pauserec.decoding.search import beam_search, think_then_search
from pauserec.decoding.trie import Trie
from pauserec.errors import UserError
from pauserec.model.prompts import PromptBuilder
from pauserec.registry import PAPER_PAUSES

log = logging.getLogger(__name__)


@dataclass
class Recommendations:
    # (n_users, top_k) item indices, best first; -1 = not a catalog SID (unconstrained)
    items: np.ndarray
    scores: np.ndarray  # (n_users, top_k) summed log-probs of the SID tokens
    invalid_rate: float  # share of returned SIDs that name no catalog item (0 under the trie)
    rationales: list[str] | None = None  # cot: the rationale each user's SID was decoded after


def _segment_hit(segment: str, names: set[str]) -> bool:
    return segment in names or segment.split(":")[0] in names  # "history" matches "history:3"


def build_prompts(
    model: PreTrainedModel,
    builder: PromptBuilder,
    histories: Sequence[Sequence[int]],
    variant: str = "plain",
    n_pauses: int = PAPER_PAUSES,
    rationales: Sequence[str] | None = None,
    cot_max_new_tokens: int = 64,
    batch_size: int = 16,
):
    """Encoded prompts (target=None) for every history, and for ``cot`` the rationale texts used.

    ``cot`` without ``rationales``: each rationale is generated greedily after ``<think>`` until
    ``</think>`` (or EOS, or ``cot_max_new_tokens``), then ``</think>`` is appended.
    """
    if variant not in ("plain", "pause", "cot"):
        raise UserError(f"unknown variant '{variant}' (known: plain, pause, cot)")
    if variant != "cot":
        return [builder.encode(h, variant=variant, n_pauses=n_pauses) for h in histories], None
    if rationales is not None:
        if len(rationales) != len(histories):
            raise UserError(f"{len(rationales)} rationales for {len(histories)} histories")
        return [
            builder.encode(h, variant="cot", rationale=r) for h, r in zip(histories, rationales)
        ], list(rationales)
    # ..<think>
    starts = [builder.encode(h, variant="cot", rationale=[]).input_ids[:-1] for h in histories]
    stops = [builder.think_close] + [t for t in [builder.tok.eos_token_id] if t is not None]
    made = generate(model, builder.tok, starts, cot_max_new_tokens, stops, batch_size)
    encs = [builder.encode(h, variant="cot", rationale=r) for h, r in zip(histories, made)]
    return encs, [builder.tok.decode(r).strip() for r in made]


def recommend(
    model: PreTrainedModel,
    builder: PromptBuilder,
    histories: Sequence[Sequence[int]],
    *,
    top_k: int = 10,
    beams: int = 20,
    variant: str = "plain",
    n_pauses: int = PAPER_PAUSES,
    rationales: Sequence[str] | None = None,
    batch_size: int = 16,
    cot_max_new_tokens: int = 64,
    constrained: bool = True,
    mask_segments: set[str] | None = None,
    device: str | torch.device | None = None,
    trie: Trie | None = None,
) -> Recommendations:
    """Top-``top_k`` items per history by beam search over the full catalog's SID trie.

    ``mask_segments``: prompt positions whose segment (see ``PromptBuilder``) is in the set are
    hidden as attention keys. ``device``: move the model there first (default: where it is).
    ``trie``: the catalog's trie on the model's device, when the caller built it already (timed
    loops). Users are decoded ``batch_size`` at a time, sorted by prompt length; if the device runs
    out of memory the batch is split, never the beams.
    """
    if top_k > beams:
        raise UserError(f"top_k ({top_k}) cannot exceed beams ({beams})")
    if beams < 1 or batch_size < 1:
        raise UserError("beams and batch_size must be at least 1")
    if device is not None:
        model.to(device)
    trie = trie if trie is not None else Trie(builder.item_ids).to(model_device(model))
    if variant == "cot" and rationales is None:
        if mask_segments:
            raise UserError("mask_segments needs given rationales for the cot variant")
        return _recommend_thinking(
            model,
            builder,
            histories,
            trie,
            top_k,
            beams,
            batch_size,
            cot_max_new_tokens,
            constrained,
        )
    encs, used = build_prompts(
        model, builder, histories, variant, n_pauses, rationales, cot_max_new_tokens, batch_size
    )
    prompts = [e.input_ids[: e.prompt_len] for e in encs]
    key_masks = (
        None
        if not mask_segments
        else [
            [0 if _segment_hit(s, mask_segments) else 1 for s in e.segments[: e.prompt_len]]
            for e in encs
        ]
    )
    items = np.full((len(prompts), top_k), -1, dtype=np.int64)
    scores = np.full((len(prompts), top_k), -np.inf)
    lookup = {tuple(t): i for i, t in enumerate(builder.item_ids)}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    search = lambda rows: beam_search(  # noqa: E731
        model,
        [prompts[i] for i in rows],
        trie,
        beams,
        constrained,
        None if key_masks is None else [key_masks[i] for i in rows],
    )
    for rows, (toks, found, score) in _batches(order, batch_size, beams, search):
        w = min(top_k, found.shape[1])
        if not constrained:
            found = torch.tensor(
                [[lookup.get(tuple(t), -1) for t in user] for user in toks.tolist()]
            )
        items[rows, :w], scores[rows, :w] = found[:, :w].cpu().numpy(), score[:, :w].cpu().numpy()
    return _results(items, scores, used)


def _results(
    items: np.ndarray, scores: np.ndarray, rationales: list[str] | None
) -> Recommendations:
    real = np.isfinite(scores)
    invalid = float(((items < 0) & real).sum() / max(real.sum(), 1))
    return Recommendations(items, scores, invalid, rationales)


def _recommend_thinking(
    model,
    builder: PromptBuilder,
    histories,
    trie: Trie,
    top_k: int,
    beams: int,
    batch_size: int,
    max_new_tokens: int,
    constrained: bool,
) -> Recommendations:
    """``recommend`` for the cot variant with generated rationales (see
    :func:`think_then_search`)."""
    # ..<think>
    starts = [builder.encode(h, variant="cot", rationale=[]).input_ids[:-1] for h in histories]
    items = np.full((len(starts), top_k), -1, dtype=np.int64)
    scores = np.full((len(starts), top_k), -np.inf)
    used = [""] * len(starts)
    lookup = {tuple(t): i for i, t in enumerate(builder.item_ids)}
    order = sorted(range(len(starts)), key=lambda i: len(starts[i]))
    run = lambda rows: think_then_search(  # noqa: E731
        model, builder, [starts[i] for i in rows], trie, beams, max_new_tokens, constrained
    )
    for rows, ((toks, found, score), made) in _batches(order, batch_size, beams, run):
        w = min(top_k, found.shape[1])
        if not constrained:
            found = torch.tensor(
                [[lookup.get(tuple(t), -1) for t in user] for user in toks.tolist()]
            )
        items[rows, :w], scores[rows, :w] = found[:, :w].cpu().numpy(), score[:, :w].cpu().numpy()
        for i, ids in zip(rows, made):
            used[i] = builder.tok.decode(ids).strip()
    return _results(items, scores, used)


def _batches(order: list[int], batch_size: int, beams: int, fn):
    """Yield (row indices, ``fn(rows)``) over ``order`` in batches; halve the batch on
    out-of-memory."""
    start = 0
    while start < len(order):
        rows = order[start : start + batch_size]
        try:
            result = fn(rows)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            log.warning(
                "out of memory: decoding %d users at a time (beams stay %d)", batch_size, beams
            )
            continue
        yield rows, result
        start += len(rows)
