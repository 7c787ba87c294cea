"""Paired statistics across users: bootstrap CIs, Wilcoxon signed-rank, seeds, Holm correction.

The one place statistics live: probes (CIs of their own measurements) and analysis (claims, tables,
figures) both import it.

Every comparison is *paired*: two variants evaluated on the same users, aligned by user id (an error
if the user sets differ). ``diff = mean(treatment) - mean(baseline)``;
``rel = 100 * diff / mean(baseline)`` (percent relative improvement). Bootstrap CIs are percentile
intervals over users resampled with replacement, seeded and vectorised (resamples are processed in
chunks so memory stays bounded).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

N_RESAMPLES = 2000
LEVEL = 0.95
_CHUNK = 4_000_000  # resample-index entries held at once: (chunk, n_users) int64


@dataclass(frozen=True)
class Comparison:
    """One paired comparison of ``treatment`` against ``baseline`` on the same users."""

    metric: str
    treatment: str
    baseline: str
    n: int
    mean_treatment: float
    mean_baseline: float
    diff: float
    diff_lo: float
    diff_hi: float
    rel: float
    rel_lo: float
    rel_hi: float
    p: float
    statistic: float
    n_resamples: int

    def as_dict(self) -> dict:
        return asdict(self)


def align(treatment: pd.Series, baseline: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Two per-user Series (index = user id) as arrays in the same user order.

    Raises:
        ValueError: duplicated users, or the two sides were evaluated on different users.
    """
    for name, s in (("treatment", treatment), ("baseline", baseline)):
        if s.index.has_duplicates:
            raise ValueError(f"{name} has duplicated user ids")
    only_t = treatment.index.difference(baseline.index)
    only_b = baseline.index.difference(treatment.index)
    if len(only_t) or len(only_b):
        raise ValueError(
            f"paired comparison needs the same users: {len(only_t)} only in treatment, "
            f"{len(only_b)} only in baseline"
        )
    b = baseline.reindex(treatment.index)
    return treatment.to_numpy(dtype=float), b.to_numpy(dtype=float)


def _resample_means(columns: Sequence[np.ndarray], n_resamples: int, seed: int) -> list[np.ndarray]:
    """Means of each column over the same bootstrap resamples of rows: ``n_resamples`` values
    each."""
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    out = [np.empty(n_resamples) for _ in columns]
    step = max(1, _CHUNK // max(n, 1))
    for start in range(0, n_resamples, step):
        stop = min(n_resamples, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))  # (chunk, n)
        for col, res in zip(columns, out):
            res[start:stop] = col[idx].mean(axis=1)
    return out


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_mean_ci(
    values: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL
) -> tuple[float, float, float]:
    """Mean and percentile bootstrap CI of ``values`` (NaNs dropped; one value gives a zero-width
    CI)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return math.nan, math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), float(x[0]), float(x[0])
    (means,) = _resample_means([x], n_resamples, seed)
    return (float(x.mean()), *_interval(means, level))


def bootstrap_diff_ci(
    treatment: Sequence[float],
    baseline: Sequence[float],
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """Unpaired: ``mean(treatment) - mean(baseline)`` with each side resampled independently."""
    a = np.asarray(treatment, dtype=float)
    b = np.asarray(baseline, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return math.nan, math.nan, math.nan
    diff = float(a.mean() - b.mean())
    if len(a) == 1 and len(b) == 1:
        return diff, math.nan, math.nan
    (ma,) = _resample_means([a], n_resamples, seed)
    (mb,) = _resample_means([b], n_resamples, seed + 1)
    return (diff, *_interval(ma - mb, level))


def wilcoxon(diff: np.ndarray) -> tuple[float, float]:
    """Wilcoxon signed-rank (statistic, p) of paired differences; all-zero differences give p =
    1."""
    d = np.asarray(diff, dtype=float)
    if not len(d):
        return math.nan, math.nan
    if not np.any(d != 0):
        return 0.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.wilcoxon(d)
    return float(res.statistic), float(res.pvalue)


def compare(
    treatment: pd.Series,
    baseline: pd.Series,
    metric: str = "",
    names: tuple[str, str] = ("", ""),
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Comparison:
    """Paired bootstrap CI of the difference and relative improvement, plus a Wilcoxon p-value."""
    t, b = align(treatment, baseline)
    if not len(t):
        raise ValueError("paired comparison on zero users")
    mean_t, mean_b = float(t.mean()), float(b.mean())
    d = t - b
    diffs, base_means = _resample_means([d, b], n_resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        rels = 100.0 * diffs / base_means
    rel = 100.0 * (mean_t - mean_b) / mean_b if mean_b else math.nan
    rel_lo, rel_hi = _interval(rels, level) if mean_b else (math.nan, math.nan)
    stat, p = wilcoxon(d)
    return Comparison(
        metric,
        names[0],
        names[1],
        len(t),
        mean_t,
        mean_b,
        mean_t - mean_b,
        *_interval(diffs, level),
        rel,
        rel_lo,
        rel_hi,
        p,
        stat,
        n_resamples,
    )


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order (NaNs stay NaN and are not counted)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out


def mean_over_seeds(
    df: pd.DataFrame,
    keys: Sequence[str],
    values: Sequence[str],
    user: str = "user",
    seed: str = "seed",
) -> pd.DataFrame:
    """Average per-user ``values`` over seeds within each ``keys`` group; adds ``n_seeds``."""
    keys = [k for k in keys if k in df.columns and k not in (user, seed)]
    grouped = df.groupby([*keys, user], dropna=False, sort=False)
    out = grouped[list(values)].mean()
    out["n_seeds"] = grouped[seed].nunique() if seed in df.columns else 1
    return out.reset_index()


def seed_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and Student-t CI across seeds (NaN bounds with fewer than two seeds)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return (float(x.mean()) if len(x) else math.nan), math.nan, math.nan
    half = sps.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def ci_table(
    df: pd.DataFrame,
    by: Sequence[str],
    value: str = "value",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Mean and bootstrap CI of ``value`` per group: columns ``*by, mean, lo, hi, n``."""
    rows = []
    for key, group in df.groupby(list(by), dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        mean, lo, hi = bootstrap_mean_ci(group[value], n_resamples, seed, level)
        rows.append(
            {
                **dict(zip(by, key)),
                "mean": mean,
                "lo": lo,
                "hi": hi,
                "n": int(group[value].notna().sum()),
            }
        )
    return pd.DataFrame(rows, columns=[*by, "mean", "lo", "hi", "n"])


def compare_table(
    per_user: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    metrics: Sequence[str],
    label: str = "label",
    user: str = "user",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired comparisons ``(treatment, baseline)`` of conditions named in column ``label``.

    ``per_user`` has one row per (label, user) -- average seeds first (:func:`mean_over_seeds`).
    Adds ``p_holm``: Holm-adjusted over every comparison in the table. Pairs whose users differ get
    an ``error`` instead of numbers.
    """
    rows = []
    for t_name, b_name in pairs:
        t_rows = per_user[per_user[label] == t_name].set_index(user)
        b_rows = per_user[per_user[label] == b_name].set_index(user)
        for metric in metrics:
            try:
                c = compare(
                    t_rows[metric], b_rows[metric], metric, (t_name, b_name), n_resamples, seed
                )
                rows.append({**c.as_dict(), "error": ""})
            except (ValueError, KeyError) as err:
                rows.append(
                    {"metric": metric, "treatment": t_name, "baseline": b_name, "error": str(err)}
                )
    out = pd.DataFrame(rows)
    if len(out) and "p" in out.columns:
        out["p_holm"] = holm(out["p"].to_numpy(dtype=float))
    return out
