import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from pauserec import checkpoint, cli, data
from pauserec.__main__ import main as pauserec_main
from pauserec.decode import recommend
from pauserec.evaluate import evaluate, examples_for
from pauserec.prompts import PromptBuilder


def test_examples_are_the_leave_one_out_split_and_seeded(tiny_ckpt):
    full = examples_for(tiny_ckpt, "test")
    want = data.split(data.load_dataset("ml-100k"), tiny_ckpt.meta["dataset"]["max_history"])["test"]
    assert full == want
    ds = data.load_dataset("ml-100k")
    ex = full[0]
    seq = ds.sequences[ex.user]
    assert ex.target == seq[-1] and ex.history == tuple(seq[-1 - len(ex.history):-1])  # target never in view
    a, b = examples_for(tiny_ckpt, "test", 25, seed=1), examples_for(tiny_ckpt, "test", 25, seed=1)
    assert a == b and len({e.user for e in a}) == 25 and set(a) <= set(full)
    assert a != examples_for(tiny_ckpt, "test", 25, seed=2)
    assert examples_for(tiny_ckpt, "valid", 10**6) == data.split(ds, 20)["valid"]


def test_planted_targets_give_hand_computed_metrics(tiny_ckpt):
    """Make each target the model's own 1st / 3rd / 25th-best item: the metrics are then known."""
    exs = examples_for(tiny_ckpt, "test", 3, seed=0)
    recs = recommend(tiny_ckpt.model, PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog),
                     [e.history for e in exs], top_k=30, beams=30)
    planted = [data.Example(e.user, e.history, int(recs.items[i, pos]))
               for i, (e, pos) in enumerate(zip(exs, [0, 2, 24]))]
    summary, frame = evaluate(tiny_ckpt, examples=planted, beams=30, latency_samples=2)
    assert frame["rank"].tolist() == [1, 3, 0]
    assert summary["recall@1"] == pytest.approx(1 / 3) and summary["recall@5"] == pytest.approx(2 / 3)
    assert summary["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert summary["invalid_rate"] == 0 and summary["n_users"] == 3 and summary["latency_ms_per_sample"] > 0
    for _, row in frame.iterrows():  # rank is the target's place in the stored top-20 list
        top = [int(x) for x in row["top_items"].split()]
        assert row["rank"] == (top.index(row["target"]) + 1 if row["target"] in top else 0)


def test_cli_writes_results_and_records_metrics(tiny_ckpt_path, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt_path, ckpt)
    out = tmp_path / "eval"
    argv = ["evaluate", str(ckpt), "--split", "valid", "--out", str(out), "--n-users", "12",
            "--latency-samples", "4"]
    assert cli.run(pauserec_main, argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    frame = pd.read_csv(out / "per_user.csv")
    assert len(frame) == 12 and {"user", "target", "rank", "hit@10", "ndcg@10"} <= set(frame.columns)
    for k in (1, 5, 10, 20):
        assert metrics[f"recall@{k}"] == pytest.approx(frame[f"hit@{k}"].mean())
        assert metrics[f"ndcg@{k}"] == pytest.approx(frame[f"ndcg@{k}"].mean())
    assert metrics["beams"] == 20 and metrics["invalid_rate"] == 0 and metrics["throughput_users_per_s"] > 0
    stored = checkpoint.read_meta(ckpt)["metrics"]["valid"]
    assert stored["recall@20"] == metrics["recall@20"] and stored["n_users"] == 12
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temp dirs left behind


@pytest.mark.parametrize("extra", [["--split", "dev"], ["--n-users", "0"], ["--beams", "5"], []])
def test_bad_input_is_one_line_and_writes_nothing(tiny_ckpt_path, tmp_path, capsys, extra):
    target = str(tmp_path) if not extra else str(tiny_ckpt_path)  # []: tmp_path is not a checkpoint
    out = tmp_path / "out"
    assert cli.run(pauserec_main, ["evaluate", target, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not out.exists()


def test_pause_checkpoint_is_decoded_with_its_pauses(tiny_ckpt):
    tiny_ckpt.meta.update(variant="pause", k=4)
    exs = examples_for(tiny_ckpt, "test", 4, seed=3)
    summary, _ = evaluate(tiny_ckpt, examples=exs, latency_samples=0)
    assert summary["variant"] == "pause" and summary["k"] == 4 and "latency_ms_per_sample" not in summary
    builder = PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog)
    direct = recommend(tiny_ckpt.model, builder, [e.history for e in exs], variant="pause", k=4, top_k=20)
    _, frame = evaluate(tiny_ckpt, examples=exs, latency_samples=0)
    assert frame["top_items"].tolist() == [" ".join(map(str, r)) for r in direct.items.tolist()]
    assert np.isfinite(frame["top_score"]).all()
