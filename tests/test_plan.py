"""``python -m pauserec experiment plan``: the power planner on a one-seed pilot in the real formats
(tests/test_analysis.py writes it), through the command-line entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_analysis import write_runs

from analysis import claims, collect, plan, power
from pauserec import data
from pauserec.__main__ import main as pauserec_main
from pauserec.cli import run
from pauserec.errors import UserError


def beauty_here() -> bool:
    """Whether the Amazon Beauty data can be found (--data-root, $PAUSEREC_DATA or ../shared)."""
    try:
        return data.resolve_dir("beauty").is_dir()
    except UserError:
        return False


@pytest.fixture(scope="module")
def pilot(tmp_path_factory) -> Path:
    return write_runs(tmp_path_factory.mktemp("plan") / "pilot", seeds=(0,))


def rows_of(text: str) -> dict[tuple[str, str], list[str]]:
    """{(claim, target): cells} of the plan's Markdown table (a continuation row keeps its
    claim)."""
    out, key = {}, ""
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| claim"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            key = cells[0] or key
            out[(key, cells[2].split()[0])] = cells
    return out


def test_a_one_seed_pilot_gets_a_plan_with_its_assumptions(pilot, capsys):
    pauserec_main(["experiment", "plan", str(pilot), "--datasets", "ml-100k,beauty"])
    text = capsys.readouterr().out
    assert "1 seed(s) x 3,000+ test users" in text
    assert "- seed-level sd of the effect 3% of the baseline mean (one seed)" in text
    assert "ml-100k 943" in text  # read from the data
    rows = rows_of(text)
    keys = {k for k, _ in rows}
    assert keys == {
        "vs_sft",
        "vs_think_only",
        "vs_cot",
        "pretrained_pause",
        "pause_count",
        "vs_baseline",
        "train_cost",
        "latency",
    }
    paper, margin = rows[("vs_cot", "paper")], rows[("vs_cot", "margin")]
    assert paper[2] == "paper +6.22%" and margin[2].startswith("margin ±2%")
    assert "(pilot: inconclusive (not learned))" in rows[("vs_think_only", "margin")][1]
    for cells in (paper, margin):  # the datasets' columns: seeds needed, or never
        assert all(c.endswith("seeds") or c.startswith("never (") for c in cells[5:]), cells


def test_the_plan_is_the_power_maths(pilot):
    """The table's numbers are analysis.power's, on the levels the claims measured."""
    args = plan.Args(runs=[str(pilot)], datasets=("ml-100k",), seed_sd=1.0)
    rows = rows_of(plan.plan_text(args))
    table = claims.claim_table(collect.collect(pilot), claims.Config(seed_sd=1.0))
    cot = next(c for _, _, c in table if c.key == "vs_cot")
    lv = cot.levels
    crit = lambda parts: power.mde(parts, lv.absolute(2.0), n_tests=8)  # noqa: E731
    target = lv.absolute(6.22)
    need = power.users_needed(lv, 10, crit, target)
    assert rows[("vs_cot", "paper")][4] == f"{need:,}"
    if power.unlimited_seeds(lv, 943, crit) > target:
        assert rows[("vs_cot", "paper")][5].startswith("never (")
    else:
        assert rows[("vs_cot", "paper")][5] == f"{power.seeds_needed(lv, 943, crit, target)} seeds"


def test_more_seed_noise_needs_more(pilot):
    """A larger assumed seed-level sd never asks for fewer users."""
    users = []
    for sd in (0.5, 5.0):
        text = plan.plan_text(plan.Args(runs=[str(pilot)], datasets=("ml-100k",), seed_sd=sd))
        cell = rows_of(text)[("vs_cot", "paper")][4]
        users.append(
            float("inf") if cell.startswith(("never", ">")) else int(cell.replace(",", ""))
        )
    assert users[0] < users[1]


def test_a_dataset_directory_counts_its_users(pilot, lcrec):
    folder = lcrec({f"u{i}": [0, 1, 2, 3] for i in range(37)})
    text = plan.plan_text(plan.Args(runs=[str(pilot)], datasets=(str(folder),)))
    assert f"{folder} 37" in text and f"| {folder} (37) |" in text


@pytest.mark.skipif(beauty_here(), reason="Amazon data present: its counts are read")
def test_absent_amazon_data_uses_the_published_counts(pilot):
    text = plan.plan_text(plan.Args(runs=[str(pilot)], datasets=("beauty", "toys")))
    assert "beauty 22,363 (data absent: published count)" in text
    assert "toys 19,412 (data absent: published count)" in text


@pytest.mark.skipif(not beauty_here(), reason="Amazon data (../shared/data/amazon) absent")
def test_amazon_counts_are_read_from_the_data(pilot):
    text = plan.plan_text(plan.Args(runs=[str(pilot)], datasets=("beauty",)))
    assert "beauty 22,363." in text  # no "published count" note: read from the files


def test_nothing_to_plan_from_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run(plan.main, [str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: no evaluations")
