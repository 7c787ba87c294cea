"""analysis/: collect, claims, figures and make_report on a simulated runs directory in the real
formats.

Checkpoints are ``pauserec.json`` files with the trainer's fields (cell, train seed, whole-lineage
timings); evaluations are written by :func:`pauserec.evaluate.write` and baselines the same way;
probe rows carry their checkpoint's identity. Users are simulated with planted effects (pause-k5 far
above the plain references and CoT, the baselines below; think-only gives every user one list), so
the verdicts the tests expect follow from the plants. The best-of candidates are evaluated on the
validation split too, where a different pause count is best than on the test split.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import (
    claims,
    collect,
    conditions,
    figures,
    figures_alignment,
    figures_probes,
    make_report,
    report,
    verdicts,
)
from pauserec.cli import run
from pauserec.evaluation import evaluate
from pauserec.model.checkpoint import identity

N_USERS = 3000
HIT = {
    "sft": 0.20,
    "sft-continued": 0.21,
    "think-only": 0.22,
    "filler-k5": 0.22,
    "pause-k5": 0.34,
    "pause-k1": 0.29,
    "pause-k9": 0.30,
    "pause-k5-mean-text": 0.27,
    "cot-template": 0.26,
    "popularity": 0.08,
    "markov": 0.12,
    "sasrec": 0.15,
}
STAGE = {
    "sft": "sft",
    "cot-template": "cot-sft",
    "popularity": "baseline",
    "markov": "baseline",
    "sasrec": "baseline",
}
HOURS = {
    "init": 0.01,
    "cpt": 1.0,
    "sft": 0.5,
    "pause-pretrain": 0.2,
    "pause-sft": 0.5,
    "cot-sft": 2.5,
}
LATENCY = {"pause-k5": 12.0, "cot-template": 50.0}
VALID_HIT = {
    "pause-k1": 0.33,
    "pause-k9": 0.25,
    "pause-k5-mean-text": 0.27,
    "filler-k5": 0.22,
}  # k1 best here, k9 on the test split


def meta_of(cell: str, seed: int | None) -> dict:
    stage = STAGE.get(cell, "pause-sft")
    variant = {
        "sft": "plain",
        "sft-continued": "plain",
        "cot-sft": "cot",
        "baseline": "baseline",
    }.get(cell if cell in ("sft", "sft-continued") else stage, "pause")
    lineage = (
        ["init", "cpt", "sft"]
        + (["pause-pretrain"] if cell == "pause-k5" else [])
        + ([stage] if stage not in ("sft", "baseline") else [])
    )
    n = int(cell.split("-k")[1].split("-")[0]) if "-k" in cell else 0
    control = (
        cell
        if cell in ("think-only", "sft-continued")
        else "filler"
        if cell.startswith("filler")
        else None
    )
    return {
        "format_version": 2,
        "variant": variant,
        "stage": stage,
        "cell": cell,
        "n_pauses": n,
        "control": control,
        "backbone": "" if stage == "baseline" else "tiny",
        "train_seed": seed,
        "pause_init": "mean-text"
        if "mean-text" in cell
        else ("pretrained" if cell.startswith("pause") else None),
        "rationale": {"source": "template", "leaky": False} if stage == "cot-sft" else None,
        "dataset": {"name": "ml-100k", "max_history": 20},
        "train_targets": "last",
        "configs": {stage: {"epochs": 1, "n_train": 512, "lr": 1e-4, "batch_size": 16}},
        "timings": {
            s: {
                "wall_s": HOURS[s] * 3600,
                "device_hours": HOURS[s],
                "device": "cpu, 2 thread(s)",
                "dtype": "bf16",
            }
            for s in lineage
        },
    }


def write_eval(out: Path, meta: dict, seed: int | None, split: str = "test") -> None:
    cell = meta["cell"]
    rng = np.random.default_rng([sum(map(ord, cell)), seed or 0, split == "valid"])
    hit = (VALID_HIT if split == "valid" else HIT)[cell]
    hit += 0.004 * (seed or 0) if cell != "popularity" else 0  # a little seed-level noise
    rank = np.where(rng.random(N_USERS) < hit, rng.integers(1, 11, N_USERS), 0)
    frame = pd.DataFrame(
        {
            "user": np.arange(N_USERS).astype(str),
            "target": rng.integers(0, 1000, N_USERS),
            "rank": rank,
            "history_len": 5,
        }
    )
    summary = {
        "split": split,
        "eval_seed": 0,
        "n_users": N_USERS,
        "recall@10": float((rank > 0).mean()),
        "device": "cpu, 2 thread(s)",
        "dtype": "bf16",
        "user_independent": cell == "think-only",
    }
    if cell in LATENCY:
        summary["latency_batches_ms"] = list(LATENCY[cell] + rng.normal(0, 0.5, 12))
    ident = identity(meta)
    ident["ckpt"] = cell
    evaluate.write(str(out), ident, summary, frame, {})


def write_probe(root: Path, folder: str, rows: list[dict], meta: dict) -> None:
    d = root / "probes" / folder
    d.mkdir(parents=True, exist_ok=True)
    ident = {**identity(meta), "ckpt": meta["cell"]}
    pd.DataFrame([{**ident, **r} for r in rows]).to_csv(d / "results.csv", index=False)
    (d / "meta.json").write_text(json.dumps({"probe": folder.split("-")[0]}))


def write_runs(root: Path, seeds=(0, 1, 2), valid: bool = True) -> Path:
    """An experiment directory: checkpoints, evaluations and baselines for every seed (``valid``:
    the best-of candidates on the validation split too), probes of seed 0."""
    for seed in seeds:
        for cell in HIT:
            if cell in ("popularity", "markov"):
                if seed == seeds[0]:
                    write_eval(root / "baselines" / cell, meta_of(cell, None), None)
                continue
            meta = meta_of(cell, seed)
            where = root / ("baselines" if cell == "sasrec" else f"seed{seed}")
            (where / cell).mkdir(parents=True, exist_ok=True)
            if cell != "sasrec":
                (where / cell / "pauserec.json").write_text(json.dumps(meta))
                pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.0, 1.5]}).to_csv(
                    where / cell / "train_log.csv", index=False
                )
            write_eval(where / "eval" / f"{cell}-s{seed}", meta, seed)
            if valid and cell in VALID_HIT:
                write_eval(where / "eval-valid" / f"{cell}-s{seed}", meta, seed, "valid")
    rng = np.random.default_rng(0)
    for cell, cos in {"sft": 0.45, "cot-template": 0.30}.items():  # CoT training misaligns SID rows
        align = [
            {
                "metric": "cosine_sid_title",
                "item_id": i,
                "matrix": "input",
                "value": cos + rng.normal(0, 0.05),
            }
            for i in range(60)
        ]
        write_probe(root, f"alignment-{cell}", align, meta_of(cell, 0))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return write_runs(tmp_path_factory.mktemp("runs") / "exp")


def test_collect_is_a_concatenation_of_self_describing_files(runs, tmp_path):
    data = collect.collect(runs)
    ev = data.eval
    assert set(ev["cell"]) == set(HIT) and ev.groupby("cell")["user"].nunique().eq(N_USERS).all()
    assert set(ev.loc[ev["cell"] == "pause-k5", "train_seed"]) == {0, 1, 2}
    assert ev.loc[ev["cell"] == "popularity", "train_seed"].isna().all()  # deterministic: no seed
    # identity travels with the file, not the path: a moved evaluation is still what it says it is
    moved = tmp_path / "anywhere" / "x"
    shutil.copytree(runs / "seed0" / "eval" / "pause-k5-s0", moved)
    again = collect.eval_rows(tmp_path / "anywhere")
    assert set(again["cell"]) == {"pause-k5"} and set(again["stage"]) == {"pause-sft"}
    assert all(not Path(p).is_absolute() for p in ev["eval_dir"])  # relative to the runs root
    # the whole lineage
    assert data.timings.query("cell == 'pause-k5'")["timing_stage"].nunique() == 5


def test_conditions_table_lists_baselines_and_seeds(runs):
    per_user = conditions.with_labels(collect.collect(runs).eval)
    table = conditions.conditions_table(per_user, ["recall@10"], n_resamples=200)
    row = table.set_index("label")
    assert row.loc["pause-k5", "seeds"] == "0,1,2" and row.loc["popularity", "seeds"] == "—"
    assert (
        row.loc["pause-k5", "recall@10"]
        > row.loc["sft", "recall@10"]
        > row.loc["popularity", "recall@10"]
    )
    assert conditions.strongest_baseline(per_user) == "sasrec"


def test_claims_under_the_new_rules(runs):
    table = claims.evaluate(collect.collect(runs)).set_index("key")
    assert set(table["verdict"]) <= set(verdicts.VERDICTS)
    # the compute-matched control
    assert table.loc["vs_sft", "compared"] == "pause-k5 vs sft-continued"
    for key in ("vs_sft", "vs_cot", "vs_baseline", "pretrained_pause", "pause_count"):
        assert table.loc[key, "verdict"] == "reproduced", (key, table.loc[key, "why"])
        assert table.loc[key, "n_seeds"] == 3 and np.isfinite(table.loc[key, "p_holm"])
    # think-only gives every user one list: the pair has not learned, whatever its interval says
    assert table.loc["vs_think_only", "verdict"] == verdicts.NOT_LEARNED
    assert "same top-10 list" in table.loc["vs_think_only", "why"]
    # best-of rivals are chosen on the valid split (k1 there), not on the test split (k9 there)
    assert table.loc["pause_count", "compared"] == "pause-k5 vs pause-k1"
    assert "valid split: pause-k1" in table.loc["pause_count", "why"]
    assert table.loc["pretrained_pause", "compared"] == "pause-k5 vs pause-k5-mean-text"
    for key in ("vs_sft", "vs_cot", "train_cost", "latency"):  # every measured claim states its MDE
        assert np.isfinite(table.loc[key, "mde_rel"]) and "%" in table.loc[key, "mde"], key
    assert table.loc["train_cost", "mde_rel"] < 0 < table.loc["vs_cot", "mde_rel"]  # claimed side
    assert table.loc["train_cost", "verdict"] == "reproduced"  # 4.0 vs 6.5 device-hours per seed
    assert "shared stages" in table.loc["train_cost", "why"]
    # 12 vs 50 ms, 12 timed batches x 3 seeds
    assert table.loc["latency", "verdict"] == "reproduced"
    # one seed
    assert table.loc["misalignment", "verdict"] in ("inconclusive", "point estimate only")
    assert "CoT-SFT + RL" in table.loc["vs_cot", "paper"]


def test_one_seed_is_never_reproduced(tmp_path):
    table = claims.evaluate(collect.collect(write_runs(tmp_path / "one", seeds=(0,)))).set_index(
        "key"
    )
    assert "reproduced" not in set(table["verdict"])
    assert "1 seed(s), a verdict needs >= 3" in table.loc["vs_sft", "why"]


def test_claims_without_data_say_so():
    table = claims.evaluate(collect.collect(Path("/nonexistent-dir-for-analysis-tests"))).set_index(
        "key"
    )
    assert (
        table.loc["vs_sft", "why"].startswith("not run")
        and table["verdict"].eq("inconclusive").all()
    )


def test_metrics_figure_draws_one_bar_per_condition_and_the_baselines(runs):
    per_user = conditions.with_labels(collect.collect(runs).eval)
    fig = figures.metrics_by_variant(per_user, ("recall@10",), n_resamples=200)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert len(bars) == 6  # sft, pause-k5, cot, and the three controls
    labels = {t.get_text().replace("\n", "") for t in ax.get_xticklabels()}
    assert {"sft", "pause-k5", "cot-template", "think-only"} <= labels
    lines = {line.get_label().split()[0] for line in ax.get_lines()}
    assert {"popularity", "markov", "sasrec"} <= lines
    k = figures.k_sweep(per_user, n_resamples=200)
    pretrained = next(c for c in k.axes[0].containers if c.get_label() == "pause, init=pretrained")
    assert sorted(pretrained.lines[0].get_xdata()) == [1, 5, 9]


def test_probe_figures_are_drawn_from_the_files(runs):
    probes = collect.collect(runs).probes
    fig = figures_alignment.by_stage(probes)
    assert fig.axes[0].get_title() == "cosine_sid_title" and len(fig.axes[0].get_lines()) >= 1
    with pytest.raises(figures.NoData):
        figures_probes.rationale_sensitivity(probes)


def test_make_report_end_to_end(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(runs.parent)
    out = tmp_path / "report"
    path = make_report.main([str(runs), "--out", str(out), "--n-resamples", "200"])
    text = path.read_text()
    for section in (
        "## Claims",
        "## Metrics",
        "### Paired comparisons",
        "## Deviations from the paper",
        "### Conditions that have not learned",
        "## Figures",
        "| MDE (80% power) |",
        "Variance reduction in this design",
        "classical baselines read up to 5 history items",
    ):
        assert section in text
    assert "`think-only` gives most users the same top-10 list" in text
    assert "CoT-SFT with template rationales and no RL stage" in text and "popularity" in text
    combined = pd.read_csv(out / "results.csv.gz")  # every probe row, gzipped
    assert len(combined) == len(collect.collect_all(runs)) and not (out / "results.csv").exists()
    for f in out.rglob("*"):
        if f.suffix in (".md", ".html", ".csv", ".gz"):
            body = gzip.decompress(f.read_bytes()).decode() if f.suffix == ".gz" else f.read_text()
            assert str(tmp_path) not in body and "/tmp/" not in body, f  # no machine-specific paths
            assert not re.search(r"np\.(int|float)\d+\(", body), f  # plain numbers, no numpy reprs
    assert (out / "figures" / "metrics_by_variant.png").is_file() and (out / "claims.csv").is_file()
    assert run(make_report.main, [str(runs), "--out", str(out)]) == 2  # an existing report is kept


def test_deviations_name_a_token_init_other_than_the_papers(runs):
    data = collect.collect(runs)
    per_user = conditions.with_labels(data.eval)
    assert "token_init" in data.ckpts and not any(
        "new token rows" in d for d in report.deviations(data, per_user, "template")
    )
    data.ckpts["token_init"] = "default"
    assert any(
        "new token rows initialised `default`" in d
        for d in report.deviations(data, per_user, "template")
    )


@pytest.mark.parametrize("make_dir", [lambda p: p / "missing", lambda p: p])
def test_make_report_bad_runs_dir_is_one_line_exit_2(tmp_path, capsys, make_dir):
    code = run(make_report.main, [str(make_dir(tmp_path)), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert (
        code == 2 and err.startswith("error:") and "\n" not in err and not (tmp_path / "r").exists()
    )
