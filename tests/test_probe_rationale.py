"""probes.perturb / probes.rationale: perturbations by hand, the KL known answer (a model whose SID
head cannot see the rationale), the CLI contract, and the openai paraphrase path against loopback
servers."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import probe_argv
from pauserec import files
from pauserec.data import Example
from pauserec.errors import UserError
from pauserec.model.backbone import token_groups
from probes import perturb, rationale
from servers import ScriptedServer, cached_replies, fail_on, scripted, twice_through_a_proxy

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest

TEXT = (
    "The user likes dark comedy films. They watched many of them. The next one should be similar."
)
FAST_LLM = ("--llm-timeout", "0.5", "--llm-backoff", "0.01")


def test_word_dropout_rate_and_shuffles_keep_the_words():
    rng = np.random.default_rng(0)
    long = " ".join(f"w{i}" for i in range(2000))
    kept = perturb.word_dropout(long, 0.3, rng).split()
    # order kept
    assert 0.66 < len(kept) / 2000 < 0.74 and kept == sorted(kept, key=lambda w: int(w[1:]))
    shuffled = perturb.word_shuffle(TEXT, rng)
    assert shuffled != TEXT and Counter(shuffled.split()) == Counter(TEXT.split())
    sents = perturb.sentence_shuffle(TEXT, rng)
    assert sents != TEXT and sorted(perturb.sentences(sents)) == sorted(perturb.sentences(TEXT))
    assert perturb.sentence_shuffle("One sentence only.", rng) == "One sentence only."


def test_swap_is_a_derangement_and_filler_matches_length():
    texts = [f"rationale {i}" for i in range(7)]
    out = perturb.swap(texts, np.random.default_rng(1))
    assert sorted(out) == sorted(texts) and all(a != b for a, b in zip(out, texts))
    with pytest.raises(UserError):
        perturb.swap(["alone"], np.random.default_rng(0))
    assert len(perturb.filler(TEXT).split()) == len(TEXT.split())
    assert not perturb.content_words(perturb.filler(TEXT)) & perturb.content_words(TEXT)


def test_quality_scores_by_hand(tiny_ckpt):
    cat = tiny_ckpt.catalog
    ex = Example("u", (0, 1), 2)  # Toy Story, GoldenEye -> Four Rooms (Thriller)
    oracle = perturb.oracle(cat, ex.target)
    assert "Four Rooms" in oracle
    q = perturb.quality(oracle, ex, cat)
    assert q["leakage"] == 1.0  # every target title/category word is named
    assert perturb.quality("", ex, cat) == {"length": 0.0, "leakage": 0.0, "agreement": 0.0}
    q = perturb.quality("Toy Story animation and Four", ex, cat)
    # content words {toy, story, animation, four}: 3 of 4 are in the history; target {four, rooms,
    # thriller}
    assert q["agreement"] == pytest.approx(3 / 4) and q["leakage"] == pytest.approx(1 / 3)
    with pytest.raises(UserError, match="unknown perturbation"):
        perturb.check(["drop10", "shout"])


def _args(**kw) -> rationale.Args:
    base = {
        "n_users": 8,
        "perturbations": ("drop50", "swap", "empty", "filler", "oracle"),
        "beams": 10,
    }
    return rationale.Args(**{**base, **kw})


def _distinct_sids(ckpt) -> None:
    """Random SID rows: the untrained fixture's SID embeddings are all (nearly) the same mean
    row."""
    emb = ckpt.model.get_input_embeddings().weight  # tied with the output head
    ids = torch.tensor(token_groups(ckpt.tokenizer)["sid"])
    with torch.no_grad():
        emb[ids] = torch.randn(len(ids), emb.shape[1], generator=torch.Generator().manual_seed(0))
    ckpt.meta["variant"] = "cot"


def test_known_answer_kl_is_zero_when_the_sid_head_cannot_see_the_rationale(tiny_ckpt):
    _distinct_sids(tiny_ckpt)
    df = rationale.compute(tiny_ckpt, _args())
    kl = df[df["metric"] == "kl"].groupby("perturbation")["value"].mean()
    assert (kl > 1e-3).all(), kl.to_dict()  # the control: this model does read the rationale
    # no attention output: each position sees only itself
    for layer in tiny_ckpt.model.model.layers:
        torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
    df = rationale.compute(tiny_ckpt, _args())
    for metric in ("kl", "kl_items", "delta_recall@10", "delta_ndcg@10"):
        values = df.loc[df["metric"] == metric, "value"]
        assert len(values) == 8 * 5 and values.abs().max() < 1e-6, (metric, values.abs().max())


def test_cli_rows_and_flags(tiny_ckpt_path, tmp_path):
    out = tmp_path / "rat"
    flags = "--n-users 4 --beams 10 --perturbations drop10,paraphrase,oracle --paraphrase-tokens 6"
    df = rationale.main(probe_argv(tiny_ckpt_path, out, flags, "--no-kl-items"))
    saved = pd.read_csv(out / "results.csv")
    assert len(saved) == len(df)
    assert {
        "ckpt",
        "stage",
        "variant",
        "perturbation",
        "upper_bound",
        "user_id",
        "item_id",
        "metric",
        "value",
        "rationale_source",
    } <= set(saved.columns)
    assert set(saved["perturbation"]) == {"clean", "drop10", "paraphrase", "oracle"}
    assert set(saved.loc[saved["upper_bound"], "perturbation"]) == {"oracle"}
    assert set(saved["rationale_source"]) == {"template"}  # the fixture records none: the fallback
    clean = saved[saved["perturbation"] == "clean"]
    assert not clean["metric"].str.startswith(("delta_", "kl")).any()
    assert {"delta_recall@10", "delta_ndcg@10", "kl", "quality_leakage"} <= set(saved["metric"])
    assert saved.groupby(["perturbation", "metric"]).size().eq(4).all()  # one row per user
    leak = saved[saved["metric"] == "quality_leakage"].groupby("perturbation")["value"].mean()
    assert leak["oracle"] == 1.0 and leak["clean"] < 1.0
    assert json.loads((out / "meta.json").read_text())["probe"] == "rationale"
    assert sorted(p.name for p in out.iterdir()) == [files.MARKER, "meta.json", "results.csv"]


# -- openai paraphrases: real loopback servers
# ----------------------------------------------------------


def _para_argv(path, out, url, cache, *extra, model="test-model"):
    flags = "--n-users 3 --beams 10 --perturbations paraphrase --no-kl-items --paraphrase openai"
    llm = ["--llm-base-url", url, "--llm-model", model, "--llm-cache", str(cache)]
    return probe_argv(path, out, flags, *llm, *extra)


def test_openai_paraphrase_is_cached_and_faults_are_retried(tiny_ckpt_path, tmp_path):
    cache = tmp_path / "para.jsonl"
    with ScriptedServer(scripted("429", "nochoices", "drop"), retry_after="0") as srv:
        rationale.main(_para_argv(tiny_ckpt_path, tmp_path / "a", srv.url, cache, *FAST_LLM))
        assert [r.fault for r in srv.requests][:3] == ["429", "nochoices", "drop"]
        n = len(srv.requests)
        assert n == 3 + 3  # three users, three faults retried
        assert all("Rewrite the following text" in p for p in srv.prompts())
        rationale.main(_para_argv(tiny_ckpt_path, tmp_path / "b", srv.url, cache, *FAST_LLM))
        assert len(srv.requests) == n  # the rerun made no new request
    rows = [json.loads(x) for x in cache.read_text().splitlines()]
    assert len(rows) == 3 and all(r["response"].startswith("reply to:") for r in rows)


def test_openai_paraphrase_failure_is_an_error_not_an_empty_rationale(tiny_ckpt_path, tmp_path):
    out, once = tmp_path / "a", ("--llm-max-retries", "1", *FAST_LLM)
    with (
        ScriptedServer(fail_on("Rewrite", "503")) as srv,
        pytest.raises(UserError, match="HTTP 503"),
    ):
        rationale.main(_para_argv(tiny_ckpt_path, out, srv.url, tmp_path / "c.jsonl", *once))
    assert not out.exists()


@pytest.mark.slow
def test_openai_paraphrase_against_real_llama_cpp_server(llama_server, tiny_ckpt_path, tmp_path):
    cache, patient = tmp_path / "para.jsonl", ("--llm-timeout", "120")

    def run(url: str, out: str) -> pd.DataFrame:
        argv = _para_argv(tiny_ckpt_path, tmp_path / out, url, cache, *patient, model="smollm2")
        return rationale.main(argv)

    df = twice_through_a_proxy(llama_server, run, requests=3)
    length = df[(df["metric"] == "quality_length") & (df["perturbation"] == "paraphrase")]["value"]
    assert (length > 0).all()  # real paraphrases, none empty
    print("llama.cpp paraphrases:", cached_replies(cache))


@pytest.mark.slow
def test_training_time_driver_trains_once_per_condition_and_tabulates(tiny_ckpt_path, tmp_path):
    from driver import rationale_train

    argv = [
        str(tiny_ckpt_path),
        "--out",
        str(tmp_path / "rt"),
        "--conditions",
        "template,empty",
        "--max-steps",
        "2",
        "--n-train",
        "16",
        "--train-batch-size",
        "8",
        "--n-users",
        "3",
    ]
    df = rationale_train.main(argv)
    work = tmp_path / "rt.runs"
    assert {p.name for p in work.iterdir() if p.is_dir()} == {"template", "empty"}
    t = rationale_train.table(df)
    assert (
        t.loc["empty", "train_quality_length"] == 0
        and t.loc["template", "train_quality_length"] > 5
    )
    src = df.groupby("perturbation")["rationale_source"].first()
    # recorded by the trainer
    assert src["template"] == "template" and src["empty"] == "template+empty"
    assert df[df["metric"] == "recall@10"].groupby("perturbation").size().eq(3).all()
    stamp = (work / "empty" / "pauserec.json").stat().st_mtime_ns
    rationale_train.main([*argv, "--overwrite"])  # a rerun reuses the trained checkpoints
    assert (work / "empty" / "pauserec.json").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "rt" / "meta.json").read_text())["probe"] == "rationale_train"
