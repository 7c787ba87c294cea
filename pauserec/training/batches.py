"""Which sequences train together in a step, and how a step's sequences become tensors.

* :func:`plan` -- one epoch's steps (arrays of sequence indices), a pure function of (seed, epoch):
  a fixed number of sequences per step (``batch_size``) or as many as fit a token budget
  (``batch_tokens``). Bucketing sorts windows of steps by length, so a step holds sequences of
  similar length.
* :func:`pack` -- a step's sequences laid out in rows of at most ``pack_len`` tokens (best-fit
  decreasing); unpacked, each sequence is a row of its own. Packing changes the layout only: a step
  trains the same sequences with the same loss either way. With ``pack_len`` = the step's longest
  sequence (the loop's default) no row is wider than unpacked and there are no more rows, so packing
  never adds padding; it removes most of it from steps of mixed lengths (no bucketing, or big
  ``batch_tokens`` steps).
* :func:`collate` -- rows as right-padded tensors. In a packed row ``position_ids`` restart at 0 at
  every sequence; transformers turns that into attention kept within each sequence (SDPA, eager,
  flex: a block-diagonal causal mask; flash-attention-2: varlen kernels, once
  :class:`~pauserec.loop.LabelledLoss` has joined the rows into one). The first token of a sequence
  is never a target, so no label crosses from one sequence into the next.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np
import torch

from pauserec.model.prompts import IGNORE
from pauserec.training.corpus import Corpus

BUCKET_BATCHES = 64  # steps per sorting window: enough to find equal lengths, still well shuffled


def plan(
    lengths: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    bucket: bool = True,
    world: int = 1,
    batch_tokens: int = 0,
    pack: bool = False,
) -> list[np.ndarray]:
    """One epoch's steps of sequence indices, a pure function of (seed, epoch).

    ``batch_tokens > 0`` replaces ``batch_size``: a step takes sequences while their tokens fit the
    budget, counted as laid out -- padded to the step's longest sequence (``n x longest``), or, with
    ``pack``, the sum of their lengths. A longer sequence is a step of its own. Bucketing shuffles,
    sorts windows of ``BUCKET_BATCHES`` steps by length, cuts them into steps and shuffles the step
    order. Steps of fewer than ``world`` sequences are dropped (every process needs one).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if batch_tokens > 0:
        per_step = max(1, batch_tokens // max(1, int(lengths.mean()))) if len(lengths) else 1
        cut = lambda part: _cut(part, lengths, batch_tokens, pack)  # noqa: E731
    else:
        per_step = batch_size
        cut = (  # noqa: E731
            lambda part: [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        )
    if not bucket:
        batches = cut(order)
    else:
        batches = []
        window = per_step * BUCKET_BATCHES
        for start in range(0, len(order), window):
            part = order[start : start + window]
            batches += cut(part[np.argsort(lengths[part], kind="stable")])
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return [b for b in batches if len(b) >= world]


def _cut(idx: np.ndarray, lengths: np.ndarray, budget: int, pack: bool) -> list[np.ndarray]:
    """Consecutive runs of ``idx`` whose laid-out tokens fit ``budget`` (see :func:`plan`)."""
    out, start, total, longest = [], 0, 0, 0
    for j, n in enumerate(lengths[idx].tolist()):
        cost = total + n if pack else (j - start + 1) * max(longest, n)
        if j > start and cost > budget:
            out.append(idx[start:j])
            start, total, longest = j, 0, 0
        total, longest = total + n, max(longest, n)
    if start < len(idx):
        out.append(idx[start:])
    return out


def pack(idx: Sequence[int], lengths: np.ndarray, pack_len: int) -> list[list[int]]:
    """Rows of sequence indices, each at most ``pack_len`` tokens (best-fit decreasing; a longer
    sequence gets a row of its own). ``pack_len <= 0``: one sequence per row. Deterministic in
    ``idx``."""
    idx = [int(i) for i in idx]
    if pack_len <= 0:
        return [[i] for i in idx]
    rows: list[list[int]] = []
    # (tokens left, row), sorted: the tightest row that fits comes first
    free: list[tuple[int, int]] = []
    # stable: equal lengths keep the plan's order
    for i in sorted(idx, key=lambda i: -int(lengths[i])):
        n = int(lengths[i])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
            rows[r].append(i)
        else:
            room, r = pack_len, len(rows)
            rows.append([i])
        if room - n > 0:
            bisect.insort(free, (room - n, r))
    return rows


def collate(corpus: Corpus, rows: Sequence, pad_id: int, device: torch.device) -> dict:
    """Right-padded tensors of ``rows`` (lists of sequence indices; a bare index is a row of one).

    Rows of one sequence each give ``attention_mask`` (None when nothing is padded) and no
    ``position_ids``. Packed rows give ``position_ids`` restarting at 0 at every sequence (and in
    the padding tail) and no ``attention_mask``: causality already hides the tail from the real
    tokens. A step holding ``exact`` sequences (trees; never packed) gives their 4-D additive mask
    (B, 1, T, T) and position ids (see :class:`~pauserec.training.corpus.Tree`); a padding position
    attends to itself. ``tokens``: real input tokens; ``labelled``: tokens that carry loss (counted
    here, on the host).
    """
    rows = [[int(r)] if np.ndim(r) == 0 else [int(i) for i in r] for r in rows]
    width = max(sum(len(corpus.ids[i]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)  # (B, T)
    pos = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    used = torch.zeros(len(rows), dtype=torch.long)  # real tokens per row
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = len(corpus.ids[i])
            ids[r, at : at + n] = torch.tensor(corpus.ids[i])
            # a first token is never a target
            labels[r, at + 1 : at + n] = torch.tensor(corpus.labels[i][1:])
            pos[r, at : at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)
        used[r] = at
    packed = any(len(row) > 1 for row in rows)
    mask = torch.arange(width).unsqueeze(0) < used.unsqueeze(1)  # (B, T)
    padded = not bool(mask.all())
    out = {
        "input_ids": ids.to(device),
        "labels": labels.to(device),
        "attention_mask": mask.long().to(device) if padded and not packed else None,
        "position_ids": pos.to(device) if packed else None,
        "tokens": int(used.sum()),
        "labelled": int((labels[:, 1:] != IGNORE).sum()),
    }
    trees = corpus.trees and [corpus.trees[row[0]] for row in rows]
    if trees and any(t is not None for t in trees):
        if packed:
            raise ValueError("exact (tree) sequences are never packed")
        out["attention_mask"], out["position_ids"] = tree_mask(trees, used.tolist(), width, pos)
        out["attention_mask"], out["position_ids"] = (
            out["attention_mask"].to(device),
            out["position_ids"].to(device),
        )
    return out


def tree_mask(
    trees: list, lengths: list[int], width: int, pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(additive mask (B, 1, T, T) float32, position ids (B, T)) of rows holding one sequence each;
    a ``None`` tree is a causal sequence. Padding positions see only themselves."""
    allow = torch.zeros((len(trees), width, width), dtype=torch.bool)  # (B, T queries, T keys)
    pos = pos.clone()
    eye = torch.eye(width, dtype=torch.bool)
    for r, (tree, n) in enumerate(zip(trees, lengths)):
        allow[r] = eye
        if tree is None:
            allow[r, :n, :n] = torch.ones((n, n), dtype=torch.bool).tril()
            continue
        branch = torch.tensor(tree.branch)  # (n,)
        seen = torch.tensor(tree.seen)  # (n,)
        key = torch.arange(n)
        causal = key[None, :] <= key[:, None]  # (n, n)
        trunk_ok = (branch[None, :] < 0) & (key[None, :] < seen[:, None])
        own = (branch[None, :] == branch[:, None]) & (branch[:, None] >= 0)
        allow[r, :n, :n] = causal & (trunk_ok | own)
        pos[r, :n] = torch.tensor(tree.positions())
    mask = torch.zeros(allow.shape, dtype=torch.float32).masked_fill_(
        ~allow, torch.finfo(torch.float32).min
    )
    return mask[:, None], pos
