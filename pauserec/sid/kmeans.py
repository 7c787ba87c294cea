"""k-means and residual k-means, the algorithms below every SID method (no workbench imports)."""

from __future__ import annotations

import numpy as np
import torch


def kmeans(
    x: torch.Tensor, k: int, iters: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ init. Returns (centroids (k, d), assignment (n,))."""
    n = x.shape[0]
    k = min(k, n)
    sq = (x * x).sum(1)  # (n,)
    centroids = x[torch.randint(n, (1,), generator=gen)]
    d2 = (sq - 2 * x @ centroids[0] + centroids[0].dot(centroids[0])).clamp_min(0)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        c = x[torch.multinomial(probs, 1, generator=gen)]
        centroids = torch.cat([centroids, c])
        d2 = torch.minimum(d2, (sq - 2 * x @ c[0] + c[0].dot(c[0])).clamp_min(0))
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        dist = sq[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None]  # (n, k)
        new = dist.argmin(1)
        if _ > 0 and torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
    return centroids, assign


def rq_kmeans(
    emb: np.ndarray, levels: int, size: int, iters: int, seed: int, cluster=None, dtype=np.float64
) -> np.ndarray:
    """Residual k-means codes ``(n_items, levels)``: each level clusters the previous level's
    residual (``cluster``: the clustering of one level, :func:`kmeans` by default)."""
    gen = torch.Generator().manual_seed(seed)
    residual = torch.from_numpy(np.ascontiguousarray(emb, dtype=dtype))
    codes = []
    for _ in range(levels):
        centroids, assign = (cluster or kmeans)(residual, size, iters, gen)
        codes.append(assign.numpy())
        residual = residual - centroids[assign]
    return np.stack(codes, 1).astype(np.int64)
