"""The pipeline command: every stage in order, skipping finished ones on a rerun."""

import json
import shutil
import time

import pytest

from driver import pipeline
from pauserec import registry
from pauserec.config import STAGES
from pauserec.model import checkpoint
from pauserec.training import trainstate

pytestmark = pytest.mark.slow  # trains models, starts processes or kernels


TINY_PRESET = """
[pipeline]
max_history = 5
{stages}
"""
STAGE = """[train.{stage}]
n_train = 24
epochs = 1
batch_size = 8
{extra}device = "cpu"
dtype = "fp32"
progress = false
save_every = 0
log_every = 1
"""


def write_preset(path, extra: str = "") -> str:
    body = "\n".join(STAGE.format(stage=s, extra=extra) for s in STAGES)
    path.write_text(TINY_PRESET.format(stages=body))
    return str(path)


def test_pipeline_runs_every_stage_then_skips_them(tiny_ckpt_path, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    shutil.copytree(tiny_ckpt_path, out / "init")  # a run whose init finished: skipped, not rebuilt
    (out / pipeline.RUN_MARKER).write_text(json.dumps({"kind": "pipeline"}))  # no settings recorded
    preset = write_preset(tmp_path / "tiny.toml")
    summary = pipeline.main(["--backbone", "tiny", "--preset", preset, "--out", str(out)])
    assert [r["stage"] for r in summary["stages"]] == ["init", *STAGES]
    assert [r["status"] for r in summary["stages"]] == ["skipped"] + ["ran"] * 5
    for stage in STAGES:
        meta = checkpoint.read_meta(out / stage)
        assert meta["stage"] == stage and meta["parent"] == str(out / registry.PARENT[stage])
        assert meta["train_seed"] == 0
        assert (
            meta["timings"][stage]["wall_s"] > 0 and (out / stage / trainstate.LOG_FILE).is_file()
        )
    assert checkpoint.read_meta(out / "pause-sft")["pause_init"] == "pretrained"
    # template: history only
    assert checkpoint.read_meta(out / "cot-sft")["rationale"]["leaky"] is False
    printed = capsys.readouterr().out
    assert "[6/6] cot-sft" in printed and "total this run" in printed
    stamp = (out / "sft" / checkpoint.META_FILE).stat().st_mtime_ns
    t = time.perf_counter()
    again = pipeline.main(["--backbone", "tiny", "--preset", preset, "--out", str(out)])
    assert {r["status"] for r in again["stages"]} == {"skipped"} and time.perf_counter() - t < 10
    assert (out / "sft" / checkpoint.META_FILE).stat().st_mtime_ns == stamp
    saved = json.loads((out / "pipeline.json").read_text())
    assert saved["stages"][2]["stage"] == "sft" and saved["stages"][2]["wall_s"] > 0
    run = json.loads((out / pipeline.RUN_MARKER).read_text())  # the settings, recorded now
    assert (run["kind"], run["dataset"], run["backbone"]) == ("pipeline", "ml-100k", "tiny")
    assert run["seed"] == 0


def test_pipeline_rejects_unknown_stages_and_keys(tmp_path):
    from pauserec.errors import UserError

    with pytest.raises(UserError, match="unknown value 'dance'"):
        pipeline.main(["--out", str(tmp_path / "r"), "--stages", "cpt,dance"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[pipeline]\nmax_histroy = 5\n")
    with pytest.raises(UserError, match="max_histroy"):
        pipeline.main(["--out", str(tmp_path / "r"), "--preset", str(bad)])


@pytest.mark.slow
def test_quick_pipeline_on_smollm2_with_tiny_step_counts(tmp_path):
    """The real quick preset's stages on SmolLM2, capped at 2 steps each (minutes on 2 cores)."""
    import tomllib

    from pauserec.config import CONFIG_DIR

    quick = tomllib.loads((CONFIG_DIR / "quick.toml").read_text())
    lines = ["[sid]"] + [f"{k} = {v!r}" for k, v in quick["sid"].items()]
    lines += ["[pipeline]"] + [f"{k} = {json.dumps(v)}" for k, v in quick["pipeline"].items()]
    for stage, table in quick["train"].items():
        table = {
            **table,
            "max_steps": 2,
            "n_train": 8,
            "batch_size": 4,
            "epochs": 1,
            "progress": False,
        }
        if table.get("valid_every"):
            table["valid_users"] = 8
        lines += [f"[train.{stage}]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    preset = tmp_path / "quick-2steps.toml"
    preset.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    summary = pipeline.main(
        [
            "--dataset",
            "ml-100k",
            "--backbone",
            "smollm2-135m",
            "--preset",
            str(preset),
            "--out",
            str(out),
        ]
    )
    assert [r["status"] for r in summary["stages"]] == ["ran"] * 6
    ps = checkpoint.load(out / "pause-sft")
    assert ps.meta["n_pauses"] == quick["train"]["pause-sft"].get("n_pauses", 5)
    assert ps.meta["backbone"] == "smollm2-135m"
    assert ps.meta["dataset"]["max_history"] == quick["pipeline"]["max_history"]
    assert all(checkpoint.read_meta(out / s)["timings"][s]["steps"] == 2 for s in STAGES)
