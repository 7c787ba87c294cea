"""Ranking metrics as tiny pure functions over 1-based ranks (0 = the target was not recommended).

With one held-out target per user, Recall@K equals Hit@K, and NDCG@K is ``1 / log2(rank + 1)`` when
``rank <= K`` (the ideal DCG is 1).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

KS = (1, 5, 10, 20)


def ranks(targets: Sequence[int] | np.ndarray, items: np.ndarray) -> np.ndarray:
    """1-based rank of ``targets[u]`` in ``items[u]`` (n_users, top_k); 0 where it is absent."""
    items = np.asarray(items)
    targets = np.asarray(targets).reshape(-1, 1)
    if items.ndim != 2 or items.shape[0] != targets.shape[0]:
        raise ValueError(f"items {items.shape} must be (n_users={targets.shape[0]}, top_k)")
    hit = items == targets  # (n_users, top_k)
    first = hit.argmax(1) + 1
    return np.where(hit.any(1), first, 0).astype(np.int64)


def recall_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user Recall@K (= Hit@K with a single target): 1.0 if ``0 < rank <= k``."""
    r = np.asarray(ranks)
    return ((r > 0) & (r <= k)).astype(np.float64)


def ndcg_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@K: ``1 / log2(rank + 1)`` if ``0 < rank <= k``, else 0."""
    r = np.asarray(ranks)
    hit = (r > 0) & (r <= k)
    return np.where(hit, 1.0 / np.log2(np.where(hit, r, 1) + 1.0), 0.0)


def summarize(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Mean ``recall@K`` and ``ndcg@K`` over users for every K in ``ks``."""
    r = np.asarray(ranks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(recall_at_k(r, k).mean()) if r.size else 0.0
    for k in ks:
        out[f"ndcg@{k}"] = float(ndcg_at_k(r, k).mean()) if r.size else 0.0
    return out


def health(
    items: np.ndarray, n_catalog: int, popular: Sequence[int], k: int = 10
) -> dict[str, float | bool]:
    """Does the recommender depend on the user? From the (n_users, top_k) recommended item indices:

    * ``coverage@K``: share of the catalog that appears in any top-K list;
    * ``distinct_lists@K``: distinct top-K lists / users (1 = every user gets their own list);
    * ``modal_list_share@K``: share of users who get the most common list;
    * ``popular_overlap@K``: mean share of a user's top-K that is in the most-popular top-K
      (``popular``);
    * ``user_independent``: the most common list goes to at least half of the users (10+ users).
    """
    top = np.asarray(items)[:, :k]
    if not len(top):
        return {}
    lists = Counter(map(tuple, top.tolist()))
    pop = set(int(i) for i in popular[:k])
    modal = max(lists.values()) / len(top)
    return {
        f"coverage@{k}": len(set(top[top >= 0].tolist())) / max(n_catalog, 1),
        f"distinct_lists@{k}": len(lists) / len(top),
        f"modal_list_share@{k}": modal,
        f"popular_overlap@{k}": float(np.mean([len(pop & set(r)) / k for r in top.tolist()])),
        "user_independent": bool(len(top) >= 10 and modal >= 0.5),
    }
