"""analysis.power: known answers (the t test's power, normal limits, variance levels recovered
from a planted design), and simulated experiments through the public verdict functions: at the
planner's sample size a true effect reads "reproduced" in >= 80% of 200+ experiments, a null in
<= 5%."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from scipy import stats as sps

from analysis import power, verdicts

Z975, Z80, Z90 = sps.norm.isf(0.025), sps.norm.ppf(0.8), sps.norm.ppf(0.9)


# --- known answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("df", [2, 4, 9, 29])
def test_one_part_mde_is_the_t_tests_power(df):
    """One variance part with ``df`` df (seeds - 1): the estimate over its estimated se is a
    noncentral t, so the MDE is the margin plus the noncentrality that gives 80% power -- exact,
    not (t + t) se."""
    se, margin = 0.01, 0.02
    crit = sps.t.isf(0.025, df)
    ncp = optimize.brentq(lambda d: sps.nct.sf(crit, df, d) - 0.8, 0, 50)
    assert power.mde([(se**2, df)], margin) == pytest.approx(margin + ncp * se, rel=0.01)


def test_large_samples_reach_the_normal_formulas():
    """Many df: MDE = m + (z_.975 + z_.8) se; the margin a null resolves = (z_.975 + z_.9) se; with
    n tests and no margin the p gate decides: (z_{1 - .025/n} + z_.8) se."""
    se, parts = 0.01, [(0.6e-4, 1e6), (0.4e-4, 1e6)]  # two parts, total variance se^2
    assert power.mde(parts, 0.02) == pytest.approx(0.02 + (Z975 + Z80) * se, rel=0.01)
    assert power.resolution(parts) == pytest.approx((Z975 + Z90) * se, rel=0.01)
    gate = sps.norm.isf(0.025 / 8) + Z80
    assert power.mde(parts, 0.0, n_tests=8) == pytest.approx(gate * se, rel=0.01)
    assert power.mde(parts, 0.02, n_tests=8) == pytest.approx(0.02 + (Z975 + Z80) * se, rel=0.01)


def crossed(
    rng: np.random.Generator,
    lv: power.Levels,
    n_seeds: int,
    n_users: int,
    effect: float = 0.0,
    reps: int = 1,
) -> np.ndarray:
    """(reps, S, N, 2) paired columns (difference, baseline) drawn from ``lv``:
    d = effect + a_s + b_u + e_su; the baseline is ``lv.base`` times 1 + a persistent user part +
    noise (each sd 0.2)."""
    shape = (reps, n_seeds, n_users)
    d = (
        effect
        + math.sqrt(lv.seed) * rng.standard_normal((reps, n_seeds, 1))
        + math.sqrt(lv.user) * rng.standard_normal((reps, 1, n_users))
        + math.sqrt(lv.resid) * rng.standard_normal(shape)
    )
    persistent = 0.2 * rng.standard_normal((reps, 1, n_users))
    b = lv.base * (1 + persistent + 0.2 * rng.standard_normal(shape))
    return np.stack([d, b], axis=-1)


TRUE = power.Levels(seed=0.003**2, user=0.02**2, resid=0.025**2, base=0.1)  # sd 3% of base per seed
QUIET = power.Levels(seed=0.001**2, user=0.015**2, resid=0.02**2, base=0.1)  # a 2% margin in reach


def test_levels_are_recovered_from_a_crossed_design():
    """Within 3 standard errors of each (a variance from k df has relative sd sqrt(2 / k))."""
    cols = crossed(np.random.default_rng(0), TRUE, 200, 1000)[0]
    lv = power.levels(list(cols), same_users=True)
    assert (lv.n_seeds, lv.n_users, lv.assumed) == (200, 1000, ())
    assert lv.base == pytest.approx(0.1, rel=0.01)
    assert lv.resid == pytest.approx(TRUE.resid, rel=3 * math.sqrt(2 / (199 * 999)))
    assert lv.user == pytest.approx(TRUE.user, rel=3 * math.sqrt(2 / 999) * 1.1)
    assert lv.seed == pytest.approx(TRUE.seed, rel=3 * math.sqrt(2 / 199))


def test_one_seed_states_its_assumptions():
    cols = crossed(np.random.default_rng(1), TRUE, 1, 3000)[0]
    lv = power.levels(list(cols), same_users=True, seed_sd=4.0)
    assert lv.seed == pytest.approx((0.04 * lv.base) ** 2)  # assumed: 4% of the baseline
    assert lv.user == pytest.approx(TRUE.user + TRUE.resid, rel=0.08)
    assert lv.resid == 0  # conservative: all of it repeats in every seed
    assert any("4% of the baseline mean (one seed)" in a for a in lv.assumed)
    assert any("repeats in every seed" in a for a in lv.assumed)
    learned_nothing = power.levels([np.zeros((50, 2))], same_users=True)
    assert learned_nothing.base == power.HIT_RATE and learned_nothing.user == pytest.approx(
        2 * 0.05 * 0.95 * (1 - power.RHO)
    )
    assert any("hit rate 0.05" in a for a in learned_nothing.assumed)


def test_the_parts_are_the_engines():
    """Levels.parts at the observed design match the verdict engine's own two parts."""
    cols = crossed(np.random.default_rng(2), TRUE, 5, 500)[0]
    e = verdicts.paired_effect(frame_of(cols), "pause", "plain", "m")
    lv = power.levels(list(cols), same_users=True)
    assert [v for v, _ in lv.parts(5, 500)] == pytest.approx([v for v, _ in e.parts], rel=1e-6)
    assert [df for _, df in lv.parts(5, 500)] == [df for _, df in e.parts] == [4.0, 499.0]


def test_sample_sizes_are_the_smallest_that_meet_the_target():
    crit = lambda parts: power.mde(parts, TRUE.absolute(2.0))  # noqa: E731
    target = TRUE.absolute(6.22)
    s = power.seeds_needed(TRUE, 500, crit, target)
    assert s is not None and crit(TRUE.parts(s, 500)) <= target < crit(TRUE.parts(s - 1, 500))
    n = power.users_needed(TRUE, 8, crit, target)
    assert n is not None and crit(TRUE.parts(8, n)) <= target < crit(TRUE.parts(8, n - 1))
    assert power.seeds_needed(TRUE, 5, crit, target) is None  # 5 users: hopeless
    assert power.unlimited_seeds(TRUE, 5, crit) > target  # ... at any number of seeds
    assert power.users_needed(TRUE, 3, crit, target) is None  # 3 seeds: the seed level alone is too
    assert power.unlimited_users(TRUE, 3, crit) > target  # noisy for 6.22%, at any number of users


# --- simulated experiments through the verdict engine ----------------------------------------


def frame_of(cols: np.ndarray) -> pd.DataFrame:
    """Per-user rows (label, seed, user, m) of one experiment's (S, N, 2) paired columns."""
    n_s, n_u, _ = cols.shape
    seed, user = np.repeat(np.arange(n_s), n_u), np.tile(np.arange(n_u), n_s)
    base = cols[..., 1].ravel()
    treat = base + cols[..., 0].ravel()
    return pd.concat(
        [
            pd.DataFrame({"label": "pause", "seed": seed, "user": user, "m": treat}),
            pd.DataFrame({"label": "plain", "seed": seed, "user": user, "m": base}),
        ],
        ignore_index=True,
    )


def verdicts_of(
    lv: power.Levels,
    rng: np.random.Generator,
    n_seeds: int,
    n_users: int,
    rel_effect: float,
    reps: int = 200,
) -> list[str]:
    """Verdicts of ``reps`` simulated experiments (paired_effect, then decide with the quality
    claims' rule: a gain, margin 2% of the baseline)."""
    cols = crossed(rng, lv, n_seeds, n_users, lv.absolute(rel_effect), reps)
    return [
        verdicts.decide(
            verdicts.paired_effect(frame_of(c), "pause", "plain", "m"), verdicts.Rule(+1)
        )[0]
        for c in cols
    ]


def reproduced(
    rng: np.random.Generator, n_seeds: int, n_users: int, rel_effect: float, reps: int = 200
) -> float:
    """Share of ``reps`` simulated experiments (levels :data:`TRUE`) that read "reproduced"."""
    found = verdicts_of(TRUE, rng, n_seeds, n_users, rel_effect, reps)
    return float(np.mean([v == verdicts.REPRODUCED for v in found]))


def low(reps: int) -> float:
    """The share below which 80% power is rejected at the 1% level, over ``reps`` experiments."""
    return 0.8 - 2.33 * math.sqrt(0.8 * 0.2 / reps)


def planned_seeds() -> int:
    """The planner's seeds for the paper's +6.22% (margin 2%) on 500 users, levels :data:`TRUE`."""
    crit = lambda parts: power.mde(parts, TRUE.absolute(verdicts.REL_MARGIN))  # noqa: E731
    return power.seeds_needed(TRUE, 500, crit, TRUE.absolute(6.22))


def test_power_at_the_planned_seeds():
    """A true +6.22% reads "reproduced" in >= 80% of 300 experiments at the planned seeds."""
    s = planned_seeds()
    assert 4 <= s <= 12  # a design where the seed count matters
    assert reproduced(np.random.default_rng(10), s, 500, 6.22, reps=300) >= low(300)


def test_null_false_positives_at_the_planned_seeds():
    """No effect: "reproduced" in <= 5% of 200 experiments at the planned seeds."""
    assert reproduced(np.random.default_rng(12), planned_seeds(), 500, 0.0) <= 0.05


@pytest.mark.slow
def test_the_planned_seeds_are_not_wasteful():
    """One seed fewer than planned falls short of 80% (the planner is not merely conservative)."""
    assert reproduced(np.random.default_rng(14), planned_seeds() - 1, 500, 6.22) < 0.8


@pytest.mark.slow
def test_an_effect_at_the_margin_is_rarely_reproduced():
    """An effect at the margin: "reproduced" in <= 5% of 200 experiments (<= 2.5% expected)."""
    assert reproduced(np.random.default_rng(15), planned_seeds(), 500, verdicts.REL_MARGIN) <= 0.05


@pytest.mark.slow
def test_power_at_the_planned_users():
    crit = lambda parts: power.mde(parts, TRUE.absolute(verdicts.REL_MARGIN))  # noqa: E731
    n = power.users_needed(TRUE, 10, crit, TRUE.absolute(6.22))
    assert 50 <= n <= 2000
    assert reproduced(np.random.default_rng(11), 10, n, 6.22) >= low(200)


@pytest.mark.slow
def test_the_margin_row_resolves_a_null():
    """At the seeds planned for the margin, a null reads "no meaningful difference" in >= 80%."""
    s = power.seeds_needed(QUIET, 1500, power.resolution, QUIET.absolute(verdicts.REL_MARGIN))
    assert s is not None and s >= 4
    found = verdicts_of(QUIET, np.random.default_rng(13), s, 1500, 0.0)
    assert np.mean([v == verdicts.NO_DIFFERENCE for v in found]) >= low(200)
