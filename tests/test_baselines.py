"""Classical baselines: hand-computed rankings, no leakage, a planted pattern SASRec must learn."""

import numpy as np
import pytest
import torch

from conftest import needs_amazon
from pauserec import data
from pauserec.errors import UserError
from pauserec.evaluation import baselines
from pauserec.evaluation.baselines import _common

# Training parts (seq[:-2]): u1 [0 1 2], u2 [1 2 0], u3 [2 1]; u4 has none (3 items).
# Popularity counts: item0 2, item1 3, item2 3, items 3/4/5 never (validation and test targets
# only). Transitions: 0->1 once, 1->2 twice, 2->0 once, 2->1 once.
TOY = {"u1": [0, 1, 2, 3, 4], "u2": [1, 2, 0, 3, 5], "u3": [2, 1, 2, 4], "u4": [0, 1, 5]}
POP_ORDER = [1, 2, 0, 3, 4, 5]  # counts 3, 3, 2, 0, 0, 0; ties by item index


@pytest.fixture()
def toy() -> tuple[data.Dataset, dict[str, list[data.Example]]]:
    ds = data.Dataset("toy", [data.Item(str(i), f"item {i}") for i in range(6)], TOY)
    return ds, data.split(ds)


def chain_dataset(
    n_items: int = 30, n_users: int = 120, length: int = 12, seed: int = 0
) -> data.Dataset:
    """Every item i is always followed by succ(i) = (7 i + 3) mod n_items; users start at random
    items."""
    rng = np.random.default_rng(seed)
    seqs = {}
    for u in range(n_users):
        seq = [int(rng.integers(n_items))]
        while len(seq) < length:
            seq.append((7 * seq[-1] + 3) % n_items)
        seqs[f"u{u}"] = seq
    return data.Dataset("chain", [data.Item(str(i), f"item {i}") for i in range(n_items)], seqs)


def test_training_sequences_rebuild_the_training_parts(toy):
    ds, sp = toy
    assert baselines.training_sequences(sp["train"]) == [[0, 1, 2], [1, 2, 0], [2, 1]]
    with_valid = baselines.training_sequences(sp["train"] + sp["valid"])
    assert with_valid == [[0, 1, 2, 3], [1, 2, 0, 3], [2, 1, 2], [0, 1]]
    long = chain_dataset(length=40)  # histories truncated to 3 items still chain back together
    assert baselines.training_sequences(data.split(long, max_history=3)["train"]) == [
        s[:-2] for s in long.sequences.values()
    ]


def test_popularity_known_answer(toy):
    ds, sp = toy
    model = baselines.make("popularity").fit(ds, sp["train"])
    assert model.counts.tolist() == [2, 3, 3, 0, 0, 0]
    assert model.recommend([[0], [1, 2]], top_k=3).tolist() == [[1, 2, 0], [1, 2, 0]]
    excl = baselines.make("popularity", exclude_history=True).fit(ds, sp["train"])
    assert excl.recommend([[0], [1, 2]], top_k=3).tolist() == [[1, 2, 3], [0, 3, 4]]


def test_markov_known_answer(toy):
    ds, sp = toy
    model = baselines.make("markov", window=2, decay=0.5).fit(ds, sp["train"])
    assert model.transitions.toarray()[[0, 1, 2]].tolist() == [
        [0, 1, 0, 0, 0, 0],
        [0, 0, 2, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
    ]
    # [0, 1]: P(.|1) = {2: 1}, weight 1; P(.|0) = {1: 1}, weight 0.5; the rest by popularity.
    # [2]: P(.|2) = {0: .5, 1: .5}, a tie broken by popularity (1 before 0).
    # [5]: item 5 is never followed by anything in training: pure popularity.
    items, scores = model.recommend_scored([[0, 1], [2], [5]], top_k=6)
    assert items.tolist() == [[2, 1, 0, 3, 4, 5], [1, 0, 2, 3, 4, 5], POP_ORDER]
    assert scores[0].tolist() == [1.0, 0.5, 0, 0, 0, 0]
    window1 = baselines.make("markov", window=1).fit(ds, sp["train"])
    assert window1.recommend([[1, 2]], top_k=3).tolist() == [[1, 0, 2]]  # item 1 no longer votes
    excl = baselines.make("markov", window=2, exclude_history=True).fit(ds, sp["train"])
    assert excl.recommend([[0, 1]], top_k=4).tolist() == [[2, 3, 4, 5]]


def test_no_held_out_target_is_counted():
    """Item 9 is only ever a test target, item 8 only a validation target: training never sees
    them."""
    seqs = {"a": [0, 1, 2, 3, 8, 9], "b": [1, 2, 3, 0, 2, 9], "c": [3, 2, 1, 8, 7]}
    ds = data.Dataset("plant", [data.Item(str(i), "") for i in range(10)], seqs)
    sp = data.split(ds)
    pop = baselines.make("popularity").fit(ds, sp["train"])
    markov = baselines.make("markov").fit(ds, sp["train"])
    for planted in (8, 9):
        assert pop.counts[planted] == 0
        assert markov.transitions[:, planted].sum() == 0 and markov.transitions[planted].sum() == 0
    assert all(8 not in s and 9 not in s for s in baselines.training_sequences(sp["train"]))
    # the check bites
    assert baselines.make("popularity").fit(ds, sp["train"] + sp["valid"]).counts[8] == 2


def test_rank_breaks_ties_by_the_given_order():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, users = int(rng.integers(1, 30)), int(rng.integers(1, 5))
        k = int(rng.integers(1, n + 1))
        scores = rng.integers(0, 3, (users, n)).astype(float)
        scores[rng.random((users, n)) < 0.2] = -np.inf
        order = rng.permutation(n)
        items, vals = _common.rank(scores, k, order)
        # sort by score, then order
        ref = np.argsort(-scores[:, order], axis=1, kind="stable")[:, :k]
        assert (items == order[ref]).all()
        assert (vals == np.take_along_axis(scores, items, 1)).all()


def test_sasrec_learns_a_planted_successor():
    torch.set_num_threads(1)
    ds = chain_dataset()
    sp = data.split(ds)
    test = sp["test"]
    model = baselines.make("sasrec", dim=32, epochs=25, batch_size=32, dropout=0.1, lr=3e-3)
    summary, frame = baselines.evaluate_baseline(model.fit(ds, sp["train"], seed=0), test)
    untrained = baselines.make("sasrec", dim=32, epochs=0).fit(ds, sp["train"], seed=0)
    before, _ = baselines.evaluate_baseline(untrained, test)
    assert summary["recall@1"] >= 0.95, summary
    assert before["recall@1"] < 0.3  # an untrained model does not pass by chance
    assert summary["epochs_run"] == 25 and len(frame) == len(test)


def test_sasrec_is_deterministic_under_a_seed():
    ds = chain_dataset(n_users=40)
    sp = data.split(ds)
    hist = [ex.history for ex in sp["test"]]
    runs = [
        baselines.make("sasrec", dim=16, epochs=2).fit(ds, sp["train"], seed=s) for s in (0, 0, 1)
    ]
    a, b, c = (m.recommend_scored(hist, top_k=5) for m in runs)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])  # another seed, other weights


def test_sasrec_stops_early_on_the_validation_split():
    """On a planted chain validation NDCG@10 plateaus: training stops ``patience`` epochs after its
    best epoch, far below the epoch cap, keeps the best epoch's weights, and is reproducible."""
    ds = chain_dataset(n_users=60)
    sp = data.split(ds)
    fit = lambda: baselines.make(  # noqa: E731
        "sasrec", dim=32, epochs=200, patience=3, batch_size=32, dropout=0.1, lr=3e-3
    ).fit(ds, sp["train"], seed=0, valid=sp["valid"])
    model = fit()
    info = model.info
    assert info["stopped_by"] == "patience" and info["epochs_run"] < 200
    assert info["epochs_run"] == info["best_epoch"] + 3 == len(info["valid_ndcg@10"])
    assert model.validate(sp["valid"]) == max(info["valid_ndcg@10"]) > 0.9  # the best weights
    again = fit()
    assert again.info["valid_ndcg@10"] == info["valid_ndcg@10"]
    hist = [ex.history for ex in sp["test"]]
    assert np.array_equal(model.recommend_scored(hist, 5)[1], again.recommend_scored(hist, 5)[1])


def test_sasrec_budget_and_history_exclusion():
    ds = chain_dataset(n_users=40)
    sp = data.split(ds)
    quick = baselines.make("sasrec", dim=16, epochs=50, max_seconds=0.0).fit(ds, sp["train"])
    assert quick.info["steps"] == 1 and quick.info["out_of_time"]
    excl = baselines.make("sasrec", dim=16, epochs=1, exclude_history=True).fit(ds, sp["train"])
    hist = [ex.history for ex in sp["test"]]
    items = excl.recommend(hist, top_k=10)
    assert not any(set(row) & set(h) for row, h in zip(items.tolist(), hist))


def test_evaluate_baseline_frame_matches_summary(toy):
    ds, sp = toy
    model = baselines.make("popularity").fit(ds, sp["train"])
    summary, frame = baselines.evaluate_baseline(model, sp["test"], top_k=6)
    # test targets 4, 5, 4, 5 sit at ranks 5, 6, 5, 6 of POP_ORDER
    assert frame["rank"].tolist() == [5, 6, 5, 6]
    assert summary["recall@5"] == 0.5 and summary["recall@1"] == 0.0
    assert summary["ndcg@10"] == pytest.approx(frame["ndcg@10"].mean())
    assert summary["baseline"] == "popularity" and summary["n_users"] == 4
    assert {"user", "target", "rank", "history_len", "hit@10", "top_items"} <= set(frame.columns)


def test_unknown_names_and_options_are_user_errors(toy):
    ds, sp = toy
    with pytest.raises(UserError, match="popularity, markov, sasrec"):
        baselines.make("bpr")
    with pytest.raises(UserError, match="window"):
        baselines.make("markov", windw=3)
    with pytest.raises(UserError):
        baselines.make("sasrec", epochs="many")
    with pytest.raises(UserError, match="fit"):
        baselines.make("markov").recommend([[0]])
    with pytest.raises(UserError, match="top_k"):
        baselines.make("popularity").fit(ds, sp["train"]).recommend([[0]], top_k=7)
    assert set(baselines.NAMES) == set(baselines.CLASSES)


def test_ml100k_reference_numbers():
    """Most-popular and first-order transitions on ml-100k reproduce the reference
    Recall/NDCG@10."""
    ds = data.load_dataset("ml-100k")
    sp = data.split(ds)
    for name, recall, ndcg in (("popularity", 0.050, 0.022), ("markov", 0.120, 0.064)):
        summary, _ = baselines.evaluate_baseline(
            baselines.make(name).fit(ds, sp["train"]), sp["test"]
        )
        assert summary["recall@10"] == pytest.approx(recall, abs=0.003), name
        assert summary["ndcg@10"] == pytest.approx(ndcg, abs=0.003), name


@needs_amazon
def test_beauty_popularity_reference_numbers():
    ds = data.load_dataset("beauty")
    sp = data.split(ds)
    summary, _ = baselines.evaluate_baseline(
        baselines.make("popularity").fit(ds, sp["train"]), sp["test"]
    )
    assert summary["recall@10"] == pytest.approx(0.011, abs=0.001)
    assert summary["ndcg@10"] == pytest.approx(0.005, abs=0.001)


def test_baseline_command_reads_the_llms_history_and_targets(tmp_path):
    """--max-history and --train-targets cut the split as the LLM's stage did; both are recorded."""
    import json

    import pandas as pd

    from pauserec.cli import run
    from pauserec.evaluation.baselines import command

    out = tmp_path / "sasrec"
    argv = [
        "--model",
        "sasrec",
        "--dataset",
        "ml-100k",
        "--out",
        str(out),
        "--n-users",
        "40",
        "--max-history",
        "3",
        "--train-targets",
        "last",
        "--sasrec-epochs",
        "4",
        "--sasrec-patience",
        "1",
        "--device",
        "cpu",
    ]
    assert run(command.main, argv) == 0
    rows = pd.read_csv(out / "per_user.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    assert rows["history_len"].max() == 3 and set(rows["train_targets"]) == {"last"}
    info = metrics["baseline_info"]
    assert metrics["max_history"] == 3 and info["max_len"] == 3
    assert info["train_examples"] == 943  # one example per user
    assert len(info["valid_ndcg@10"]) == info["epochs_run"] <= 4  # stopped on the valid split
    valid = tmp_path / "sasrec-valid"
    assert run(command.main, [*argv[:5], str(valid), *argv[6:], "--split", "valid"]) == 0
    scored_on_valid = json.loads((valid / "metrics.json").read_text())["baseline_info"]
    assert scored_on_valid["valid_ndcg@10"] == [] and scored_on_valid["stopped_by"] == "epochs"


def test_baseline_command_writes_the_evaluation_format_on_the_llms_users(tiny_ckpt_path, tmp_path):
    """The CLI's rows carry the baseline's identity and the same users as `evaluate` samples."""
    import json

    import pandas as pd

    from pauserec.cli import run
    from pauserec.evaluation import evaluate
    from pauserec.evaluation.baselines import command
    from pauserec.model import checkpoint

    out = tmp_path / "markov"
    assert (
        run(
            command.main,
            [
                "--model",
                "markov",
                "--dataset",
                "ml-100k",
                "--out",
                str(out),
                "--n-users",
                "50",
                "--eval-seed",
                "3",
            ],
        )
        == 0
    )
    rows = pd.read_csv(out / "per_user.csv")
    users = [
        ex.user for ex in evaluate.examples_for(checkpoint.load(tiny_ckpt_path), "test", 50, seed=3)
    ]
    # pairable with a checkpoint's evaluation
    assert sorted(rows["user"].astype(str)) == sorted(users)
    assert (
        set(rows["cell"]) == {"markov"}
        and set(rows["stage"]) == {"baseline"}
        and rows["train_seed"].isna().all()
    )
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["recall@10"] == pytest.approx(((rows["rank"] > 0) & (rows["rank"] <= 10)).mean())
    assert "coverage@10" in summary and summary["variant"] == "baseline"
    assert run(command.main, ["--model", "markov", "--out", str(out)]) == 2  # the output is kept
