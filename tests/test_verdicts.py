"""analysis.verdicts: hand-computed intervals, the decision table, Holm, and planted-effect
simulations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.special import ndtr

from analysis import verdicts as v

T975 = {1: 12.706204736, 2: 4.302652730}  # Student t 97.5% quantiles, from tables


def frame(values: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    """Per-user rows from {(label, seed): [value of user 0, user 1, ...]}."""
    return pd.concat(
        [
            pd.DataFrame({"label": lab, "seed": s, "user": np.arange(len(x)), "m": x})
            for (lab, s), x in values.items()
        ],
        ignore_index=True,
    )


def simulate(
    rng: np.random.Generator,
    n_users: int = 22_000,
    n_seeds: int = 3,
    effect: float = 0.0,
    seed_sd: float = 0.03,
    rho: float = 0.6,
    kappa: float = 0.0,
) -> pd.DataFrame:
    """Per-user hits (0/1) of ``pause`` and ``plain`` on the same users in every seed.

    Users differ in difficulty (hit rate ~ Beta(1, 9), mean 0.1); ``pause`` has ``1 + effect`` times
    the rate. Each (condition, seed) multiplies its rates by ``exp(N(0, seed_sd))`` (training
    noise). Hits come from latent normals: ``rho`` correlates pause with plain on a user within a
    seed, ``kappa`` is the share of a user's latent draw that repeats in every seed (a persistent
    user effect).
    """
    p_user = rng.beta(1.0, 9.0, n_users)
    persistent = rng.standard_normal((2, n_users))
    parts = []
    for s in range(n_seeds):
        z = math.sqrt(kappa) * persistent + math.sqrt(1 - kappa) * rng.standard_normal((2, n_users))
        z_pause = rho * z[1] + math.sqrt(1 - rho**2) * z[0]
        for lab, latent, scale in (("pause", z_pause, 1 + effect), ("plain", z[1], 1.0)):
            rate = np.clip(p_user * scale * math.exp(rng.normal(0, seed_sd)), 0, 1)
            parts.append(
                pd.DataFrame(
                    {
                        "label": lab,
                        "seed": s,
                        "user": np.arange(n_users),
                        "recall@10": (ndtr(latent) < rate).astype(float),
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


def sim_verdict(rng: np.random.Generator, **kw) -> tuple[v.Effect, str, str]:
    effect = v.paired_effect(simulate(rng, **kw), "pause", "plain", "recall@10")
    return (effect, *v.decide(effect, v.Rule(+1)))


# --- interval math by hand
# ---------------------------------------------------------------------------


def test_replicates_over_seeds_by_hand():
    """Seeds 12, 13, 14 against 10, 11, 12: each side's variance of the mean is 1/3, with 2 df."""
    e = v.replicate_effect({0: 12.0, 1: 13.0, 2: 14.0}, [10.0, 11.0, 12.0])
    se = math.sqrt(1 / 3 + 1 / 3)
    assert (e.value, e.base, e.n_seeds, e.unit) == (2.0, 11.0, 3, "seeds")
    assert (e.lo, e.hi) == pytest.approx((2 - T975[2] * se, 2 + T975[2] * se))
    assert e.p == pytest.approx(2 * sps.t.sf(2 / se, 2))  # both parts have 2 df: a t(2) test
    # Fieller: the relative bounds r solve (d - r b)^2 = t^2 var(d - r b), var(d - r b) = (1 +
    # (1+r)^2) / 3
    assert e.rel == pytest.approx(200 / 11) and e.rel_lo < 200 / 11 < e.rel_hi
    for r in (e.rel_lo / 100, e.rel_hi / 100):
        assert (2 - 11 * r) ** 2 == pytest.approx(T975[2] ** 2 * (1 + (1 + r) ** 2) / 3)
    # unequal parts: 3 seeds (var of mean 1/3, 2 df) against 2 seeds 1, 3 (var of mean 1, 1 df)
    e = v.replicate_effect([3.0, 4.0, 5.0], [1.0, 3.0])
    half = math.sqrt(T975[2] ** 2 / 3 + T975[1] ** 2 * 1)
    assert (e.value, e.lo, e.hi) == pytest.approx((2.0, 2 - half, 2 + half))
    assert v.decide(e, v.Rule(+1))[0] == v.POINT_ONLY  # 2 seeds


def test_seed_level_t_by_hand():
    """Every user of seed s improves by d_s = .01, .02, .03 on a constant baseline 0.5: the interval
    is the one-sample t over the three seed effects (2 df), and the relative one is it over 0.5."""
    e = v.paired_effect(
        frame(
            {
                **{("b", s): [0.5] * 4 for s in range(3)},
                **{("a", s): [0.5 + d] * 4 for s, d in enumerate((0.01, 0.02, 0.03))},
            }
        ),
        "a",
        "b",
        "m",
    )
    half = T975[2] * 0.01 / math.sqrt(3)
    assert e.value == pytest.approx(0.02)
    assert (e.lo, e.hi) == pytest.approx((0.02 - half, 0.02 + half))
    assert e.p == pytest.approx(sps.ttest_1samp([0.01, 0.02, 0.03], 0).pvalue)
    assert (e.rel, e.rel_lo, e.rel_hi) == pytest.approx(
        (4.0, 200 * (0.02 - half), 200 * (0.02 + half))
    )
    assert e.lo < 0 < e.hi  # three positive seeds are not enough to exclude 0 here


def test_identical_seeds_reduce_to_the_user_level_t():
    """Three copies of one evaluation: the seeds add nothing, so the interval is the t over users
    (a seed-only interval would have zero width -- the user noise is shared by all seeds)."""
    rng = np.random.default_rng(0)
    a, b = rng.random(30), rng.random(30)
    e = v.paired_effect(
        frame({**{("a", s): a for s in range(3)}, **{("b", s): b for s in range(3)}}), "a", "b", "m"
    )
    ref = sps.ttest_1samp(a - b, 0)
    assert e.p == pytest.approx(ref.pvalue)
    assert (e.lo, e.hi) == pytest.approx(tuple(ref.confidence_interval()))


def test_two_variance_parts_by_hand():
    """3 seeds x 2 users, differences [[1, 3], [2, 6], [3, 3]] on a constant baseline 10.
    Seed means 2, 4, 3 (var 1): part 1 = N var / (N S) = 1/3, 2 df. User means 2, 4 (var 2):
    MS_user = 3 * 2 = 6; residuals [[0, 0], [-1, 1], [1, -1]]: MS_res = 4 / (2 * 1) = 2;
    part 2 = (6 - 2) / 6 = 2/3, 1 df. Half-width sqrt(t2^2 / 3 + t1^2 * 2 / 3)."""
    diffs = np.array([[1.0, 3], [2, 6], [3, 3]])
    e = v.paired_effect(
        frame(
            {
                **{("a", s): 10 + diffs[s] for s in range(3)},
                **{("b", s): [10.0, 10.0] for s in range(3)},
            }
        ),
        "a",
        "b",
        "m",
    )
    half = math.sqrt(T975[2] ** 2 / 3 + T975[1] ** 2 * 2 / 3)
    assert (e.value, e.lo, e.hi) == pytest.approx((3.0, 3 - half, 3 + half))
    assert (e.rel_lo, e.rel_hi) == pytest.approx((10 * (3 - half), 10 * (3 + half)))
    # p is the alpha whose (1 - alpha) interval just reaches 0
    t2, t1 = sps.t.isf(e.p / 2, 2), sps.t.isf(e.p / 2, 1)
    assert math.sqrt(t2**2 / 3 + t1**2 * 2 / 3) == pytest.approx(3.0)


def test_one_seed_is_a_user_level_t_and_earns_no_verdict():
    rng = np.random.default_rng(1)
    b = rng.random(200)
    a = b + 0.2 + rng.normal(0, 0.05, 200)
    e = v.paired_effect(frame({("a", 7): a, ("b", 7): b}), "a", "b", "m")
    ref = sps.ttest_rel(a, b)
    assert (e.n_seeds, e.n_units, e.unit) == (1, 200, "users")
    assert (e.lo, e.hi, e.p) == pytest.approx((*ref.confidence_interval(), ref.pvalue))
    assert e.rel_lo > 30  # a huge effect ...
    verdict, why = v.decide(e, v.Rule(+1))
    assert verdict == v.INCONCLUSIVE and "1 seed(s)" in why  # ... but one seed


def test_pairing_checks():
    with pytest.raises(ValueError, match="same users"):
        v.paired_effect(frame({("a", 0): [1, 2, 3], ("b", 0): [1, 2]}), "a", "b", "m")
    with pytest.raises(ValueError, match="no per-user rows"):
        v.paired_effect(frame({("a", 0): [1, 2]}), "a", "b", "m")
    shuffled = frame({("a", 0): [1.0, 2, 4], ("b", 0): [0.0, 1, 1]}).sample(frac=1, random_state=0)
    assert v.paired_effect(shuffled, "a", "b", "m").value == pytest.approx(5 / 3)  # by user id
    extra = v.paired_effect(
        frame({("a", 0): [1.0, 2], ("a", 1): [9.0, 9], ("b", 0): [0.0, 0]}), "a", "b", "m"
    )
    assert (
        extra.value == 1.5 and extra.n_seeds == 1 and "one side only, ignored: [1]" in extra.method
    )
    other = v.paired_effect(frame({("a", 3): [1.0, 2], ("b", 4): [0.0, 0]}), "a", "b", "m")
    assert other.value == 1.5 and "paired by position" in other.method


def test_zero_baseline_falls_back_to_an_absolute_margin():
    e = v.paired_effect(
        frame(
            {
                **{("a", s): [0.3 + 0.01 * s, 0.3] for s in range(3)},
                **{("b", s): [0.0, 0.0] for s in range(3)},
            }
        ),
        "a",
        "b",
        "m",
    )
    assert e.base == 0 and math.isnan(e.rel) and e.lo > 0.2
    verdict, why = v.decide(e, v.Rule(+1))
    assert verdict == v.INCONCLUSIVE and "no absolute margin" in why
    verdict, why = v.decide(e, v.Rule(+1, abs_margin=0.05))
    assert verdict == v.REPRODUCED and "baseline mean is 0: absolute margin used" in why
    noisy = v.replicate_effect([1.0, 2.0, 3.0], [-1.0, 0.0, 1.2])  # baseline cannot be told from 0
    assert math.isnan(noisy.rel_lo) and np.isfinite(noisy.lo)
    assert "not distinguishable from 0" in v.decide(noisy, v.Rule(+1, abs_margin=0.1))[1]


# --- the decision table
# ------------------------------------------------------------------------------


def rel_effect(
    lo: float, hi: float, p: float = 0.001, n_seeds: int = 3, unit: str = "users"
) -> v.Effect:
    return v.Effect(
        (lo + hi) / 200,
        lo / 100,
        hi / 100,
        (lo + hi) / 2,
        lo,
        hi,
        1.0,
        p,
        n_seeds,
        1000,
        unit,
        "hand-made",
    )


@pytest.mark.parametrize(
    "lo, hi, direction, expected",
    [
        (3, 7, +1, v.REPRODUCED),
        (-7, -3, -1, v.REPRODUCED),
        (-7, -3, +1, v.NOT_REPRODUCED),
        (3, 7, -1, v.NOT_REPRODUCED),
        (-1.5, 1.5, +1, v.NO_DIFFERENCE),
        (-2, 2, -1, v.NO_DIFFERENCE),  # inside, bounds included
        (2, 7, +1, v.INCONCLUSIVE),  # touching the margin is not beyond it
        (1, 3, +1, v.INCONCLUSIVE),
        (-3, 1, +1, v.INCONCLUSIVE),
        (-9, 9, +1, v.INCONCLUSIVE),
    ],
)
def test_decision_table(lo, hi, direction, expected):
    assert v.decide(rel_effect(lo, hi), v.Rule(direction))[0] == expected


def test_what_each_verdict_says_and_needs():
    assert v.decide(rel_effect(3, 7, p=0.2), v.Rule(+1))[0] == v.INCONCLUSIVE  # p gate
    assert "ruled out" in v.decide(rel_effect(-3, 1), v.Rule(+1))[1]
    assert v.decide(rel_effect(3, 7), v.Rule(+1, margin=10))[0] == v.NO_DIFFERENCE
    assert v.decide(rel_effect(3, 7), v.Rule(+1, margin=0.02, relative=False))[0] == v.REPRODUCED
    assert v.decide(rel_effect(3, 7, n_seeds=2), v.Rule(+1))[0] == v.INCONCLUSIVE
    assert v.decide(rel_effect(3, 7, n_seeds=2, unit="seeds"), v.Rule(+1))[0] == v.POINT_ONLY
    assert v.decide(rel_effect(3, 7, n_seeds=2), v.Rule(+1), min_seeds=2)[0] == v.REPRODUCED
    assert v.decide(v.Effect(value=-0.00004), v.Rule(+1)) == (
        v.POINT_ONLY,
        "no CI: single measurement",
    )
    assert v.decide(v.Effect(), v.Rule(+1)) == (v.INCONCLUSIVE, "no data")
    with pytest.raises(ValueError):
        v.decide(rel_effect(3, 7), v.Rule(0))
    verdict, why = v.decide(rel_effect(3, 7), v.Rule(+1))
    assert "[+3.00%, +7.00%]" in why and "margin 2%" in why


def test_holm_turns_a_marginal_claim_inconclusive():
    rows = [(rel_effect(3, 7, p=p), v.Rule(+1)) for p in (0.001, 0.03, 0.2, 0.04)]
    # cannot earn a verdict: not counted
    rows.append((rel_effect(30, 70, p=1e-9, n_seeds=1), v.Rule(+1)))
    assert v.decide(*rows[1])[0] == v.REPRODUCED  # alone, p = .03 passes
    out = v.holm_verdicts(rows)
    # Holm over 4: .001*4 = .004; .03*3 = .09; .04*2 = .08 -> .09 (monotone); .2*1 -> .2
    assert [p for *_, p in out] == pytest.approx([0.004, 0.09, 0.2, 0.09, 1e-9])
    assert [verdict for verdict, *_ in out] == [
        v.REPRODUCED,
        v.INCONCLUSIVE,
        v.INCONCLUSIVE,
        v.INCONCLUSIVE,
        v.INCONCLUSIVE,
    ]
    assert "Holm over 4 claims" in out[1][1]


# --- cost and latency
# --------------------------------------------------------------------------------


def test_cost_needs_three_seeds():
    assert v.decide(v.replicate_effect([10.0], [30.0]), v.Rule(-1))[0] == v.POINT_ONLY
    two = v.replicate_effect({0: 10.0, 1: 11.0}, {0: 30.0, 1: 29.0})
    assert np.isfinite(two.lo) and v.decide(two, v.Rule(-1))[0] == v.POINT_ONLY
    three = v.replicate_effect({0: 10.0, 1: 11.0, 2: 10.5}, {0: 30.0, 1: 29.0, 2: 31.0})
    assert three.rel == pytest.approx(-65.0) and three.rel_hi < -50
    assert v.decide(three, v.Rule(-1))[0] == v.REPRODUCED


def test_latency_from_timed_batches():
    rng = np.random.default_rng(2)

    def batches(ms, n):
        return list(rng.normal(ms, 0.05 * ms, n))

    one = v.replicate_effect({0: batches(29, 12)}, {0: batches(100, 12)})
    assert (one.unit, one.n_units, one.n_seeds) == ("batches", 12, 1) and one.rel_hi < -60
    verdict, why = v.decide(one, v.Rule(-1))
    assert verdict == v.INCONCLUSIVE and "one seed" in why and "timing noise only" in why
    few = v.replicate_effect({0: batches(29, 5)}, {0: batches(100, 5)})
    assert v.decide(few, v.Rule(-1))[0] == v.POINT_ONLY and "10 batches" in few.method
    three = v.replicate_effect(
        {s: batches(29, 12) for s in range(3)}, {s: batches(100 + 5 * s, 12) for s in range(3)}
    )
    assert three.n_seeds == 3 and v.decide(three, v.Rule(-1))[0] == v.REPRODUCED


def test_cost_null_rarely_clears_zero():
    """Welch over 3 vs 3 seeds under a null: the CI excludes 0 on one side ~2.5% of the time."""
    rng = np.random.default_rng(3)
    hits = [
        v.replicate_effect(rng.normal(10, 1, 3), rng.normal(10, 2, 3)).hi < 0 for _ in range(1000)
    ]
    assert np.mean(hits) <= 0.04


# --- planted effects
# ---------------------------------------------------------------------------------


def naive_percentile_lo(df: pd.DataFrame, rng: np.random.Generator) -> float:
    """Today's kind of interval: percentile bootstrap over the seeds' paired effects (2.5%
    bound)."""
    wide = df.pivot_table(index=["seed", "user"], columns="label", values="recall@10")
    d = (wide["pause"] - wide["plain"]).groupby(level="seed").mean().to_numpy()
    return float(np.quantile(d[rng.integers(0, len(d), (2000, len(d)))].mean(1), 0.025))


def seed_effects(df: pd.DataFrame) -> np.ndarray:
    """Per-seed paired effects d_s (the simulations evaluate the same users on both sides)."""
    means = df.groupby(["seed", "label"])["recall@10"].mean().unstack()
    return (means["pause"] - means["plain"]).to_numpy()


def percentile_ci(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A percentile bootstrap over the seed effects: it cannot leave [min, max] of three seeds."""
    return np.quantile(d[rng.integers(0, len(d), (2000, len(d)))].mean(1), [0.025, 0.975])


def seed_t_ci(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A t-interval over the seed effects alone: blind to user noise shared by all seeds."""
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return np.array([d.mean() - half, d.mean() + half])


@pytest.mark.parametrize(
    "regime, rival",
    [
        ({"seed_sd": 0.03}, percentile_ci),  # training noise dominates
        (
            {"seed_sd": 0.0, "kappa": 0.97, "rho": 0.3},
            seed_t_ci,
        ),  # users' noise repeats in every seed
    ],
)
def test_null_effect_is_not_reproduced(regime, rival):
    """No effect, 22,000 users x 3 seeds, 40 simulations: at most one false "reproduced", and the
    95% CI excludes 0 at most 4 times (2 expected); an interval blind to the regime's main noise
    source excludes 0 far more often -- so the check can fail."""
    ours = excludes_0 = rivals = 0
    for i in range(40):
        rng = np.random.default_rng(100 + i)
        df = simulate(rng, **regime)
        effect = v.paired_effect(df, "pause", "plain", "recall@10")
        ours += v.decide(effect, v.Rule(+1))[0] == v.REPRODUCED
        excludes_0 += not effect.lo <= 0 <= effect.hi
        lo, hi = rival(seed_effects(df), rng)
        rivals += not lo <= 0 <= hi
    assert ours <= 1 and excludes_0 <= 4
    assert rivals >= 6


@pytest.mark.parametrize("regime", [{"seed_sd": 0.05}, {"seed_sd": 0.0, "kappa": 0.97, "rho": 0.3}])
def test_null_interval_covers_zero(regime):
    """Two-sided: the 95% CI covers the true (zero) effect in >= 92% of 100 smaller simulations."""
    covered = []
    for i in range(100):
        e = v.paired_effect(
            simulate(np.random.default_rng(500 + i), n_users=500, **regime),
            "pause",
            "plain",
            "recall@10",
        )
        covered.append(e.lo <= 0 <= e.hi)
        assert (e.p >= 0.05) == covered[-1]  # p and CI agree
    assert np.mean(covered) >= 0.92


def test_real_effect_is_reproduced():
    """+10% (hit rate ~0.1 vs 0.11), 22,000 users: detected in most simulations."""
    three = [
        sim_verdict(np.random.default_rng(200 + i), effect=0.1, seed_sd=0.005, rho=0.9)[1]
        for i in range(10)
    ]
    five = [
        sim_verdict(np.random.default_rng(300 + i), effect=0.1, seed_sd=0.02, n_seeds=5)[1]
        for i in range(10)
    ]
    assert three.count(v.REPRODUCED) >= 8 and five.count(v.REPRODUCED) >= 8


def test_real_effect_with_one_seed_earns_no_verdict():
    effect, verdict, why = sim_verdict(np.random.default_rng(4), effect=0.1, seed_sd=0.0, n_seeds=1)
    assert effect.rel_lo > v.REL_MARGIN  # the user-level CI alone would clear the margin
    assert verdict == v.INCONCLUSIVE and "1 seed(s)" in why


def test_effect_inside_the_margin_is_no_meaningful_difference():
    effect, verdict, why = sim_verdict(
        np.random.default_rng(5), effect=0.005, seed_sd=0.003, rho=0.95, n_seeds=10
    )
    assert -v.REL_MARGIN <= effect.rel_lo < 0.5 < effect.rel_hi <= v.REL_MARGIN
    assert verdict == v.NO_DIFFERENCE, why


def test_meaningful_effect_the_other_way_is_not_reproduced():
    effect, verdict, why = sim_verdict(
        np.random.default_rng(6), effect=-0.15, seed_sd=0.01, n_seeds=5
    )
    assert effect.rel_hi < -v.REL_MARGIN and verdict == v.NOT_REPRODUCED, why
