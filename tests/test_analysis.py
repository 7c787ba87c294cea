"""analysis/: collect, claims, figures and make_report on a small runs directory written here.

The directory follows the documented formats: stage checkpoints with ``pauserec.json`` (+ train_log.csv),
evaluations with ``metrics.json`` + ``per_user.csv``, probe dirs with ``results.csv`` + ``meta.json``.
The simulated users are drawn so that pause > cot > plain in recall, by a margin a few hundred users
detect, while pause and cot are equal in some places the tests name.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from pathlib import Path

import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis import claims, collect, conditions, costs, figures, figures_probes, make_report
from pauserec.cli import run

N_USERS = 400
HIT = {"plain": 0.20, "pause": 0.34, "cot": 0.26}  # P(target in top 20), per variant
TIMES = {"init": 10.0, "cpt": 3600.0, "sft": 1800.0, "pause-pretrain": 900.0, "pause-sft": 1800.0,
         "cot-sft": 9000.0}
LATENCY = {"plain": 10.0, "pause": 12.0, "cot": 50.0}


def _ckpt(path: Path, variant: str, stage: str, parent: str | None, k: int = 0, pause_init: str = "",
          rationale: dict | None = None, dataset: str = "ml-100k", pause_from: str | None = None) -> None:
    """A stage checkpoint as the trainer writes it: timings carry the parent's (cumulative)."""
    path.mkdir(parents=True, exist_ok=True)
    timings = ({"sid_build_s": 4.0, "backbone_load_s": 6.0} if stage == "init" else
               {stage: {"wall_s": TIMES[stage], "device_hours": TIMES[stage] / 3600, "tokens": 10_000,
                        "tokens_per_s": 10_000 / TIMES[stage], "device": "cpu"}})
    if parent and (Path(parent) / "pauserec.json").is_file():
        timings = {**json.loads((Path(parent) / "pauserec.json").read_text())["timings"], **timings}
    meta = {"format_version": 1, "variant": variant, "stage": stage, "k": k, "pause_init": pause_init,
            "rationale": rationale or {}, "backbone": "tiny", "parent": parent,
            "dataset": {"name": dataset, "max_history": 20}, "metrics": {}, "timings": timings,
            "configs": {stage: {"seed": 0, "pause_from": pause_from}}}
    (path / "pauserec.json").write_text(json.dumps(meta))
    if stage != "init":
        steps = np.arange(1, 21)
        pd.DataFrame({"step": steps, "loss": 3.0 / np.sqrt(steps), "lr": 1e-4, "tokens": steps * 500,
                      "tokens_per_s": 100.0}).to_csv(path / "train_log.csv", index=False)


def _eval(evaldir: Path, ckpt: Path, variant: str, stage: str, hit: float, seed: int,
          latency: float) -> None:
    rng = np.random.default_rng([zlib.crc32("/".join(ckpt.parts[-3:]).encode()), seed])
    rank = np.where(rng.random(N_USERS) < hit, rng.integers(1, 21, N_USERS), 0)
    per_user = pd.DataFrame({"user": np.arange(N_USERS), "target": rng.integers(0, 1000, N_USERS),
                             "rank": rank, "hit@10": ((rank > 0) & (rank <= 10)).astype(int)})
    evaldir.mkdir(parents=True, exist_ok=True)
    per_user.to_csv(evaldir / "per_user.csv", index=False)
    summary = {"recall@10": float(per_user["hit@10"].mean()), "n_users": N_USERS, "invalid_rate": 0.0,
               "latency_ms_per_sample": latency, "throughput_users_per_s": 1000 / latency,
               "ckpt": str(ckpt), "variant": variant, "stage": stage, "split": "test"}
    (evaldir / "metrics.json").write_text(json.dumps(summary))


def _probe(d: Path, name: str, rows: list[dict]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
    ckpts = [str(d.parent.parent / s) for s in {r["stage"] for r in rows}]
    (d / "meta.json").write_text(json.dumps({"probe": name, "args": {"seed": 0, "ckpt": ckpts},
                                             "rows": len(rows)}))
    (d / "figures").mkdir(exist_ok=True)
    (d / "figures" / f"{name}_own.png").write_bytes(PNG_1PX)


PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def _probes(root: Path) -> None:
    rng = np.random.default_rng(0)
    items = range(60)
    cos = {"init": 0.50, "cpt": 0.48, "sft": 0.45, "pause-sft": 0.44, "cot-sft": 0.30}
    var = {"init": "base", "cpt": "base", "sft": "plain", "pause-sft": "pause", "cot-sft": "cot"}
    align = [{"ckpt": s, "stage": s, "variant": var[s], "metric": "cosine_sid_title", "item_id": i,
              "matrix": "input", "value": cos[s] + rng.normal(0, 0.05)} for s in cos for i in items]
    align += [{"ckpt": s, "stage": s, "variant": var[s], "metric": "cosine_sid_title_baseline",
               "item_id": i, "matrix": "input", "value": rng.normal(0, 0.02)} for s in cos for i in items]
    # the output matrix grows *more* aligned: the claim must read the input embeddings only
    align += [{"ckpt": s, "stage": s, "variant": var[s], "metric": "cosine_sid_title", "item_id": i,
               "matrix": "output", "value": 1 - cos[s]} for s in cos for i in items]
    align += [{"ckpt": s, "stage": s, "variant": var[s], "metric": "cka", "space": space,
               "matrix": "input", "value": cos[s]} for s in cos for space in ("mean", "concat")]
    align += [{"ckpt": "sft", "stage": "sft", "variant": "plain", "metric": m, "item_id": f"<a_{i}>",
               "space": "sid" if i % 2 else "word", "matrix": "input", "value": float(rng.normal())}
              for m in ("umap_x", "umap_y") for i in range(40)]
    _probe(root / "probes" / "alignment", "alignment", align)
    attn = [{"ckpt": v, "stage": s, "variant": v, "metric": "attn_mass", "layer": L, "pos": p,
             "segment": seg, "value": (L + 1) / (p + 2) * (0.5 if seg == "history" else 0.2)}
            for v, s in (("pause", "pause-sft"),) for L in range(4) for p in range(5)
            for seg in ("history", "pause")]
    attn += [{"ckpt": "pause-sft", "stage": "pause-sft", "variant": "pause", "metric": m, "layer": L,
              "pos": p, "value": (40 - 8 * L - p) if m == "lens_rank" else L / 4}
             for m in ("lens_rank", "lens_top1") for L in range(4) for p in range(5)]
    _probe(root / "probes" / "attention", "attention", attn)
    def p_verb(stage: str, kind: str, query: str) -> float:  # CoT stops saying what it still ranks
        return 0.6 if kind == "logit" or query == "title" else (0.2 if stage == "cot-sft" else 0.55)

    verb = [{"ckpt": s, "stage": s, "variant": var[s], "metric": f"{kind}_acc", "item_id": i,
             "query": q, "field": f, "value": float(rng.random() < p_verb(s, kind, q))}
            for s in ("sft", "cot-sft") for kind in ("gen", "logit") for q in ("sid", "title")
            for f in ("title", "year") for i in items]
    _probe(root / "probes" / "verbalization", "verbalization", verb)
    rat = [{"ckpt": "cot-sft", "stage": "cot-sft", "variant": "cot", "metric": m, "perturbation": p,
            "user_id": u, "value": (-(rng.random() < 0.3) if m.startswith("delta") else rng.random())}
           for p in ("shuffle", "truncate", "random") for u in range(100) for m in ("delta_recall@10", "kl")]
    _probe(root / "probes" / "rationale", "rationale", rat)


def write_runs(root: Path, seeds: tuple[int, ...] = (0,), probes: bool = True,
               dataset: str = "ml-100k") -> Path:
    """A pipeline run (+ a k sweep and a pause-init ablation) with evaluations and probes."""
    run = root / f"demo-{dataset}"
    lineage = [("init", "base", None), ("cpt", "base", "init"), ("sft", "plain", "cpt"),
               ("pause-pretrain", "base", "cpt"), ("pause-sft", "pause", "sft"), ("cot-sft", "cot", "sft")]
    for seed in seeds:
        base = run / f"seed{seed}" if len(seeds) > 1 else run
        for stage, variant, parent in lineage:
            extra = ({"k": 5, "pause_init": "pretrained", "pause_from": str(base / "pause-pretrain")}
                     if variant == "pause" else {})
            if variant == "cot":
                extra = {"rationale": {"source": "template", "leaky": False}}
            _ckpt(base / stage, variant, stage, str(base / parent) if parent else None, dataset=dataset,
                  **extra)
            if variant in HIT:
                _eval(base / "eval" / stage, base / stage, variant, stage, HIT[variant], seed,
                      LATENCY[variant])
        for cell, k, init in (("k1", 1, "pretrained"), ("k9", 9, "pretrained"), ("rand", 5, "random")):
            ck = base / "cells" / cell / "pause-sft"
            _ckpt(ck, "pause", "pause-sft", str(base / "sft"), k=k, pause_init=init, dataset=dataset,
                  pause_from=str(base / "pause-pretrain") if init == "pretrained" else None)
            _eval(ck / "eval", ck, "pause", "pause-sft", HIT["pause"] - 0.03 * abs(k - 5) / 4
                  - (0.08 if init == "random" else 0), seed, LATENCY["pause"])
    if probes:
        _probes(run)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return write_runs(tmp_path_factory.mktemp("runs"))


# --- collect -------------------------------------------------------------------------------------------


def test_collect_eval_matches_checkpoints_and_recomputes_metrics(runs):
    ev = collect.collect_eval(runs)
    assert ev["eval_dir"].nunique() == 6 and len(ev) == 6 * N_USERS
    assert set(ev["variant"]) == {"plain", "pause", "cot"}
    pause = ev[ev["variant"] == "pause"]
    # cells are matched to their checkpoint through the ancestor directory (no "ckpt" key needed)
    assert sorted(pause["k"].unique()) == [1, 5, 9]
    assert set(pause["pause_init"]) == {"pretrained", "random"}
    assert set(ev["dataset"]) == {"ml-100k"} and set(ev["backbone"]) == {"tiny"}
    assert (ev["recall@10"] == ((ev["rank"] > 0) & (ev["rank"] <= 10))).all()
    hit = ev[ev["rank"] == 3]
    assert np.allclose(hit["ndcg@5"], 0.5)  # 1 / log2(4)


def test_collect_finds_eval_dir_named_after_checkpoint_and_skips_hidden_and_corrupt(tmp_path):
    _ckpt(tmp_path / "r" / "sft", "plain", "sft", None)
    _eval(tmp_path / "r" / "eval" / "sft", tmp_path / "r" / "sft", "plain", "sft", 0.3, 0, 10.0)
    meta = json.loads((tmp_path / "r" / "eval" / "sft" / "metrics.json").read_text())
    for key in ("ckpt", "variant", "stage"):
        meta.pop(key)
    (tmp_path / "r" / "eval" / "sft" / "metrics.json").write_text(json.dumps(meta))
    _ckpt(tmp_path / "r" / ".sft.tmp", "cot", "cot-sft", None)  # a half-written checkpoint
    (tmp_path / "r" / "broken").mkdir()
    (tmp_path / "r" / "broken" / "pauserec.json").write_text("{not json")
    index = collect.index_checkpoints(tmp_path)
    assert index["stage"].tolist() == ["sft"]
    ev = collect.collect_eval(tmp_path)
    assert set(ev["variant"]) == {"plain"} and set(ev["stage"]) == {"sft"}


def test_one_evaluation_per_condition_and_relative_parents(tmp_path):
    run_dir = tmp_path / "r"
    _ckpt(run_dir / "sft", "plain", "sft", None)
    _ckpt(run_dir / "cot-sft", "cot", "cot-sft", "sft")  # parent given relative to the run directory
    _eval(run_dir / "eval" / "sft", run_dir / "sft", "plain", "sft", 0.3, 0, 10.0)
    small = run_dir / "sft" / "eval"
    _eval(small, run_dir / "sft", "plain", "sft", 0.3, 0, 10.0)
    pd.read_csv(small / "per_user.csv").head(50).to_csv(small / "per_user.csv", index=False)
    ev = collect.collect_eval(tmp_path)
    assert len(ev) == N_USERS and set(ev["eval_dir"]) == {str((run_dir / "eval" / "sft").resolve())}
    index = collect.index_checkpoints(tmp_path)
    cot = index.loc[index["stage"] == "cot-sft", "ckpt_path"].iloc[0]
    lineage = collect.lineage_timings(collect.collect_timings(tmp_path), index, cot)
    assert sorted(lineage["timing_stage"]) == ["cot-sft", "sft"]


def test_collect_runs_is_long_and_has_both_sources(runs):
    df = collect.collect_runs(runs)
    assert {"metric", "value", "source"} <= set(df.columns)
    lat = df[(df["metric"] == "latency_ms_per_sample") & (df["variant"] == "cot")]
    assert set(lat["value"]) == {LATENCY["cot"]} and set(lat["source"]) == {"eval"}
    assert not df["metric"].isin(["ckpt", "variant", "split"]).any()  # strings are not metrics


def test_timings_and_lineage(runs):
    timings = collect.collect_timings(runs)
    index = collect.index_checkpoints(runs)
    pause = index[(index["stage"] == "pause-sft") & (index["k"] == 5) & (index["pause_init"] == "pretrained")]
    lineage = collect.lineage_timings(timings, index, pause["ckpt_path"].iloc[0])
    assert sorted(lineage["timing_stage"]) == sorted(["init", "cpt", "sft", "pause-pretrain", "pause-sft"])
    expected = sum(TIMES[s] for s in lineage["timing_stage"]) / 3600
    assert lineage["device_hours"].sum() == pytest.approx(expected)


def test_collect_probes(runs):
    probes = collect.collect_probes(runs)
    assert set(probes["probe"]) == {"alignment", "attention", "verbalization", "rationale"}
    assert set(probes["dataset"]) == {"ml-100k"}  # resolved through meta.json's checkpoint paths
    assert {"layer", "pos", "segment", "perturbation", "matrix"} <= set(probes.columns)
    figs = collect.probe_figures(runs)
    assert set(figs) == set(probes["probe"]) and all(p.suffix == ".png" for v in figs.values() for p in v)
    table = collect.collect_all(runs)
    assert set(table["kind"]) == {"metric", "probe"}


# --- conditions and claims -----------------------------------------------------------------------------


def test_labels_and_main_conditions(runs):
    ev = conditions.with_labels(collect.collect_eval(runs))
    assert conditions.main_labels(ev) == {"plain": "plain", "pause": "pause k=5 init=pretrained",
                                          "cot": "cot template"}
    assert conditions.label_of({"variant": "pause", "stage": "pause-pretrain", "k": 5}) == \
        "pause @pause-pretrain k=5"


@pytest.mark.parametrize("args, expected", [
    ((5.0, 1.0, 9.0, 1), claims.REPRODUCED), ((-5.0, -9.0, -1.0, 1), claims.NOT_REPRODUCED),
    ((1.0, -1.0, 3.0, 1), claims.INCONCLUSIVE), ((-70.0, -80.0, -60.0, -1), claims.REPRODUCED),
    ((float("nan"), 0.0, 1.0, 1), claims.INCONCLUSIVE),
    ((3.0, float("nan"), float("nan"), 1), claims.INCONCLUSIVE)])
def test_verdict_rules(args, expected):
    assert claims.verdict(*args)[0] == expected


def test_point_estimates_only_for_costs():
    assert claims.verdict(-70.0, float("nan"), float("nan"), -1, point_ok=True)[0] == claims.REPRODUCED
    assert claims.verdict(20.0, float("nan"), float("nan"), -1, point_ok=True)[0] == claims.NOT_REPRODUCED


def test_claims_on_the_simulated_runs(runs):
    table = claims.evaluate(collect.collect(runs), n_resamples=500).set_index("key")
    assert len(table) == 9
    assert table.loc["vs_sft", "verdict"] == claims.REPRODUCED  # 0.34 vs 0.20 hits on 400 users
    assert table.loc["latency", "value"] == pytest.approx(100 * (12 - 50) / 50)
    # pause-pretrain + pause-sft vs cot-sft; init, cpt, sft are shared and excluded
    assert table.loc["train_cost", "value"] == pytest.approx(100 * (2700 - 9000) / 9000)
    assert "excludes shared stages cpt, init, sft" in table.loc["train_cost", "why"]
    assert table.loc["misalignment", "verdict"] == claims.REPRODUCED  # input matrix: 0.45 -> 0.30
    assert table.loc["misalignment", "value"] == pytest.approx(0.15, abs=0.03)
    assert table.loc["verbalization", "verdict"] == claims.REPRODUCED
    assert table.loc["rationale", "verdict"] == claims.REPRODUCED
    assert "k=1" in table.loc["k5", "why"] or "k=9" in table.loc["k5", "why"]
    assert "400 users" in table.loc["vs_cot", "setting"] and "ml-100k" in table.loc["vs_cot", "setting"]


def test_claims_without_data_are_inconclusive_not_errors():
    empty = collect.collect(Path("/nonexistent-dir-for-analysis-tests"))
    table = claims.evaluate(empty)
    assert len(table) == 9 and set(table["verdict"]) == {claims.INCONCLUSIVE}
    assert all(w.startswith("not run") for w in table["why"])


def test_claims_refuse_to_pair_different_users(runs):
    data = collect.collect(runs)
    data.eval = data.eval[~((data.eval["variant"] == "plain") & (data.eval["user"] < 10))]
    row = claims.evaluate(data, n_resamples=200).set_index("key").loc["vs_sft"]
    assert row["verdict"] == claims.INCONCLUSIVE and "same users" in row["why"]


def test_seeds_are_averaged_per_user(tmp_path):
    data = collect.collect(write_runs(tmp_path, seeds=(0, 1), probes=False))
    assert set(data.eval["seed"]) == {0, 1}
    table = claims.evaluate(data, n_resamples=200).set_index("key")
    assert "seeds 0,1" in table.loc["vs_sft", "setting"]
    assert f"{N_USERS} users" in table.loc["vs_sft", "setting"]
    assert np.isfinite(table.loc["latency", "lo"])  # two seeds give a CI across seeds


def test_summary_metrics_without_per_user_rows_give_a_point_estimate(runs):
    data = collect.collect(runs)
    data.eval = data.eval.iloc[:0]
    row = claims.evaluate(data, n_resamples=200).set_index("key").loc["vs_sft"]
    assert row["verdict"] == claims.INCONCLUSIVE and "no per_user.csv" in row["why"]
    assert row["value"] > 0 and np.isnan(row["lo"])


def test_each_dataset_gets_its_own_claims_and_figures(tmp_path):
    write_runs(tmp_path, probes=False)
    write_runs(tmp_path, probes=False, dataset="office")
    data = collect.collect(tmp_path)
    table = claims.evaluate(data, n_resamples=100)
    assert len(table) == 18 and table["setting"].str.contains("office").sum() >= 4
    args = make_report.Args(runs=[str(tmp_path)])
    names = [s.name for s in make_report.figure_specs(data, conditions.with_labels(data.eval), args)]
    assert "metrics_by_variant_ml-100k_tiny" in names and "metrics_by_variant_office_tiny" in names


# --- figures -------------------------------------------------------------------------------------------


def _png_bytes(fig) -> int:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    plt.close(fig)
    return len(buf.getvalue())


def test_figures_render(runs):
    data = collect.collect(runs)
    ev = conditions.with_labels(data.eval)
    train, latency = costs.cost_frames(data, conditions.main_labels(ev))
    made = [figures.metrics_by_variant(ev, n_resamples=100), figures.k_sweep(ev, n_resamples=100),
            figures.pause_init_ablation(ev, n_resamples=100), figures.cost(train, latency),
            figures.training_curves(data.train_logs)]
    made += [f(data.probes) for f in (figures_probes.alignment_trajectory, figures_probes.attention_heatmap,
                                      figures_probes.logit_lens, figures_probes.verbalization_gap,
                                      figures_probes.rationale_sensitivity, figures_probes.umap_map)]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in made)
    assert all(_png_bytes(f) > 2000 for f in made)


def test_figures_without_data_raise_nodata():
    empty = pd.DataFrame(columns=["variant", "stage", "metric", "value"])
    for make in (figures.metrics_by_variant, figures.k_sweep, figures_probes.alignment_trajectory,
                 figures_probes.attention_heatmap, figures_probes.verbalization_gap,
                 figures_probes.rationale_sensitivity):
        with pytest.raises(figures.NoData):
            make(empty)
    with pytest.raises(figures.NoData):
        figures.cost(empty, empty)


# --- make_report ---------------------------------------------------------------------------------------


def test_make_report_end_to_end(runs, tmp_path):
    out = tmp_path / "reports"
    report = make_report.main([str(runs), "--out", str(out), "--n-resamples", "200"])
    text = report.read_text()
    claims_rows = [line for line in text.splitlines() if line.startswith("| PauseRec") or
                   line.startswith(("| Training", "| Inference", "| k = 5", "| Pretrained", "| Embedding",
                                    "| Verbalisation", "| CoT"))]
    assert len(claims_rows) == 9
    assert all(claims.REPRODUCED in r or claims.INCONCLUSIVE in r for r in claims_rows)
    assert "python -m analysis.make_report" in text and "--n-resamples 200" in text
    images = re.findall(r"\]\((figures/[^)]+\.png)\)", text)
    assert len(images) >= 11  # 11 of ours + the probes' own
    for rel in images:
        assert (out / rel).stat().st_size > 0
    assert (out / "figures" / "cost.pdf").is_file()
    html = (out / "REPORT.html").read_text()
    assert html.count("<img") == len(images) and "<table>" in html and "reproduced" in html
    assert pd.read_csv(out / "claims.csv").shape[0] == 9
    assert not list(out.glob(".*tmp*"))  # nothing half-written left behind


def test_make_report_lists_missing_figures_as_not_run(tmp_path):
    run_dir = tmp_path / "runs" / "only-sft"
    _ckpt(run_dir / "sft", "plain", "sft", None)
    _eval(run_dir / "sft" / "eval", run_dir / "sft", "plain", "sft", 0.3, 0, 10.0)
    out = tmp_path / "rep"
    report = make_report.main([str(tmp_path / "runs"), "--out", str(out), "--n-resamples", "100"])
    text = report.read_text()
    assert "![metrics_by_variant](figures/metrics_by_variant.png)" in text
    not_run = text.split("### Not run")[1]
    for name in ("k_sweep", "pause_init", "alignment_trajectory", "attention", "rationale"):
        assert f"(`{name}`): not run" in not_run
    assert "not run: no alignment probe results" in text
    assert "not run: needs both conditions (have — and plain)" in text  # pause vs plain


@pytest.mark.parametrize("make_dir", [lambda p: p / "missing", lambda p: p])
def test_make_report_bad_runs_dir_is_one_line_exit_2(tmp_path, capsys, make_dir):
    code = run(make_report.main, [str(make_dir(tmp_path)), "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()
