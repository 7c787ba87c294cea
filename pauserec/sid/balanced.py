"""Balanced residual k-means: every level's codes are used about equally often.

Plain k-means leaves some codes crowded and others nearly empty, which wastes SID capacity (low
entropy per level). Here each Lloyd step assigns items with an entropic optimal-transport plan whose
column marginals are uniform (Sinkhorn-Knopp, as LC-Rec does at its last level), then moves each
centroid to the mean of its items. Seeded, float32, and initialised from plain k-means
(:func:`pauserec.sid.kmeans.kmeans`).
"""

from __future__ import annotations

import numpy as np
import torch

from pauserec.sid.kmeans import kmeans, rq_kmeans

# entropic regularisation, relative to the mean centred cost (smaller: harder balance)
SINKHORN_EPS = 0.05
SINKHORN_ITERS = 30
BALANCED_STEPS = 10  # balanced Lloyd steps after plain k-means converged


def sinkhorn(
    cost: torch.Tensor, eps: float = SINKHORN_EPS, iters: int = SINKHORN_ITERS
) -> torch.Tensor:
    """Assignment ``(n,)`` from costs ``(n, k)``: the row-wise argmax of a transport plan with
    marginals ``1/n`` per item and ``1/k`` per code, so every code receives about ``n/k`` items."""
    n, k = cost.shape
    # a row shift leaves the plan unchanged
    c = cost.double() - cost.double().min(1, keepdim=True).values
    c = c / c.mean().clamp_min(1e-12)
    kernel = torch.exp(-c / eps).clamp_min(1e-300)  # (n, k); each row has a 1 at its minimum
    u = torch.full((n,), 1.0 / n, dtype=torch.float64)
    v = torch.ones(k, dtype=torch.float64)
    for _ in range(iters):
        u = (1.0 / n) / (kernel @ v).clamp_min(1e-300)
        v = (1.0 / k) / (kernel.T @ u).clamp_min(1e-300)
    return (kernel * v[None]).argmax(1)  # u scales whole rows, so it cannot change a row's argmax


def _distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    # (n, k)
    return (x * x).sum(1, keepdim=True) - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None]


def balanced_kmeans(
    x: torch.Tensor, k: int, iters: int, gen: torch.Generator, steps: int = BALANCED_STEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain k-means (``iters`` Lloyd steps), then ``steps`` balanced Lloyd steps.

    Returns (centroids (k, d), assignment (n,)).
    """
    centroids, assign = kmeans(x, k, iters, gen)
    k = centroids.shape[0]
    for _ in range(steps):
        new = sinkhorn(_distances(x, centroids))
        if torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        centroids = torch.where(
            (counts == 0)[:, None], centroids, sums / counts.clamp_min(1)[:, None]
        )
    return centroids, assign


def rq_kmeans_balanced(
    emb: np.ndarray, levels: int, size: int, iters: int, seed: int
) -> np.ndarray:
    """Residual balanced k-means codes ``(n_items, levels)``."""
    return rq_kmeans(emb, levels, size, iters, seed, cluster=balanced_kmeans, dtype=np.float32)
