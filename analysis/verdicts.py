"""Verdicts on the paper's claims: an effect with an honest interval, a stated margin, Holm across
claims.

Verdicts are ``reproduced``, ``not reproduced``, ``no meaningful difference``, ``inconclusive`` and
``point estimate only``, each with a ``why`` that names what decided it or what is missing. Two
more are set by the claims' gates (:mod:`analysis.claims`) before any interval is read:
``inconclusive (not learned)`` when a compared condition has not learned to recommend, ``no
verdict`` when the comparison is not a fair one (not compute-matched, a control missing, a best-of
choice not made on held-out data).

Rules. A claim states a direction (+1: a gain is claimed, -1: a reduction) and a minimum effect, the
margin ``m`` (default 2% of the baseline mean; an absolute margin when the baseline mean is 0 or
cannot be told from 0). A verdict other than "point estimate only" or "inconclusive" needs >= 3
training seeds (``MIN_SEEDS``). With the 95% CI signed so that the claimed direction is positive: CI
entirely above ``+m`` and Holm-adjusted p < 0.05 -> reproduced; CI entirely below ``-m`` and Holm p
< 0.05 -> not reproduced; CI entirely inside ``[-m, +m]`` -> no meaningful difference; anything else
-> inconclusive. One value per side (no replicates), or fewer than 3 seeds where seeds are the only
replicates (cost), -> point estimate only. Holm runs over the claims that can earn a verdict (a
p-value and >= 3 seeds).

Intervals. No bootstrap percentiles: with 3 seeds those cannot leave [min, max] of the seed effects,
so a null effect whose three seed effects share a sign (1 time in 4) excludes 0. Instead the
variance of an effect is split into independent parts, each estimated with its own degrees of
freedom, and the CI half-width is ``sqrt(sum_i t_i^2 var_i)`` with ``t_i`` the 97.5% Student-t
quantile of part ``i`` (one part: the ordinary t-interval; Satterthwaite pooling of the parts
over-rejected, ~7.8% for 5% nominal, when with 3 seeds the seed part was a few times the user part).
- Paired metrics (:func:`paired_effect`): per seed ``s``, ``d_s`` = mean over users of treatment
  minus baseline (paired by user; seeds paired by seed id). The effect is the mean of the ``d_s``.
  Part 1, ``var(d_s) / S`` with ``S - 1`` df: the seeds' spread, which already holds the user noise
  that differs between seeds. Part 2, only when every seed was evaluated on the same users: the
  user-sampling variance shared by all seeds, ``max(0, MS_user - MS_resid) / (N S)`` from the
  two-way (seed x user) decomposition, with ``N - 1`` df. These are the two levels a hierarchical
  bootstrap (seeds, then users) resamples, estimated by moments. One seed: a t-interval over users
  (training noise not covered).
- Replicates (:func:`replicate_effect`), unpaired: one value per seed (cost) or timed batches per
  seed (latency). Both sides with >= 2 seeds: the seed means, one part per side (``n - 1`` df each).
  One seed: the batches, >= 10 per side (``MIN_BATCHES``); timing noise only, so no verdict -- a CoT
  model's latency depends on the rationale lengths its seed learned, so timing claims need 3 seeds
  too.
- p is two-sided for "effect = 0": the alpha at which the (1 - alpha) interval just reaches 0 (the
  t-test p with one part). Holm-adjusted p-values gate reproduced / not reproduced.
- Relative effects are ``100 * diff / |baseline mean|``; their CI is Fieller's interval for the
  ratio (it carries the baseline's own noise), undefined when the baseline cannot be told from 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special

from pauserec.evaluation import stats

REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced"
NO_DIFFERENCE, INCONCLUSIVE, POINT_ONLY = (
    "no meaningful difference",
    "inconclusive",
    "point estimate only",
)
NOT_LEARNED, NO_VERDICT = "inconclusive (not learned)", "no verdict"  # the claims' gates
VERDICTS = (
    REPRODUCED,
    NOT_REPRODUCED,
    NO_DIFFERENCE,
    INCONCLUSIVE,
    POINT_ONLY,
    NOT_LEARNED,
    NO_VERDICT,
)
MIN_SEEDS = 3  # replicate training seeds a verdict needs
MIN_BATCHES = 10  # timed batches per side for a CI over batches
REL_MARGIN = 2.0  # default minimum effect: percent of the baseline mean
ALPHA = 0.05
LEVEL = 0.95
NAN = math.nan

# independent parts of a variance: (variance, t degrees of freedom)
Parts = list[tuple[float, float]]
Values = Sequence[float] | Mapping[int, float] | Mapping[int, Sequence[float]]


@dataclass(frozen=True)
class Effect:
    """Treatment minus baseline, with a ``LEVEL`` CI; NaN bounds and p when there is no CI.

    ``unit`` names the replicates inside the CI: ``users``, ``batches``, ``seeds`` (each seed one
    value), or anything a caller measured (e.g. ``items``). ``n_units`` is the smallest count per
    seed and side. ``parts`` are the independent parts of ``var(value)`` the CI was built from:
    (variance, t df).
    """

    value: float = NAN  # mean difference, metric units
    lo: float = NAN
    hi: float = NAN
    rel: float = NAN  # 100 * value / |base|, percent
    rel_lo: float = NAN
    rel_hi: float = NAN
    base: float = NAN  # baseline mean
    p: float = NAN  # two-sided, H0: value = 0
    n_seeds: int = 1
    n_units: int = 1
    unit: str = "seeds"
    method: str = "single measurement"
    parts: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Rule:
    """A claim's pre-stated test: direction (+1 gain, -1 reduction) and minimum effect.

    ``margin`` is in percent of the baseline mean when ``relative``, else in metric units;
    ``abs_margin`` (metric units) replaces a relative margin when the baseline mean is 0.
    """

    direction: int
    margin: float = REL_MARGIN
    relative: bool = True
    abs_margin: float | None = None


def _fieller(d: float, b: float, cov: np.ndarray, q: float) -> tuple[float, float]:
    """CI of ``100 * d / |b|``: the r with ``(d - r b)^2 <= q^2 var(d - r b)``; NaN if unbounded."""
    a = b * b - q * q * cov[1, 1]
    if not b or not a > 0:
        return NAN, NAN
    half_b = d * b - q * q * cov[0, 1]
    c = d * d - q * q * cov[0, 0]
    root = math.sqrt(max(half_b * half_b - a * c, 0.0))
    lo, hi = (half_b - root) / a, (half_b + root) / a
    if b < 0:
        lo, hi = -hi, -lo
    return float(100.0 * lo), float(100.0 * hi)


def tq(alpha: float, df: float) -> float:
    """Upper ``alpha / 2`` quantile of Student t with ``df`` degrees of freedom."""
    return float(-special.stdtrit(df, alpha / 2))


def _half(parts: Parts, alpha: float) -> float:
    """Half-width of the (1 - alpha) interval: each variance part scaled by its own t quantile."""
    return math.sqrt(sum(tq(alpha, df) ** 2 * var for var, df in parts))


def _p(value: float, parts: Parts) -> float:
    """Two-sided p: the alpha at which the (1 - alpha) interval just reaches 0."""
    if value == 0:
        return 1.0
    if len(parts) == 1:  # the t-test
        var, df = parts[0]
        return float(2 * special.stdtr(df, -abs(value) / math.sqrt(var))) if var > 0 else 0.0
    gap = lambda alpha: _half(parts, alpha) - abs(value)  # noqa: E731  # decreasing in alpha
    if not gap(1e-100) > 0:
        return 0.0
    return float(optimize.brentq(gap, 1e-100, 1.0, xtol=1e-300, rtol=1e-10))


def _effect(value: float, base: float, cov: np.ndarray | None, parts: Parts, **ids) -> Effect:
    """An Effect from the estimate, the 2x2 covariance of (value, base) and the parts of
    var(value)."""
    rel = 100.0 * value / abs(base) if base and np.isfinite(base) else NAN
    if cov is None or not parts or not all(np.isfinite(var) and df > 0 for var, df in parts):
        return Effect(value, rel=rel, base=base, **ids)
    half = _half(parts, 1 - LEVEL)
    se = math.sqrt(sum(var for var, _ in parts))
    q = half / se if se > 0 else tq(1 - LEVEL, min(df for _, df in parts))
    rel_lo, rel_hi = _fieller(value, base, cov, q)
    return Effect(
        value,
        value - half,
        value + half,
        rel,
        rel_lo,
        rel_hi,
        base,
        _p(value, parts),
        **ids,
        parts=tuple(parts),
    )


def mean_squares(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean squares of the two-way (seed x user) decomposition of ``x`` (S seeds, N users, C
    channels): seeds, users, residual, each a (C, C) matrix (S >= 2, N >= 2)."""
    n_s, n_u, _ = x.shape
    seed_m, user_m, grand = x.mean(1), x.mean(0), x.mean((0, 1))  # (S, C), (N, C), (C,)
    resid = x - seed_m[:, None] - user_m[None] + grand  # (S, N, C)
    ms_seed = n_u * np.atleast_2d(np.cov(seed_m.T))
    ms_user = n_s * np.atleast_2d(np.cov(user_m.T))
    return ms_seed, ms_user, np.einsum("sni,snj->ij", resid, resid) / ((n_s - 1) * (n_u - 1))


def _crossed(x: np.ndarray) -> tuple[np.ndarray, Parts]:
    """Covariance of the grand mean of ``x`` (S seeds, N users, 2: diff, base), seeds crossed with
    users, and the parts of its first variance: seed-level spread, user sampling shared by all
    seeds."""
    n_s, n_u, _ = x.shape
    ms_seed, ms_user, ms_res = mean_squares(x)
    vals, vecs = np.linalg.eigh((ms_user - ms_res) / (n_s * n_u))
    shared = (vecs * np.clip(vals, 0, None)) @ vecs.T  # clipped to positive semi-definite
    parts = [(ms_seed[0, 0] / (n_s * n_u), n_s - 1.0), (shared[0, 0], n_u - 1.0)]
    return ms_seed / (n_s * n_u) + shared, [part for part in parts if part[0] > 0] or parts[:1]


def _seed_pairs(t_seeds: Sequence, b_seeds: Sequence) -> tuple[list[tuple], str]:
    """(treatment seed, baseline seed) pairs: the shared seed ids, else by position; and a note."""
    common = sorted(set(t_seeds) & set(b_seeds))
    if not common:
        return list(
            zip(sorted(t_seeds), sorted(b_seeds))
        ), "; seeds paired by position (no shared ids)"
    alone = sorted(set(t_seeds) ^ set(b_seeds))
    return [(s, s) for s in common], f"; seeds on one side only, ignored: {alone}" if alone else ""


def paired_columns(
    per_user: pd.DataFrame,
    treat: str,
    base: str,
    metric: str,
    *,
    label: str = "label",
    seed: str = "seed",
    user: str = "user",
) -> tuple[list[np.ndarray], bool, str]:
    """Per paired seed, the (N, 2) columns (treatment - baseline, baseline), paired by user; whether
    every seed has the same users; and a note on how seeds were paired. Rows: (label, seed, user).

    Raises:
        ValueError: a condition is absent, a seed's two sides have different or duplicated users, or
            a metric value is missing.
    """
    frame = per_user if seed in per_user.columns else per_user.assign(**{seed: 0})
    sides = {}
    for name in (treat, base):
        rows = frame.loc[frame[label] == name, [seed, user, metric]]
        if not len(rows):
            raise ValueError(f"no per-user rows for {name!r}")
        sides[name] = {s: g.set_index(user)[metric].sort_index() for s, g in rows.groupby(seed)}
    pairs, note = _seed_pairs(list(sides[treat]), list(sides[base]))
    users, cols = [], []
    for s_t, s_b in pairs:
        t_rows, b_rows = sides[treat][s_t], sides[base][s_b]
        t, b = stats.align(t_rows, b_rows)
        if np.isnan(t).any() or np.isnan(b).any():
            raise ValueError(f"{metric} is missing for some users (seed {s_t})")
        users.append(t_rows.index)
        cols.append(np.stack([t - b, b], axis=1))  # (N, 2): diff, base
    return cols, all(u.equals(users[0]) for u in users), note


def paired_effect(
    per_user: pd.DataFrame, treat: str, base: str, metric: str, **columns: str
) -> Effect:
    """Paired effect of condition ``treat`` over ``base`` in ``metric``: one row per (label, seed,
    user); ``columns`` rename those (``label=``, ``seed=``, ``user=``, as :func:`paired_columns`).

    Raises:
        ValueError: as :func:`paired_columns`.
    """
    cols, same_users, note = paired_columns(per_user, treat, base, metric, **columns)
    n_s, n_u = len(cols), min(len(c) for c in cols)
    value, base_mean = (float(np.mean([c[:, i].mean() for c in cols])) for i in (0, 1))
    ids = {"n_seeds": n_s, "n_units": n_u, "unit": "users"}
    if n_s == 1:
        cov = np.cov(cols[0].T) / n_u if n_u > 1 else None
        parts = [(NAN if cov is None else cov[0, 0], n_u - 1.0)]
        method = f"one seed: t over {n_u:,} paired users (training variance not covered)"
    elif same_users and n_u > 1:
        cov, parts = _crossed(np.stack(cols))
        method = (
            f"{n_s} seeds x {n_u:,} paired users (the same in every seed): t({n_s - 1}) on the "
            f"seed spread + t({n_u - 1}) on user sampling shared by the seeds"
        )
    else:
        cov = np.cov(np.array([c.mean(0) for c in cols]).T) / n_s
        parts = [(cov[0, 0], n_s - 1.0)]
        method = f"t({n_s - 1}) over {n_s} seeds (users paired within seed, differ across seeds)"
    return _effect(value, base_mean, cov, parts, method=method + note, **ids)


def _per_seed(values: Values) -> list[np.ndarray]:
    items = [values[k] for k in sorted(values)] if isinstance(values, Mapping) else list(values)
    arrays = [np.atleast_1d(np.asarray(v, dtype=float)) for v in items]
    arrays = [a[np.isfinite(a)] for a in arrays]
    return [a for a in arrays if len(a)]


def _welch(x: np.ndarray, y: np.ndarray, **ids) -> Effect:
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    cov = np.array([[vx + vy, -vy], [-vy, vy]])  # of (mean x - mean y, mean y)
    parts = [(vx, len(x) - 1.0), (vy, len(y) - 1.0)]
    return _effect(float(x.mean() - y.mean()), float(y.mean()), cov, parts, **ids)


def replicate_effect(treat: Values, base: Values) -> Effect:
    """Effect from replicate measurements, unpaired: ``{seed: value}`` or a sequence (one value per
    seed: cost), or ``{seed: [per-batch values]}`` (latency: ms per sample of each timed batch)."""
    t, b = _per_seed(treat), _per_seed(base)
    if not t or not b:
        return Effect()
    n_s = min(len(t), len(b))
    n_units = min(len(a) for a in t + b)
    t_means, b_means = np.array([a.mean() for a in t]), np.array([a.mean() for a in b])
    value, base_mean = float(t_means.mean() - b_means.mean()), float(b_means.mean())
    if len(t) >= 2 and len(b) >= 2:
        per = f" ({n_units}+ batches each)" if n_units > 1 else ""
        return _welch(
            t_means,
            b_means,
            n_seeds=n_s,
            n_units=n_units,
            unit="seeds",
            method=f"t over {len(t)} vs {len(b)} seed means{per}, unpaired",
        )
    xt, xb = np.concatenate(t), np.concatenate(b)
    if min(len(xt), len(xb)) >= MIN_BATCHES:
        return _welch(
            xt,
            xb,
            n_seeds=n_s,
            n_units=min(len(xt), len(xb)),
            unit="batches",
            method=f"one seed: t over {len(xt)} vs {len(xb)} timed batches (timing noise only)",
        )
    what = "timed batches" if max(len(xt), len(xb)) > 1 else "value"
    return _effect(
        value,
        base_mean,
        None,
        [],
        n_seeds=n_s,
        n_units=min(len(xt), len(xb)),
        unit="seeds",
        method=f"one seed, {len(xt)} vs {len(xb)} {what} (a CI needs "
        f">= 2 seeds or >= {MIN_BATCHES} batches per side)",
    )


def _fmt(lo: float, hi: float, relative: bool) -> str:
    return f"[{lo:+.2f}%, {hi:+.2f}%]" if relative else f"[{lo:+.4g}, {hi:+.4g}]"


def _scale(effect: Effect, rule: Rule) -> tuple[float, float, float, bool, str] | str:
    """(lo, hi, margin, relative, note) the verdict is read from, or the reason there is none."""
    if not rule.relative:
        return effect.lo, effect.hi, rule.margin, False, ""
    if np.isfinite(effect.rel_lo) and np.isfinite(effect.rel_hi):
        return effect.rel_lo, effect.rel_hi, rule.margin, True, ""
    why = "baseline mean is 0" if not effect.base else "baseline mean not distinguishable from 0"
    if rule.abs_margin is None:
        return f"relative change undefined ({why}) and no absolute margin stated"
    return effect.lo, effect.hi, rule.abs_margin, False, f"; {why}: absolute margin used"


def decide(
    effect: Effect,
    rule: Rule,
    *,
    p: float | None = None,
    n_tests: int = 1,
    min_seeds: int = MIN_SEEDS,
    alpha: float = ALPHA,
) -> tuple[str, str]:
    """(verdict, why) of one claim; ``p`` replaces ``effect.p`` (the Holm-adjusted one, of
    ``n_tests``)."""
    if rule.direction not in (1, -1) or rule.margin < 0:
        raise ValueError(f"direction must be +1 or -1 and margin >= 0 (got {rule})")
    if not np.isfinite(effect.value):
        return INCONCLUSIVE, "no data"
    if not (np.isfinite(effect.lo) and np.isfinite(effect.hi)):
        return POINT_ONLY, f"no CI: {effect.method}"
    if effect.n_seeds < min_seeds:
        why = f"{effect.n_seeds} seed(s), a verdict needs >= {min_seeds}; {effect.method}"
        return (POINT_ONLY if effect.unit == "seeds" else INCONCLUSIVE), why
    scale = _scale(effect, rule)
    if isinstance(scale, str):
        return INCONCLUSIVE, scale
    lo, hi, m, relative, note = scale
    a, b = sorted((rule.direction * lo, rule.direction * hi))  # claimed direction positive
    ci = f"95% CI {_fmt(lo, hi, relative)}"
    margin = f"{m:g}%" if relative else f"{m:.4g}"
    p = effect.p if p is None else p
    p_text = f"p = {p:.3g}" + (f" (Holm over {n_tests} claims)" if n_tests > 1 else "")
    if a > m or b < -m:
        side = "beyond the margin on the claimed side" if a > m else "meaningfully the other way"
        if p >= alpha:
            return (
                INCONCLUSIVE,
                f"{ci} lies {side} (margin {margin}) but {p_text} >= {alpha:g}{note}",
            )
        return (
            REPRODUCED if a > m else NOT_REPRODUCED
        ), f"{ci} lies {side} (margin {margin}); {p_text}{note}"
    if -m <= a and b <= m:
        return NO_DIFFERENCE, f"{ci} lies inside +/-{margin}{note}"
    ruled_out = "; the claimed effect is ruled out" if b <= m else ""
    return INCONCLUSIVE, f"{ci} overlaps the margin +/-{margin}{ruled_out}{note}"


def holm_verdicts(
    rows: Sequence[tuple[Effect, Rule]], *, min_seeds: int = MIN_SEEDS, alpha: float = ALPHA
) -> list[tuple[str, str, float]]:
    """(verdict, why, Holm-adjusted p) per claim, Holm over the claims that can earn a verdict
    (a p-value and >= ``min_seeds`` seeds); the others keep their own p."""
    eligible = [np.isfinite(e.p) and e.n_seeds >= min_seeds for e, _ in rows]
    adjusted = stats.holm([e.p if ok else NAN for (e, _), ok in zip(rows, eligible)])
    n_tests = int(sum(eligible))
    out = []
    for (effect, rule), ok, p_holm in zip(rows, eligible, adjusted):
        p = float(p_holm) if ok else effect.p
        out.append(
            (*decide(effect, rule, p=p, n_tests=n_tests, min_seeds=min_seeds, alpha=alpha), p)
        )
    return out
