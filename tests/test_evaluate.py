import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from pauserec import cli, data, files
from pauserec.__main__ import main as pauserec_main
from pauserec.decoding import recommend
from pauserec.evaluation.evaluate import evaluate, examples_for, merge, popular_items
from pauserec.model import checkpoint
from pauserec.model.prompts import PromptBuilder


def test_examples_are_the_leave_one_out_split_and_seeded(tiny_ckpt):
    full = examples_for(tiny_ckpt, "test")
    want = data.split(data.load_dataset("ml-100k"), tiny_ckpt.meta["dataset"]["max_history"])[
        "test"
    ]
    assert full == want
    ds = data.load_dataset("ml-100k")
    ex = full[0]
    seq = ds.sequences[ex.user]
    # target never in view
    assert ex.target == seq[-1] and ex.history == tuple(seq[-1 - len(ex.history) : -1])
    a, b = examples_for(tiny_ckpt, "test", 25, seed=1), examples_for(tiny_ckpt, "test", 25, seed=1)
    assert a == b and len({e.user for e in a}) == 25 and set(a) <= set(full)
    assert a != examples_for(tiny_ckpt, "test", 25, seed=2)
    assert examples_for(tiny_ckpt, "valid", 10**6) == data.split(ds, 20)["valid"]
    # a larger sample extends a smaller one
    assert set(examples_for(tiny_ckpt, "test", 10, seed=1)) <= set(a)


def test_planted_targets_give_hand_computed_metrics(tiny_ckpt):
    """Make each target the model's own 1st / 3rd / 25th-best item: the metrics are then known."""
    exs = examples_for(tiny_ckpt, "test", 3, seed=0)
    recs = recommend(
        tiny_ckpt.model,
        PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog),
        [e.history for e in exs],
        top_k=30,
        beams=30,
    )
    planted = [
        data.Example(e.user, e.history, int(recs.items[i, pos]))
        for i, (e, pos) in enumerate(zip(exs, [0, 2, 24]))
    ]
    summary, frame = evaluate(tiny_ckpt, examples=planted, beams=30, latency_samples=2)
    assert summary["latency_samples"] == 2 and len(summary["latency_batches_ms"]) == 1
    assert frame["rank"].tolist() == [1, 3, 0]
    assert summary["recall@1"] == pytest.approx(1 / 3) and summary["recall@5"] == pytest.approx(
        2 / 3
    )
    assert summary["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert (
        summary["invalid_rate"] == 0
        and summary["n_users"] == 3
        and summary["latency_ms_per_sample"] > 0
    )
    for _, row in frame.iterrows():  # rank is the target's place in the stored top-20 list
        top = [int(x) for x in row["top_items"].split()]
        assert row["rank"] == (top.index(row["target"]) + 1 if row["target"] in top else 0)


def test_cli_writes_self_describing_results_and_never_touches_the_checkpoint(
    tiny_ckpt_path, tmp_path
):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt_path, ckpt)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        str(ckpt),
        "--split",
        "valid",
        "--out",
        str(out),
        "--n-users",
        "12",
        "--latency-samples",
        "16",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
    ]
    assert cli.run(pauserec_main, argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    frame = pd.read_csv(out / "per_user.csv")
    assert len(frame) == 12 and {"user", "target", "rank", "hit@10", "ndcg@10"} <= set(
        frame.columns
    )
    ident = checkpoint.load(ckpt).identity()
    for key in checkpoint.IDENTITY:  # every row says which checkpoint it measured
        want = "" if ident[key] in (None, "") else str(ident[key])
        assert (
            frame[key].astype(object).where(frame[key].notna(), "").astype(str) == want
        ).all(), key
        assert metrics[key] == ident[key]
    assert (frame["split"] == "valid").all() and (frame["eval_seed"] == 0).all()
    hits = [r in range(1, 11) for r in frame["rank"]]
    # from the ranks, not the summary code
    assert metrics["recall@10"] == pytest.approx(np.mean(hits))
    assert (
        metrics["beams"] == 20
        and metrics["invalid_rate"] == 0
        and metrics["throughput_users_per_s"] > 0
    )
    assert metrics["device"].startswith("cpu") and metrics["dtype"] == "fp32"
    assert len(metrics["latency_batches_ms"]) == 1 and metrics["latency_samples"] == 16
    assert {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()} == before
    assert not list(tmp_path.glob(".*tmp")) and not list(tmp_path.glob(".*lock"))


@pytest.mark.parametrize(
    "extra",
    [
        ["--split", "dev"],
        ["--n-users", "0"],
        ["--beams", "5"],
        [],
        ["--n-pauses", "-1"],
        ["--device", "tpu"],
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_ckpt_path, tmp_path, capsys, extra):
    target = str(tmp_path) if not extra else str(tiny_ckpt_path)  # []: tmp_path is not a checkpoint
    out = tmp_path / "out"
    assert cli.run(pauserec_main, ["evaluate", target, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not out.exists()


def test_pause_checkpoint_is_decoded_with_its_pauses(tiny_ckpt):
    tiny_ckpt.meta.update(variant="pause", n_pauses=4)
    exs = examples_for(tiny_ckpt, "test", 4, seed=3)
    summary, _ = evaluate(tiny_ckpt, examples=exs, latency_samples=0)
    assert (
        summary["prompt"] == "pause"
        and summary["prompt_pauses"] == 4
        and "latency_ms_per_sample" not in summary
    )
    builder = PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog)
    direct = recommend(
        tiny_ckpt.model, builder, [e.history for e in exs], variant="pause", n_pauses=4, top_k=20
    )
    _, frame = evaluate(tiny_ckpt, examples=exs, latency_samples=0)
    assert frame["top_items"].tolist() == [" ".join(map(str, r)) for r in direct.items.tolist()]
    assert np.isfinite(frame["top_score"]).all()


def test_health_flags_a_recommender_that_ignores_the_user():
    from pauserec.evaluation import metrics

    same = np.tile(np.arange(10), (20, 1))  # every user gets items 0..9
    h = metrics.health(same, n_catalog=100, popular=list(range(10)))
    assert h["user_independent"] and h["distinct_lists@10"] == 1 / 20 and h["coverage@10"] == 0.1
    assert h["popular_overlap@10"] == 1.0 and h["modal_list_share@10"] == 1.0
    own = np.arange(200).reshape(20, 10)  # every user a list of their own
    h = metrics.health(own, n_catalog=200, popular=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert not h["user_independent"] and h["distinct_lists@10"] == 1.0 and h["coverage@10"] == 1.0
    assert h["popular_overlap@10"] == pytest.approx(1 / 20)  # only the first user shares them


def test_existing_out_is_refused_without_overwrite(tiny_ckpt_path, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    argv = [
        "evaluate",
        str(tiny_ckpt_path),
        "--out",
        str(out),
        "--n-users",
        "2",
        "--latency-samples",
        "0",
    ]
    assert cli.run(pauserec_main, argv) == 2
    assert "exists" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep me"
    assert cli.run(pauserec_main, [*argv, "--overwrite"]) == 2  # a folder evaluate did not write
    assert "not written by" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"
    (out / "mine.txt").unlink()
    assert cli.run(pauserec_main, argv) == 0
    assert cli.run(pauserec_main, [*argv, "--overwrite"]) == 0  # its own earlier output: replaced
    assert (out / "metrics.json").is_file() and files.written_by(out) == "pauserec evaluate"
    assert (
        cli.run(pauserec_main, ["evaluate", str(tiny_ckpt_path), "--out", str(tiny_ckpt_path)]) == 2
    )
    assert checkpoint.read_meta(tiny_ckpt_path)["stage"] == "init"  # the input is intact


def test_chunks_merged_equal_one_evaluation_of_all_their_users(tiny_ckpt, tmp_path):
    # one user a batch: the same numbers either way
    exs = examples_for(tiny_ckpt, "test", 24, seed=0)
    whole, frame = evaluate(tiny_ckpt, examples=exs, beams=20, batch_size=1)
    parts = [
        evaluate(tiny_ckpt, examples=exs[:5], beams=20, batch_size=1),
        evaluate(tiny_ckpt, examples=exs[5:], beams=20, batch_size=1),
    ]
    files.write_csv(tmp_path / "part.csv", parts[1][1])  # as a resumed run reads a part back
    parts[1] = (parts[1][0], pd.read_csv(tmp_path / "part.csv", keep_default_na=False))
    merged, rows = merge(tiny_ckpt, parts, popular_items(tiny_ckpt))
    assert rows.to_csv(index=False) == frame.to_csv(index=False)  # what per_user.csv holds
    timing = ("beam_seconds", "throughput_users_per_s")
    assert {k: v for k, v in merged.items() if k not in timing} == {
        k: v for k, v in whole.items() if k not in timing
    }
    assert merged["beam_seconds"] == parts[0][0]["beam_seconds"] + parts[1][0]["beam_seconds"]
