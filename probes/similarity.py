"""Representational agreement between two views of the same items, each with a permutation baseline.

Views are (n, d) matrices whose row ``i`` describes item ``i`` (e.g. the mean of its SID-token
embeddings, and the mean of its title-token embeddings). A permutation baseline pairs row ``i`` of
one view with row ``perm[i]`` of the other, which keeps both clouds intact and breaks only the
pairing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.linalg import orthogonal_procrustes, svdvals

from probes.activations import permutation


def _centered(x, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows minus their mean, computed in float64 (rows that differ by 1e-5 keep their
    differences)."""
    x = torch.as_tensor(x).double()
    return (x - x.mean(0, keepdim=True)).to(dtype)


def linear_cka(x, y) -> float:
    """Linear CKA (Kornblith et al. 2019) of (n, p) and (n, q): 1 = same geometry up to
    rotation/scale."""
    x, y = _centered(x), _centered(y)
    cross = (x.T @ y).double().square().sum()
    norm = (x.T @ x).double().square().sum().sqrt() * (y.T @ y).double().square().sum().sqrt()
    return float(cross / norm) if norm > 0 else 0.0


def cka(x, y, n_perm: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Linear CKA, its permutation baseline and p; the self-similarity norms are computed once."""
    x, y = _centered(x), _centered(y)
    norm = float(
        (x.T @ x).double().square().sum().sqrt() * (y.T @ y).double().square().sum().sqrt()
    )
    if norm == 0:
        return 0.0, 0.0, 1.0
    cross = lambda yy: float((x.T @ yy).double().square().sum()) / norm  # noqa: E731
    obs = cross(y)
    base = [cross(y[torch.from_numpy(permutation(len(y), rng))]) for _ in range(n_perm)]
    return obs, float(np.mean(base)) if base else float("nan"), _p_value(obs, base, larger=True)


def _unit(x) -> np.ndarray:
    x = _centered(x).numpy()
    n = np.linalg.norm(x)
    return x / n if n > 0 else x


def procrustes_residual(x, y) -> float:
    """Residual ``||x R - y||_F^2`` of the best rotation ``R`` (scipy's orthogonal Procrustes) after
    centring and scaling both views to unit Frobenius norm: 0 = identical up to rotation and scale,
    up to 2 = nothing in common. Needs views of one shape."""
    x, y = _unit(x), _unit(y)
    if x.shape != y.shape:
        raise ValueError(f"procrustes needs views of one shape, got {x.shape} and {y.shape}")
    rot, _ = orthogonal_procrustes(x, y)
    return float(np.square((x @ rot - y).astype(np.float64)).sum())


def _procrustes_fast(x: np.ndarray, y: np.ndarray) -> float:
    """The same residual for unit views, from singular values only: ``2 - 2 * sum(svd(x^T y))``."""
    return float(2.0 - 2.0 * svdvals(x.T @ y).astype(np.float64).sum())


@torch.no_grad()
def knn(x, k: int, chunk: int = 2048) -> np.ndarray:
    """Indices (n, k) of each row's ``k`` nearest other rows by cosine similarity of the centred
    rows (without centring, rows sharing a large common component -- e.g. SID rows initialised at
    one mean vector -- have cosines that float32 cannot tell apart)."""
    x = torch.nn.functional.normalize(_centered(x), dim=1)
    k = min(k, len(x) - 1)
    out = []
    for start in range(0, len(x), chunk):
        sim = x[start : start + chunk] @ x.T  # (chunk, n)
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = -torch.inf  # never your own neighbour
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out).numpy()


def knn_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of neighbours two (n, k) neighbour lists have in common (mutual k-NN)."""
    same = (a[:, :, None] == b[:, None, :]).any(2)  # (n, k)
    return float(same.mean())


def permuted_knn(nbrs: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Neighbour lists of the view re-paired by ``perm`` (row i becomes row perm[i]), without a
    search."""
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    return inverse[nbrs[perm]]


def with_baseline(
    fn: Callable[[np.ndarray, np.ndarray], float], x, y, n_perm: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """(observed, mean over ``n_perm`` re-pairings, one-sided p that a re-pairing does as well)."""
    obs = fn(x, y)
    y = np.asarray(y)
    base = [fn(x, y[permutation(len(y), rng)]) for _ in range(n_perm)]
    return obs, float(np.mean(base)) if base else float("nan"), _p_value(obs, base, larger=True)


def _p_value(obs: float, base: list[float], larger: bool) -> float:
    if not base:
        return float("nan")
    hits = sum(b >= obs if larger else b <= obs for b in base)
    return (1 + hits) / (1 + len(base))


def mutual_knn(x, y, k: int, n_perm: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mutual k-NN overlap of two views, its permutation baseline (~k/n) and p-value."""
    nx, ny = knn(x, k), knn(y, k)
    obs = knn_overlap(nx, ny)
    base = [knn_overlap(nx, permuted_knn(ny, permutation(len(ny), rng))) for _ in range(n_perm)]
    return obs, float(np.mean(base)) if base else float("nan"), _p_value(obs, base, larger=True)


def procrustes(x, y, n_perm: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Procrustes residual, its permutation baseline and p (smaller residual = better agreement)."""
    obs = procrustes_residual(x, y)
    x, y = _unit(x), _unit(y)  # re-pairing rows keeps y centred and of unit norm
    base = [_procrustes_fast(x, y[permutation(len(y), rng)]) for _ in range(n_perm)]
    return obs, float(np.mean(base)) if base else float("nan"), _p_value(obs, base, larger=False)
