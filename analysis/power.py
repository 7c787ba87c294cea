"""Power of the verdict rule: the smallest effect a design detects, and the design a target needs.

The verdict engine (:mod:`analysis.verdicts`) reads "reproduced" when the 95% CI of an effect lies
above the claim's margin ``m`` and its Holm-adjusted p < 0.05. This module turns that rule around.

Model. One user's paired difference (treatment - baseline) in training seed ``s`` is
``d_su = delta + a_s + b_u + e_su``: ``a_s`` the training noise of the effect (variance ``seed``),
``b_u`` the user's own difference, the same in every seed (``user``), ``e_su`` the rest (``resid``).
S seeds evaluated on the same N users give the effect the two variance parts the engine's CI uses
(:meth:`Levels.parts`): ``(seed + resid / N) / S`` with S - 1 df, ``user / N`` with N - 1 df.

Estimation (:func:`levels`) from a run's paired columns (:func:`analysis.verdicts.paired_columns`):

- >= 2 seeds on the same users: the two-way mean squares (:func:`analysis.verdicts.mean_squares`),
  ``seed = (MS_seed - MS_res) / N``, ``user = (MS_user - MS_res) / S``, ``resid = MS_res``, each
  clipped at 0;
- >= 2 seeds on different users: ``w``, the pooled within-seed variance of ``d``, is
  ``user + resid``; ``seed = var(d_s) - w / N``; all of ``w`` counts as ``user`` (assumed, below);
- one seed: ``w`` is measured; ``seed`` is assumed (``seed_sd`` percent of the baseline mean), and
  all of ``w`` counts as ``user``: the conservative split, as more seeds do not average it away;
- a pilot with a baseline mean or a user variance of 0 (nothing learned yet): a Bernoulli hit
  model, ``w = 2 p (1 - p) (1 - rho)`` with an assumed hit rate ``p`` and within-user correlation
  ``rho``.

Every assumption is named in :attr:`Levels.assumed`.

Power, exactly for this model (no normal approximation: with 3 seeds the t quantiles and the noise
of the variance estimates matter). :func:`draws` simulates the estimate ``delta + se Z`` and each
part's estimated variance ``var_i chi2(df_i) / df_i`` (``N_DRAWS`` draws from a fixed seed, so
answers are deterministic). A draw reads "reproduced" when ``estimate - h(alpha) > m`` and
``estimate > h(alpha / n_tests)``, where ``h(a) = sqrt(sum_i t(a / 2, df_i)^2 var_i^)`` is the CI
half-width the engine computes; the second test is Holm's strictest threshold (Bonferroni:
conservative). So the minimum detectable effect (:func:`mde`), the smallest true effect that reads
"reproduced" with probability ``power``, is the ``power`` quantile of
``max(m + h(alpha), h(alpha / n_tests)) - se Z``. The smallest margin a design resolves
(:func:`resolution`) is the ``power`` quantile of ``|se Z| + h(alpha)``: a null effect's CI then
falls inside +/-m ("no meaningful difference") with probability ``power``. Relative units divide by
the baseline mean and ignore its own noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from analysis.verdicts import ALPHA, MIN_SEEDS, Parts, mean_squares, tq

POWER = 0.8
N_DRAWS = 20_000  # simulated experiments per power computation: quantiles to ~0.3% of the MDE
SEED_SD = 3.0  # assumed seed-level sd of an effect, % of the baseline mean (one-seed pilots)
HIT_RATE = 0.05  # assumed hit rate when the pilot has learned nothing
RHO = 0.5  # assumed correlation of two conditions' hits on the same user, in the same case
MAX_SEEDS = 100
MAX_USERS = 10_000_000


@dataclass(frozen=True)
class Levels:
    """Variance levels of one user's paired difference, in metric units squared (module doc)."""

    seed: float
    user: float
    resid: float
    base: float  # the baseline mean: relative effects are percent of it
    n_seeds: int = 1  # the design they were estimated from
    n_users: int = 0
    assumed: tuple[str, ...] = ()

    def parts(self, n_seeds: int, n_users: int) -> Parts:
        """The effect's variance parts with ``n_seeds`` seeds on the same ``n_users`` users."""
        seed = ((self.seed + self.resid / n_users) / n_seeds, n_seeds - 1.0)
        user = (self.user / n_users, n_users - 1.0)
        return [p for p in (seed, user) if p[0] > 0] or [seed]

    def absolute(self, percent: float) -> float:
        """``percent`` of the baseline mean, in metric units."""
        return abs(self.base) * percent / 100.0


def _pooled(cols: Sequence[np.ndarray]) -> float:
    """Pooled within-seed variance of the differences (column 0)."""
    ss = sum(((c[:, 0] - c[:, 0].mean()) ** 2).sum() for c in cols)
    dof = sum(len(c) - 1 for c in cols)
    return float(ss / dof) if dof > 0 else 0.0


def levels(
    cols: Sequence[np.ndarray],
    same_users: bool,
    *,
    seed_sd: float = SEED_SD,
    hit_rate: float | None = None,
    rho: float = RHO,
) -> Levels:
    """:class:`Levels` from per-seed (N, 2) columns (difference, baseline), as
    :func:`analysis.verdicts.paired_columns` returns them; assumed where the run cannot tell."""
    n_s, n_u = len(cols), min(len(c) for c in cols)
    base = float(np.mean([c[:, 1].mean() for c in cols]))
    assumed: list[str] = []
    w = _pooled(cols)
    if not base > 0 or not w > 0:
        p = base if base > 0 else hit_rate or HIT_RATE
        w, base = 2 * p * (1 - p) * (1 - rho), p
        assumed.append(
            f"a user's paired variance from hit rate {p:.3g} and correlation "
            f"{rho:g} (the pilot's baseline or differences are all 0)"
        )
    if n_s >= 2 and same_users and n_u >= 2 and not assumed:
        ms_seed, ms_user, ms_res = (float(m[0, 0]) for m in mean_squares(np.stack(cols)))
        seed, user = max(0.0, (ms_seed - ms_res) / n_u), max(0.0, (ms_user - ms_res) / n_s)
        return Levels(seed, user, ms_res, base, n_s, n_u)
    if n_s >= 2:
        d_s = np.array([c[:, 0].mean() for c in cols])
        seed = max(0.0, float(d_s.var(ddof=1)) - w / n_u)
    else:
        seed = (seed_sd / 100 * base) ** 2
        assumed.append(f"seed-level sd of the effect {seed_sd:g}% of the baseline mean (one seed)")
    assumed.append(
        "a user's difference repeats in every seed (conservative: more seeds do not "
        "average it; >= 2 seeds on the same users measure how much does)"
    )
    return Levels(seed, w, 0.0, base, n_s, n_u, tuple(assumed))


def draws(parts: Parts, n: int = N_DRAWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, estimated variances (n, parts), true variances) of ``n`` simulated experiments."""
    rng = np.random.default_rng(0)
    var = np.array([v for v, _ in parts])
    dfs = np.array([df for _, df in parts])
    z = rng.standard_normal(n)
    return z, var * rng.chisquare(dfs, (n, len(parts))) / dfs, var


def _half(var_hat: np.ndarray, parts: Parts, alpha: float) -> np.ndarray:
    """The engine's CI half-width in every draw: each part scaled by its own t quantile."""
    return np.sqrt(var_hat @ np.array([tq(alpha, df) ** 2 for _, df in parts]))


def mde(
    parts: Parts, margin: float, *, alpha: float = ALPHA, power: float = POWER, n_tests: int = 1
) -> float:
    """Smallest true effect (metric units, in the claimed direction) that reads "reproduced" with
    probability ``power`` when the effect's variance has ``parts``, for a claim with ``margin``."""
    z, var_hat, var = draws(parts)
    gate = _half(var_hat, parts, alpha / max(n_tests, 1))  # Holm's strictest p threshold
    bar = np.maximum(margin + _half(var_hat, parts, alpha), gate)
    return float(np.quantile(bar - math.sqrt(var.sum()) * z, power))


def resolution(parts: Parts, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest margin (metric units) a null effect's CI falls inside with probability ``power``."""
    z, var_hat, var = draws(parts)
    spread = math.sqrt(var.sum()) * np.abs(z) + _half(var_hat, parts, alpha)
    return float(np.quantile(spread, power))


Criterion = Callable[[Parts], float]  # a design's parts -> the smallest target it meets


def _fewest(lo: int, hi: int, crit_at: Callable[[int], float], target: float) -> int | None:
    """Smallest ``n`` in ``lo..hi`` with ``crit_at(n) <= target``, by bisection (``crit_at`` falls
    as ``n`` grows); None when even ``hi`` misses."""
    if crit_at(hi) > target:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if crit_at(mid) > target else (lo, mid)
    return lo


def seeds_needed(
    lv: Levels, n_users: int, crit: Criterion, target: float, max_seeds: int = MAX_SEEDS
) -> int | None:
    """Fewest seeds (>= ``MIN_SEEDS``) on ``n_users`` users with ``crit <= target``; None past the
    cap."""
    hi = max(max_seeds, MIN_SEEDS)
    return _fewest(MIN_SEEDS, hi, lambda n_seeds: crit(lv.parts(n_seeds, n_users)), target)


def users_needed(
    lv: Levels, n_seeds: int, crit: Criterion, target: float, max_users: int = MAX_USERS
) -> int | None:
    """Fewest test users, each seen by all ``n_seeds`` seeds, with ``crit <= target``; None past the
    cap."""
    return _fewest(2, max_users, lambda n_users: crit(lv.parts(n_seeds, n_users)), target)


def unlimited_seeds(lv: Levels, n_users: int, crit: Criterion) -> float:
    """``crit`` with unlimited seeds on ``n_users`` users: the best those users allow."""
    return crit(lv.parts(MAX_USERS, n_users))


def unlimited_users(lv: Levels, n_seeds: int, crit: Criterion) -> float:
    """``crit`` with ``n_seeds`` seeds on unlimited users: the best those seeds allow."""
    return crit(lv.parts(n_seeds, MAX_USERS))
