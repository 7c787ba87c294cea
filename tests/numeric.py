"""Tolerances for comparing two computations of the same mathematics in floating point.

Two layouts of one computation (packed vs one sequence at a time, batched vs alone, kernels of AVX2
vs AVX-512) sum the same terms in different orders. Each order's rounding error grows like
``eps * sqrt(n)`` for ``n`` terms, so two orders agree to about that, relative to the size of the
result. Compare what is mathematically equal -- a loss, a gradient, logits -- never weights after
Adam, which divides a gradient by its own size and so turns a 1e-7 difference in a near-zero
gradient into a full learning-rate step.
"""

from __future__ import annotations

import math

import torch

SAFETY = 16.0  # head-room over the random-walk estimate (reductions also differ in blocking)


def tolerance(dtype: torch.dtype, n_terms: int) -> float:
    """Relative tolerance for two summation orders of ``n_terms`` terms in ``dtype``."""
    return SAFETY * torch.finfo(dtype).eps * math.sqrt(max(n_terms, 1))


def close(
    a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32, n_terms: int = 1
) -> bool:
    """``a`` equals ``b`` up to :func:`tolerance`, relative to the largest entry of ``b`` (entries
    much smaller than the largest carry the absolute error of the large ones)."""
    a, b = (
        x.double() if torch.is_tensor(x) else torch.tensor(x, dtype=torch.float64) for x in (a, b)
    )
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(
        (a - b).abs().max() <= tolerance(dtype, n_terms) * max(scale, torch.finfo(dtype).tiny)
    )
