"""analysis.claims gates, through the public verdict function on a simulated runs directory in the
real formats (tests/test_analysis.py writes it): an unhealthy pair never reads "reproduced"; an
unmatched comparison, a missing control, a best-of choice without the validation split and a
baseline on another footing get no verdict and say why."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from test_analysis import write_runs

from analysis import claims, collect, verdicts

QUALITY = ("vs_sft", "vs_think_only", "vs_cot", "pretrained_pause", "pause_count", "vs_baseline")


@pytest.fixture(scope="module")
def base_runs(tmp_path_factory) -> Path:
    return write_runs(tmp_path_factory.mktemp("claims") / "exp")


@pytest.fixture()
def runs(base_runs, tmp_path) -> Path:
    """A fresh copy of the runs directory for a test to change."""
    return Path(shutil.copytree(base_runs, tmp_path / "exp"))


def table_of(root: Path) -> pd.DataFrame:
    return claims.evaluate(collect.collect(root)).set_index("key")


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def edit_csv(path: Path, **columns) -> None:
    pd.read_csv(path).assign(**columns).to_csv(path, index=False)


def test_the_planted_runs_earn_verdicts(base_runs):
    """The reference the gates are measured against: without them these pairs read reproduced."""
    table = table_of(base_runs)
    for key in ("vs_sft", "vs_cot", "pretrained_pause", "pause_count", "vs_baseline"):
        assert table.loc[key, "verdict"] == verdicts.REPRODUCED, (key, table.loc[key, "why"])
    assert "Holm over 7 claims" in table.loc["vs_cot", "why"]  # 5 quality + cost + latency


def below_popularity(root: Path) -> None:
    """pause-k5 hits at 0.05 < most-popular's 0.08 on the same users, in every seed."""
    for seed in (0, 1, 2):
        path = root / f"seed{seed}" / "eval" / f"pause-k5-s{seed}" / "per_user.csv"
        frame = pd.read_csv(path)
        frame["rank"] = [3 if i % 20 == 0 else 0 for i in range(len(frame))]
        frame.to_csv(path, index=False)


def one_list_in_one_seed(root: Path) -> None:
    """sft-continued's seed-1 evaluation gives most users the same top-10 list (the health flag)."""
    path = root / "seed1" / "eval" / "sft-continued-s1" / "metrics.json"
    edit_json(path, lambda m: m.update(user_independent=True))


@pytest.mark.parametrize(
    "sicken, key, says",
    [
        (below_popularity, "vs_cot", "below most-popular's 0.0"),
        (
            one_list_in_one_seed,
            "vs_sft",
            "`sft-continued` gives most users the same top-10 list (seeds 1)",
        ),
    ],
)
def test_an_unhealthy_pair_never_reads_reproduced(runs, sicken, key, says):
    sicken(runs)
    table = table_of(runs)
    assert table.loc[key, "verdict"] == verdicts.NOT_LEARNED and says in table.loc[key, "why"]
    assert table.loc[key, "measured"] != "—"  # the effect is still shown, its verdict withheld
    if sicken is below_popularity:  # the treatment of every pause claim has not learned
        assert not any(table.loc[k, "verdict"] == verdicts.REPRODUCED for k in QUALITY)
        assert table.loc["vs_baseline", "verdict"] == verdicts.NOT_LEARNED


def test_without_sft_continued_there_is_no_fallback_to_sft(runs):
    for seed in (0, 1, 2):
        shutil.rmtree(runs / f"seed{seed}" / "sft-continued")
        shutil.rmtree(runs / f"seed{seed}" / "eval" / f"sft-continued-s{seed}")
    row = table_of(runs).loc["vs_sft"]
    assert row["verdict"] == verdicts.NO_VERDICT
    assert row["why"].startswith("missing control: sft-continued")
    assert row["compared"] == "—" and row["measured"] == "—"  # plain sft is never compared instead


def steps(root: Path, cell: str, stage: str, per_seed: dict[int, int]) -> None:
    for seed, n in per_seed.items():
        edit_json(
            root / f"seed{seed}" / cell / "pauserec.json",
            lambda m, n=n: m["timings"][stage].update(steps=n),
        )


def test_unmatched_steps_get_no_verdict(runs):
    """The GPU run's kind of mismatch (max_steps rescaled per stage): cot-sft took fewer steps."""
    for cell in (
        "pause-k5",
        "pause-k1",
        "pause-k9",
        "pause-k5-mean-text",
        "filler-k5",
        "think-only",
        "sft-continued",
    ):
        steps(runs, cell, "pause-sft", {0: 40, 1: 40, 2: 40})
    steps(runs, "cot-template", "cot-sft", {0: 40, 1: 20, 2: 40})
    table = table_of(runs)
    assert table.loc["vs_cot", "verdict"] == verdicts.NO_VERDICT
    assert table.loc["vs_cot", "why"] == "not compute-matched: steps 40 vs 20 (seed 1)"
    assert "Holm over 6 claims" in table.loc["vs_sft", "why"]  # a gated claim leaves Holm


def test_a_different_start_data_or_schedule_gets_no_verdict(runs):
    """Seed 0 of the control took another learning rate, seed 1 started from a shorter sft, seed 2
    read another history length: each difference is named, at its seed."""
    changes = {
        0: lambda m: m["configs"]["pause-sft"].update(lr=3e-4),
        1: lambda m: m["timings"]["sft"].update(steps=7),
        2: lambda m: m["dataset"].update(max_history=9),
    }
    for seed, change in changes.items():
        edit_json(runs / f"seed{seed}" / "sft-continued" / "pauserec.json", change)
    row = table_of(runs).loc["vs_sft"]
    assert row["verdict"] == verdicts.NO_VERDICT
    assert row["why"] == (
        "not compute-matched: start sft vs sft (7 steps) (seed 1); "
        "max_history 20 vs 9 (seed 2); lr 0.0001 vs 0.0003 (seed 0)"
    )


def test_a_comparison_without_training_records_gets_no_verdict(runs):
    for seed in (0, 1, 2):
        (runs / f"seed{seed}" / "sft-continued" / "pauserec.json").unlink()
    row = table_of(runs).loc["vs_sft"]
    assert row["verdict"] == verdicts.NO_VERDICT and "no training record" in row["why"]


def test_best_of_without_the_valid_split_gets_no_verdict(tmp_path):
    table = table_of(write_runs(tmp_path / "exp", valid=False))
    for key in ("pretrained_pause", "pause_count"):
        assert table.loc[key, "verdict"] == verdicts.NO_VERDICT
        assert "must be chosen on the valid split" in table.loc[key, "why"]
        assert table.loc[key, "compared"] == "—"  # never picked on the test split


def test_best_of_on_the_split_it_was_chosen_on_gets_no_verdict(base_runs):
    table = claims.evaluate(collect.collect(base_runs), claims.Config(split="valid"))
    row = table.set_index("key").loc["pause_count"]
    assert row["verdict"] == verdicts.NO_VERDICT and "not held out" in row["why"]


def test_a_baseline_on_another_footing_gets_no_verdict(runs):
    for seed in (0, 1, 2):
        edit_csv(runs / "baselines" / "eval" / f"sasrec-s{seed}" / "per_user.csv", history_len=20)
    row = table_of(runs).loc["vs_baseline"]
    assert row["verdict"] == verdicts.NO_VERDICT
    assert row["why"].startswith(
        "baseline not on the same footing: history read: up to 5 vs 20 items"
    )


def test_the_gates_are_the_claims_own(runs):
    """A claim is gated through its own pair only: the other rows keep their verdicts."""
    one_list_in_one_seed(runs)
    table = table_of(runs)
    assert table.loc["vs_sft", "verdict"] == verdicts.NOT_LEARNED
    assert table.loc["vs_cot", "verdict"] == verdicts.REPRODUCED
