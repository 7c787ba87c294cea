"""The driver layer end to end on the tiny backbone: the experiment (two training seeds, a control,
the baselines, a probe, the report), the demo entry point, and the benches' ratio lines."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import run_script
from driver import demo, experiment
from pauserec.config import STAGES
from pauserec.model import checkpoint

pytestmark = pytest.mark.slow  # trains models, starts processes or kernels

STAGE = """[train.{stage}]
n_train = 16
epochs = 1
batch_size = 8
dtype = "fp32"
device = "cpu"
progress = false
save_every = 0
log_every = 1
"""
EXPERIMENT = """[pipeline]
max_history = 5
[experiment]
seeds = {seeds}
pause_counts = [5]
pause_inits = []
controls = ["think-only"]
rationales = ["template"]
baselines = ["popularity", "markov"]
eval_users = 8
beams = 20
latency_samples = 16
probes = ["alignment"]
probe_users = 4
probe_items = 2
umap = false
"""


def preset(path: Path, seeds: int) -> str:
    path.write_text(
        EXPERIMENT.format(seeds=seeds) + "\n".join(STAGE.format(stage=s) for s in STAGES)
    )
    return str(path)


def run_experiment(preset: str, out: Path) -> None:
    experiment.main(
        ["--backbone", "tiny", "--preset", preset, "--out", str(out), "--device", "cpu"]
    )


@pytest.fixture(scope="module")
def exp(tmp_path_factory, one_thread) -> Path:
    root = tmp_path_factory.mktemp("exp")
    out = root / "run"
    run_experiment(preset(root / "tiny.toml", 2), out)
    return out


def test_the_training_seed_reaches_every_stage(exp):
    # SIDs shared
    assert (exp / "init" / "pauserec.json").is_file() and not (exp / "seed0" / "init").exists()
    for stage in ("cpt", "sft", "pause-pretrain", "pause-k5", "think-only"):
        a, b = (checkpoint.load(exp / f"seed{s}" / stage) for s in (0, 1))
        assert (a.meta["train_seed"], b.meta["train_seed"]) == (0, 1), stage
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert not all(torch.equal(sa[k], sb[k]) for k in sa), (
            f"{stage}: seeds 0 and 1 trained the same model"
        )


def test_every_cell_is_evaluated_with_its_identity_and_the_baselines_join(exp):
    rows = pd.concat([pd.read_csv(p) for p in exp.rglob("per_user.csv")], ignore_index=True)
    cells = rows.groupby(["cell"])["train_seed"].apply(
        lambda s: sorted(set(s.dropna().astype(int)))
    )
    assert cells["pause-k5"] == [0, 1] and cells["sft"] == [0, 1] and cells["think-only"] == [0, 1]
    assert cells["popularity"] == [] and cells["markov"] == []  # deterministic: no training seed
    users = rows.groupby("cell")["user"].apply(lambda u: tuple(sorted(set(u))))
    # every condition on the same 8 users: paired statistics are possible
    assert users.nunique() == 1
    latency = json.loads((exp / "seed0" / "eval" / "pause-k5" / "metrics.json").read_text())
    assert len(latency["latency_batches_ms"]) == 1 and latency["device"].startswith("cpu")


def test_baselines_share_the_conditions_history_and_targets(exp):
    sft = checkpoint.read_meta(exp / "seed0" / "sft")
    for name in ("popularity", "markov"):
        metrics = json.loads((exp / "baselines" / name / "metrics.json").read_text())
        rows = pd.read_csv(exp / "baselines" / name / "per_user.csv")
        assert metrics["max_history"] == sft["dataset"]["max_history"] == 5
        assert set(rows["train_targets"]) == {sft["train_targets"]}


def test_best_of_candidates_are_chosen_among_on_the_valid_split():
    def names(**values) -> set[str]:
        args = experiment.ExperimentArgs(**values)
        return {c.name for c in experiment.candidates(args)}

    assert names(
        pause_counts=(1, 5, 10), pause_inits=("mean-text",), controls=("think-only", "filler")
    ) == {"pause-k1", "pause-k10", "pause-k5-mean-text", "filler-k5"}
    assert names(pause_counts=(5, 10), pause_inits=(), controls=("filler",)) == set()  # no choice
    assert names(pause_counts=(5,), pause_inits=(), controls=("think-only",)) == set()


def test_the_report_reads_the_experiment(exp):
    report = (exp / "report" / "REPORT.md").read_text()
    claims = pd.read_csv(exp / "report" / "claims.csv").set_index("key")
    assert "reproduced" not in set(claims["verdict"])  # two seeds can never earn a verdict
    assert claims.loc["vs_think_only", "compared"] == "pause-k5 vs think-only"
    # a tiny model may score below most-popular: that gate is first
    why = claims.loc["vs_think_only", "why"]
    assert claims.loc["vs_think_only", "verdict"].startswith("inconclusive")
    assert "2 seed(s), a verdict needs >= 3" in why or "is below most-popular's" in why, why
    assert "## Deviations from the paper" in report and "popularity" in report
    assert (exp / "probes" / "alignment" / "results.csv").is_file()


def test_a_rerun_skips_what_is_finished(exp, tmp_path):
    stamps = {p: p.stat().st_mtime_ns for p in exp.rglob("pauserec.json")}
    start = time.perf_counter()
    run_experiment(preset(tmp_path / "tiny.toml", 2), exp)
    assert time.perf_counter() - start < 60
    assert {p: p.stat().st_mtime_ns for p in exp.rglob("pauserec.json")} == stamps


def test_demo_entry_point(tmp_path, capsys, one_thread):
    """Two experiments (the recommendation comparison, the language-model part) and one report."""
    tiny = preset(tmp_path / "tiny.toml", 1)
    backbones = "--backbone tiny-untied --llm-backbone tiny --device cpu".split()
    demo.main([*backbones, "--preset", tiny, "--llm-preset", tiny, "--out", str(tmp_path / "demo")])
    printed = capsys.readouterr().out
    assert "== dataset ml-100k" in printed and "users         943" in printed
    assert re.search(r"demo finished in \d+s", printed)
    assert "== experiment: tiny-untied" in printed and "== experiment: tiny, preset" in printed
    for part in ("tiny-untied", "tiny"):
        assert (tmp_path / "demo" / part / "seed0" / "eval" / "pause-k5" / "metrics.json").is_file()
    report = (tmp_path / "demo" / "report" / "REPORT.md").read_text()
    assert (tmp_path / "demo" / "report" / "REPORT.html").is_file()
    assert "tiny-untied" in report and "| tiny" in report


def _ratio(out: str, name: str) -> float:
    m = re.search(rf"^{name}: ([0-9.]+)", out, re.M)
    assert m, out[-2000:]
    return float(m.group(1))


def test_bench_ratio_lines(exp):
    ckpt = exp / "init"
    dec = run_script(
        "bench/decode.py", "--ckpt", ckpt, *"--n-users 4 --batch-size 4 --device cpu".split()
    )
    assert dec.returncode == 0, dec.stderr[-2000:]
    assert _ratio(dec.stdout, "speedup") > 0 and "outputs match up to ties" in dec.stdout
    steps = "--steps 2 --rounds 1 --warmup 1 --n-seqs 48 --batch-size 8 --device cpu"
    tr = run_script("bench/train.py", "--ckpt", ckpt, *steps.split())
    assert tr.returncode == 0, tr.stderr[-2000:]
    assert _ratio(tr.stdout, "speedup") > 0 and _ratio(tr.stdout, "speedup per CPU-second") > 0
