"""The one-command GPU run, rehearsed on the CPU with the tiny backbone on a few hundred users, so the
script the GPU window depends on cannot rot: prepare -> run -> export -> make_report."""

from __future__ import annotations

import json
import tarfile

import pytest

from analysis import make_report
from driver import gpu_prepare, gpu_run
from pauserec.config import STAGES

pytestmark = pytest.mark.slow  # trains six stages and evaluates four cells

STAGE = """[train.{stage}]
n_train = 24
epochs = 2
batch_size = 8
dtype = "fp32"
progress = false
save_every = 0
"""


def test_prepare_then_run_then_report(tmp_path, capsys):
    preset = tmp_path / "rehearsal.toml"
    preset.write_text("\n".join(STAGE.format(stage=s) for s in STAGES))
    plan = gpu_prepare.main(["--dataset", "ml-100k", "--backbone", "tiny", "--preset", str(preset), "--no-wheels",
                             "--out", str(tmp_path / "gpu_run"), "--max-history", "5", "--tokens-per-s", "2000"])
    printed = capsys.readouterr().out
    assert "minutes at 2k tokens/s" in printed and set(plan["stages"]) == {c.name for c in gpu_prepare.STAGE_PLAN}
    assert all(s["steps"] == 6 and s["tokens"] > 0 for s in plan["stages"].values())  # 24 seqs / 8 x 2 epochs
    assert (tmp_path / "gpu_run" / "run" / "data" / "ml-100k" / "ml-100k.inter.json").is_file()
    record = gpu_run.main([str(tmp_path / "gpu_run" / "run"), "--work", str(tmp_path / "work"), "--export",
                           str(tmp_path / "export"), "--budget-s", "600", "--max-users", "300", "--eval-batch", "32",
                           "--latency-samples", "32", "--sasrec-seconds", "2", "--device", "cpu"])
    cells = set(record["metrics"])
    assert {"sft", "pause-k5", "think-only", "cot-template", "popularity", "markov", "sasrec"} <= cells
    assert record["evaluation"]["users"] == 300 and all(v["scale"] > 0 for v in record["scales"].values())
    assert json.loads((tmp_path / "export" / "results.json").read_text())["seconds"] < 600
    with tarfile.open(tmp_path / "export" / "results.tar.gz") as tar:
        names = tar.getnames()
        assert not [n for n in names if n.endswith(".safetensors")]  # results only, no weights
        tar.extractall(tmp_path / "results", filter="data")
    assert sum(n.endswith("per_user.csv") for n in names) == 7
    report = make_report.main([str(tmp_path / "results"), "--out", str(tmp_path / "report"), "--n-resamples", "200"])
    text = report.read_text()
    assert "pause-k5 vs think-only" in text and "popularity" in text
