"""pauserec.stats: hand-computed values, known answers and properties of the paired statistics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from pauserec.evaluation import stats


def series(values, users=None) -> pd.Series:
    index = users if users is not None else range(len(values))
    return pd.Series(np.asarray(values, dtype=float), index=index)


def test_holm_on_known_pvalues():
    # sorted: .005*4 = .02, .01*3 = .03, .03*2 = .06, .04*1 = .04 -> monotone: .06
    assert np.allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    assert np.allclose(stats.holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    out = stats.holm([0.01, np.nan, 0.02])  # NaN is not counted as a test
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], [0.02, 0.02])
    assert stats.holm([]).shape == (0,)


def test_zero_difference_gives_p_one_and_ci_with_zero():
    x = series(np.random.default_rng(1).random(200))
    c = stats.compare(x, x.copy(), "m", n_resamples=500)
    assert c.p == 1.0 and c.diff == 0.0
    assert c.diff_lo <= 0.0 <= c.diff_hi
    assert c.rel_lo <= 0.0 <= c.rel_hi


def test_bootstrap_ci_covers_true_difference():
    """Simulated paired users with a true mean difference of 0.1: the CI covers it ~95% of the
    time."""
    covered = []
    for rep in range(40):
        rng = np.random.default_rng(rep)
        base = rng.normal(1.0, 1.0, 200)
        treat = base + 0.1 + rng.normal(0, 0.3, 200)
        c = stats.compare(series(treat), series(base), n_resamples=1000, seed=rep)
        covered.append(c.diff_lo <= 0.1 <= c.diff_hi)
    assert sum(covered) >= 34  # binomial(40, .95): P(< 34) ~ 0.5%
    assert c.diff_lo > 0  # 0.1 with sd 0.3 over 200 users is clearly detected


def test_relative_improvement_of_an_exact_scaling():
    base = series(np.random.default_rng(2).random(100) + 0.5)
    c = stats.compare(base * 1.1, base, n_resamples=300)
    assert c.rel == pytest.approx(10.0)
    assert c.rel_lo == pytest.approx(10.0) and c.rel_hi == pytest.approx(10.0)


def test_users_are_aligned_by_id_not_position():
    rng = np.random.default_rng(3)
    t, b = series(rng.random(50)), series(rng.random(50))
    shuffled = b.sample(frac=1.0, random_state=0)
    assert stats.compare(t, b, seed=4).as_dict() == stats.compare(t, shuffled, seed=4).as_dict()


def test_different_or_duplicated_users_are_errors():
    with pytest.raises(ValueError, match="same users"):
        stats.compare(series([1, 0, 1], [1, 2, 3]), series([1, 0, 1], [1, 2, 4]))
    with pytest.raises(ValueError, match="duplicated"):
        stats.compare(series([1, 0], [1, 1]), series([1, 0], [1, 2]))


def test_wilcoxon_matches_scipy_and_handles_all_zero():
    d = np.array([0.5, -0.2, 1.0, 0.3, 0.0, 0.8, -0.1, 0.4])
    stat, p = stats.wilcoxon(d)
    assert p == pytest.approx(sps.wilcoxon(d).pvalue)
    assert stats.wilcoxon(np.zeros(10)) == (0.0, 1.0)
    assert all(math.isnan(v) for v in stats.wilcoxon(np.array([])))


def test_bootstrap_is_seeded_and_chunking_does_not_change_it(monkeypatch):
    x = np.random.default_rng(5).random(300)
    a = stats.bootstrap_mean_ci(x, 800, seed=7)
    assert a == stats.bootstrap_mean_ci(x, 800, seed=7)
    assert a != stats.bootstrap_mean_ci(x, 800, seed=8)
    monkeypatch.setattr(stats, "_CHUNK", 300 * 3)  # 3 resamples per chunk
    assert a == stats.bootstrap_mean_ci(x, 800, seed=7)
    assert a[1] < x.mean() < a[2]


def test_bootstrap_mean_ci_edge_cases():
    assert stats.bootstrap_mean_ci([0.3]) == (0.3, 0.3, 0.3)
    assert all(math.isnan(v) for v in stats.bootstrap_mean_ci([]))
    mean, lo, hi = stats.bootstrap_mean_ci([1.0, np.nan, 3.0])
    assert mean == 2.0 and 1.0 <= lo <= hi <= 3.0


def test_unpaired_difference():
    d, lo, hi = stats.bootstrap_diff_ci(np.full(50, 2.0), np.full(40, 1.5), 200)
    assert (d, lo, hi) == (0.5, 0.5, 0.5)
    d, lo, hi = stats.bootstrap_diff_ci([2.0], [1.0])
    assert d == 1.0 and math.isnan(lo) and math.isnan(hi)


def test_seed_ci_by_hand():
    mean, lo, hi = stats.seed_ci([1.0, 2.0, 3.0])
    half = sps.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # sd = 1
    assert mean == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert math.isnan(stats.seed_ci([4.0])[1])


def test_mean_over_seeds_averages_per_user():
    df = pd.DataFrame(
        {
            "label": ["a"] * 4 + ["b"] * 2,
            "user": [1, 2, 1, 2, 1, 2],
            "seed": [0, 0, 1, 1, 0, 0],
            "recall@10": [1.0, 0.0, 0.0, 0.0, 1.0, 1.0],
        }
    )
    out = stats.mean_over_seeds(df, ["label"], ["recall@10"]).set_index(["label", "user"])
    assert out.loc[("a", 1), "recall@10"] == 0.5 and out.loc[("a", 2), "recall@10"] == 0.0
    assert out.loc[("a", 1), "n_seeds"] == 2 and out.loc[("b", 1), "n_seeds"] == 1


def test_ci_table_and_compare_table():
    rng = np.random.default_rng(6)
    users = np.arange(300)
    df = pd.concat(
        [
            pd.DataFrame({"label": lab, "user": users, "m": rng.random(300) < p})
            for lab, p in (("plain", 0.2), ("pause", 0.4), ("cot", 0.2))
        ]
    ).astype({"m": float})
    table = stats.ci_table(df, ["label"], "m", 500).set_index("label")
    assert (table["lo"] <= table["mean"]).all() and (table["mean"] <= table["hi"]).all()
    assert table.loc["pause", "n"] == 300
    odd = pd.DataFrame({"label": "few", "user": users[:10], "m": 1.0})
    comp = stats.compare_table(
        pd.concat([df, odd]),
        [("pause", "plain"), ("cot", "plain"), ("few", "plain")],
        ["m"],
        n_resamples=500,
    )
    assert (comp["p_holm"].dropna() >= comp["p"].dropna()).all()
    assert comp.loc[0, "diff_lo"] > 0  # 0.4 vs 0.2 on 300 users
    assert "same users" in comp.loc[2, "error"]


def test_bootstrap_mean_ci_width_matches_the_normal_theory():
    rng = np.random.default_rng(0)
    mean, lo, hi = stats.bootstrap_mean_ci(np.full(50, 0.25), 200, 0)
    assert mean == lo == hi == 0.25
    mean, lo, hi = stats.bootstrap_mean_ci(rng.normal(1.0, 1.0, 400), 1000, 1)
    assert lo < 1.0 < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.25)
