"""What the three baselines share: rebuilding training sequences from examples, top-k ranking,
and the state every baseline keeps after ``fit`` (:class:`Fitted`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pauserec import data
from pauserec.errors import UserError

# users ranked together; (128, n_items) float64 stays below malloc's mmap threshold
RANK_BATCH = 128
Examples = list[data.Example]  # what ``fit`` learns from (a split's examples)


@dataclass
class Fitted:
    """What every baseline keeps after ``fit`` (none of it an option), and ``recommend``.

    A baseline declares its own ``name`` and options; these fields take no constructor argument.
    """

    name: str = field(default="", init=False)
    order: Any = field(default=None, init=False, repr=False)  # (n_items,) popularity order
    info: dict = field(default_factory=dict, init=False, repr=False)  # name, options, seed, times

    def recommend_scored(
        self, histories: Sequence[Sequence[int]], top_k: int = 20
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items, scores) (n_users, top_k), best first."""
        raise NotImplementedError

    def recommend(self, histories: Sequence[Sequence[int]], top_k: int = 20) -> np.ndarray:
        """(n_users, top_k) item indices, best first."""
        return self.recommend_scored(histories, top_k)[0]


def training_sequences(examples: Iterable[data.Example]) -> list[list[int]]:
    """The item sequences ``examples`` were cut from, each interaction once.

    An example whose history is the tail of its user's current sequence extends that sequence by its
    target (so ``data.split(ds)["train"]`` gives back every ``seq[:-2]``, and ``train + valid``
    every ``seq[:-1]``); any other example starts a new sequence ``history + [target]``. Only items
    that appear in the examples are used, so a held-out target can never leak in.
    """
    seqs: list[list[int]] = []
    last: dict[str, int] = {}  # user -> index of that user's most recent sequence in seqs
    for ex in examples:
        hist = list(ex.history)
        i = last.get(ex.user)
        if i is not None and hist and seqs[i][-len(hist) :] == hist:
            seqs[i].append(ex.target)
        else:
            last[ex.user] = len(seqs)
            seqs.append([*hist, ex.target])
    if not seqs:
        raise UserError("a baseline needs at least one training example")
    return seqs


def mask_histories(scores: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
    """``scores`` (n_users, n_items) with every item of ``histories[u]`` set to -inf (in place)."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.fromiter((i for h in histories for i in h), dtype=np.int64, count=len(rows))
    scores[rows, cols] = -np.inf
    return scores


def rank(scores: np.ndarray, top_k: int, tie_order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(items, scores), both (n_users, top_k), best first; equal scores follow ``tie_order``.

    ``tie_order`` lists every item index, best first (the baselines pass popularity order), so
    ties -- items a model cannot tell apart -- are broken the same way by every baseline. Exact, and
    as fast as ``torch.topk``: the items strictly above the k-th best score come first (sorted by
    score, then tie order), then the items tied with it, in tie order.
    """
    s = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float64))  # (n_users, n_items)
    pos = torch.empty(s.shape[1], dtype=torch.float64)
    pos[torch.from_numpy(np.asarray(tie_order))] = torch.arange(s.shape[1], dtype=torch.float64)
    kth = s.topk(top_k, dim=1).values[:, -1:]  # (n_users, 1)
    above = s > kth
    a_val, a_idx = torch.where(above, s, -torch.inf).topk(top_k, dim=1)  # (n_users, top_k)
    # ties, tie order first
    t_idx = torch.where(s == kth, -pos, -torch.inf).topk(top_k, dim=1).indices
    n_above = above.sum(1, keepdim=True).numpy()  # (n_users, 1)
    j = np.arange(top_k)[None, :]
    group = np.concatenate([np.where(j < n_above, 0, 2), np.where(j < top_k - n_above, 1, 2)], 1)
    idx = torch.cat([a_idx, t_idx], 1).numpy()  # (n_users, 2 top_k) candidates
    val = np.concatenate([a_val.numpy(), np.repeat(kth.numpy(), top_k, 1)], 1)
    order = np.lexsort((pos.numpy()[idx], -val, group), axis=1)[:, :top_k]
    return np.take_along_axis(idx, order, 1), np.take_along_axis(val, order, 1)


def check_request(n_items: int | None, top_k: int) -> None:
    if n_items is None:
        raise UserError("call fit() before recommend()")
    if not 1 <= top_k <= n_items:
        raise UserError(f"top_k must be between 1 and the number of items ({n_items}), got {top_k}")


def batches(n: int, size: int = RANK_BATCH) -> Iterable[slice]:
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


def rank_histories(
    score_fn: Callable[[Sequence[Sequence[int]]], np.ndarray],
    histories: Sequence[Sequence[int]],
    top_k: int,
    tie_order: np.ndarray,
    exclude_history: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(items, scores) (n_users, top_k) from ``score_fn(batch) -> (batch, n_items)`` scores, in
    batches.

    With ``exclude_history`` the items of a user's history are never recommended.
    """
    histories = [tuple(h) for h in histories]
    items, scores = [np.zeros((0, top_k), np.int64)], [np.zeros((0, top_k))]
    for sl in batches(len(histories)):
        s = np.asarray(score_fn(histories[sl]), dtype=np.float64)  # (batch, n_items)
        if exclude_history:
            mask_histories(s, histories[sl])
        i, v = rank(s, top_k, tie_order)
        items.append(i)
        scores.append(v)
    return np.concatenate(items), np.concatenate(scores)
