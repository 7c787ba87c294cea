"""probes.alignment: the CLI contract, similarity math, and known answers planted in a tiny
model."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from pauserec import cli, data, files, tokens
from pauserec.model import backbone
from pauserec.model.catalog import Catalog
from pauserec.model.checkpoint import Checkpoint
from probes import activations as act
from probes import alignment
from probes import similarity as sim

FAST = ["--no-umap", "--n-perm", "5", "--n-context", "8"]


def fast_args(**kw) -> alignment.Args:
    return alignment.Args(**{"umap": False, "n_perm": 5, "n_context": 8, "seed": 0, **kw})


def one_to_one(ckpt: Checkpoint, n: int = 128) -> Checkpoint:
    """A copy whose catalog holds ``n`` titled items with SIDs ``<a_i><b_i><c_i><d_0>``: every SID
    token but ``<d_0>`` belongs to exactly one item, so a planted signal has a known answer."""
    titled = [it for it in ckpt.catalog.items if it.title][:n]
    items = [data.Item(it.item_id, it.title, it.categories) for it in titled]
    catalog = Catalog.from_codes(items, np.array([[i, i, i, 0] for i in range(len(items))]))
    return Checkpoint(
        copy.deepcopy(ckpt.model), ckpt.tokenizer, catalog, dict(ckpt.meta), ckpt.path
    )


def title_mean(ckpt: Checkpoint, title: str) -> torch.Tensor:
    ids = ckpt.tokenizer.encode(" " + title, add_special_tokens=False)
    return ckpt.model.get_input_embeddings().weight[ids].mean(0)


@torch.no_grad()
def plant(ckpt: Checkpoint, rows: str) -> Checkpoint:
    """SID rows := the item's title mean (``title``) or fresh random vectors (``random``)."""
    w = ckpt.model.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(1)
    scale = w.std()
    for it in ckpt.catalog.items:
        row = (
            title_mean(ckpt, it.title)
            if rows == "title"
            else scale * torch.randn(w.shape[1], generator=gen)
        )
        for t in it.sid[:3]:
            w[ckpt.tokenizer.convert_tokens_to_ids(t)] = row
    w[ckpt.tokenizer.convert_tokens_to_ids("<d_0>")] = 0.0
    return ckpt


def summary(df: pd.DataFrame, metric: str, **eq) -> float:
    rows = df[df["metric"] == metric]
    for key, value in eq.items():
        rows = rows[rows[key] == value]
    assert len(rows), f"no {metric} rows"
    return float(rows["value"].mean())


def test_main_writes_a_tidy_trajectory(tiny_ckpt_path, tmp_path):
    out = tmp_path / "align"
    df = alignment.main([str(tiny_ckpt_path), str(tiny_ckpt_path), "--out", str(out), *FAST])
    assert (df["metric"] == "cka").sum() == 2 * 2  # two views, once per checkpoint
    assert {"ckpt", "stage", "variant", "metric", "value", "matrix"} <= set(df.columns)
    written = pd.read_csv(out / "results.csv")
    assert len(written) == len(df) and set(written["stage"]) == {"init"}
    assert json.loads((out / "meta.json").read_text())["probe"] == "alignment"
    assert sorted(p.name for p in out.iterdir()) == [files.MARKER, "meta.json", "results.csv"]
    # rows say what they are
    assert written["ckpt_hash"].nunique() == 1 and (written["cell"] == "init").all()
    metrics = set(df["metric"])
    for m in (
        "cosine_sid_title",
        "cka",
        "mknn",
        "procrustes_residual",
        "centroid_distance",
        "word_precision",
        "separability_acc",
        "context_cosine",
    ):
        assert m in metrics and f"{m}_baseline" in metrics
    assert {"neighbour_cosine", "bridge_position", "norm_q50", "cosine_sid_title_level"} <= metrics
    # one cosine row per titled item; tied tiny model: input embeddings only
    n_titled = sum(bool(it.title) for it in Catalog.read(tiny_ckpt_path / "items.jsonl").items)
    assert (df["metric"] == "cosine_sid_title").sum() == 2 * n_titled
    assert set(df["matrix"].dropna()) == {"input"}
    nb = df[df["metric"] == "neighbour_cosine"]
    assert nb["word"].str.fullmatch(r"[a-z]{3,}").all() and nb["rank"].max() == 10


def test_bad_checkpoint_is_one_line_error(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    code = cli.run(alignment.main, [str(tmp_path / "bad"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err and "pauserec.json" in err


def test_planted_title_rows_align_near_perfectly(tiny_ckpt):
    df = alignment.compute(plant(one_to_one(tiny_ckpt), "title"), fast_args())
    assert summary(df, "cosine_sid_title") > 0.999
    assert summary(df, "cosine_sid_title_baseline") < 0.9
    assert (
        summary(df, "cka", space="mean") > 0.999 and summary(df, "cka_baseline", space="mean") < 0.5
    )
    assert summary(df, "cka_random") < 0.5  # random rows with the same codes: no agreement
    assert summary(df, "mknn") > 0.99 and summary(df, "mknn_baseline") < 0.2
    assert summary(df, "procrustes_residual") < 1e-3 < summary(df, "procrustes_residual_baseline")
    assert summary(df, "cka_p", space="mean") == pytest.approx(1 / 6)
    # the SID mention and the title mention carry the same embedding direction before any block
    ctx = df[(df["metric"] == "context_cosine") & (df["space"] == "mention") & (df["layer"] == 0)]
    assert float(ctx["value"].iloc[0]) > 0.999


def test_random_sid_rows_stay_near_baseline(tiny_ckpt):
    df = alignment.compute(plant(one_to_one(tiny_ckpt), "random"), fast_args(n_perm=20))
    assert abs(summary(df, "cosine_sid_title") - summary(df, "cosine_sid_title_baseline")) < 0.05
    for metric, tol in (("cka", 0.1), ("mknn", 0.05), ("procrustes_residual", 0.1)):
        assert (
            abs(summary(df, metric, space="mean") - summary(df, f"{metric}_baseline", space="mean"))
            < tol
        )


@torch.no_grad()
def test_nearest_words_find_a_planted_word(tiny_ckpt):
    ckpt = one_to_one(tiny_ckpt, n=40)
    w, tok = ckpt.model.get_input_embeddings().weight, ckpt.tokenizer
    readable = act.readable_words(tok)
    by_word = {word: i for i, word in readable.items()}
    planted = {}
    for it in ckpt.catalog.items:  # <a_i> := the embedding of a word from item i's title
        word = next(x for x in act.WORD.findall(it.title.lower()) if x in by_word)
        w[tok.convert_tokens_to_ids(it.sid[0])] = w[by_word[word]]
        planted[it.sid[0]] = word
    df = alignment.compute(ckpt, fast_args(n_neighbours=3))
    top = df[(df["metric"] == "neighbour_cosine") & (df["rank"] == 1)].set_index("token")
    for token, word in planted.items():
        assert top.loc[token, "word"] == word and top.loc[token, "value"] == pytest.approx(
            1.0, abs=1e-5
        )
    prec = df[(df["metric"] == "word_precision") & (df["level"] == 0)]["value"].iloc[0]
    base = df[(df["metric"] == "word_precision_baseline") & (df["level"] == 0)]["value"].iloc[0]
    assert prec >= 1 / 3 - 1e-9 and base < prec


@torch.no_grad()
def test_geometry_finds_a_planted_bridge_and_a_separate_sid_cloud(tiny_ckpt):
    ckpt = one_to_one(tiny_ckpt, n=64)
    w, tok = ckpt.model.get_input_embeddings().weight, ckpt.tokenizer
    readable = sorted(act.readable_words(tok))
    sid_ids = tok.convert_tokens_to_ids(ckpt.catalog.sid_tokens())
    gen = torch.Generator().manual_seed(0)
    w[sid_ids] = 5.0 + 0.1 * torch.randn(len(sid_ids), w.shape[1], generator=gen)  # far from words
    w[tok.convert_tokens_to_ids(tokens.PAUSE)] = w[readable].mean(0)  # exactly at the word centroid
    df = alignment.compute(ckpt, fast_args(max_words=100000))
    assert summary(df, "separability_acc") > 0.99 and summary(df, "separability_acc_baseline") < 0.7
    assert summary(df, "centroid_distance") > 10 * summary(df, "centroid_distance_baseline")
    assert summary(df, "dist_to_word_centroid", group="<pause>") < 1e-4
    assert summary(df, "bridge_position", group="<pause>") == pytest.approx(1.0, abs=1e-4)


def test_untied_output_embeddings_are_probed_too(tiny_ckpt):
    ckpt = one_to_one(tiny_ckpt, n=32)
    model = ckpt.model
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    assert set(backbone.embedding_matrices(model)) == {"input", "output"}
    df = alignment.compute(ckpt, fast_args())
    assert set(df["matrix"].dropna()) == {"input", "output"}
    assert (df[df["metric"] == "cka"].groupby("matrix").size() == 2).all()


def test_similarity_math_on_known_cases():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    rot, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    y = 3.0 * x @ rot + 1.0  # same geometry: rotated, scaled, shifted
    assert sim.linear_cka(x, y) == pytest.approx(1.0)
    assert sim.procrustes_residual(x, y) == pytest.approx(0.0, abs=1e-10)
    assert sim.linear_cka(x, rng.normal(size=(200, 8))) < 0.2
    z = rng.normal(size=(200, 8))
    assert sim._procrustes_fast(sim._unit(x), sim._unit(z)) == pytest.approx(
        sim.procrustes_residual(x, z)
    )
    obs, base, p = sim.cka(x, y, 9, rng)
    assert obs == pytest.approx(1.0) and base < 0.2 and p == pytest.approx(0.1)
    nbrs = sim.knn(x, 5)
    assert nbrs.shape == (200, 5) and not (nbrs == np.arange(200)[:, None]).any()
    assert sim.knn_overlap(nbrs, sim.knn(x @ rot, 5)) == 1.0  # cosine k-NN is rotation invariant
    perm = act.permutation(200, rng)
    assert not (perm == np.arange(200)).any() and sorted(perm) == list(range(200))
    assert (np.sort(sim.permuted_knn(nbrs, perm), 1) == np.sort(sim.knn(x[perm], 5), 1)).all()


def test_a_backbone_trained_from_scratch_is_skipped_in_one_line(tiny_ckpt_path, tmp_path, caplog):
    """SID-word alignment asks what a pretrained language model knows: a compact checkpoint is
    skipped with one line naming why, and nothing is written when no checkpoint is left."""
    compact = tmp_path / "compact"
    meta = json.loads((tiny_ckpt_path / "pauserec.json").read_text())
    import shutil

    shutil.copytree(tiny_ckpt_path, compact)
    (compact / "pauserec.json").write_text(json.dumps({**meta, "backbone": "compact"}))
    with caplog.at_level("WARNING"):
        out = alignment.main([str(compact), "--out", str(tmp_path / "out"), *FAST])
    assert out.empty and not (tmp_path / "out").exists()
    lines = [r.message for r in caplog.records if "needs a pretrained language model" in r.message]
    assert len(lines) == 1 and "compact" in lines[0]
    kept = alignment.main(
        [str(compact), str(tiny_ckpt_path), "--out", str(tmp_path / "kept"), *FAST]
    )
    assert set(kept["backbone"]) == {"tiny"} and (tmp_path / "kept" / "results.csv").is_file()
