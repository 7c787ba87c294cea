"""probes.verbalization: text scores, question building, a known-answer model, the CLI contract and
the LLM-judge path against real loopback servers (scripted faults; llama.cpp's server when
installed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import probe_argv
from pauserec import data, files
from pauserec.errors import UserError
from pauserec.model.catalog import Catalog
from pauserec.training import corpus
from probes import qa, verbalization
from probes.qa import Asker, lcs, rouge_l, token_f1, truth_rank
from servers import ScriptedServer, cached_replies, fail_on, scripted, twice_through_a_proxy

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest

FAST_LLM = ("--llm-timeout", "0.5", "--llm-backoff", "0.01")


def test_text_scores_by_hand():
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(2 / 3)  # P = R = 2/3
    assert token_f1("", "x") == 0.0 and token_f1("Toy Story!", "toy story") == 1.0
    assert lcs("a b c d".split(), "a c d e".split()) == 3
    assert lcs([], ["a"]) == 0
    # LCS "a c d" = 3 of 4 words each side: P = R = 3/4
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l("d c b a", "a b c d") == pytest.approx(0.25)  # order matters, unlike F1
    assert token_f1("d c b a", "a b c d") == 1.0


def test_truth_rank_counts_better_and_shares_ties():
    assert truth_rank([3.0, 1.0, 2.0]) == 1.0
    assert truth_rank([1.0, 3.0, 2.0]) == 3.0
    assert truth_rank([1.0, 1.0, 1.0, 0.0]) == 2.0  # two ties -> 1 + 2/2
    assert truth_rank([0.0] * 10) == 5.5  # an uninformative scorer sits at chance, not at rank 1


def test_shipped_facts_are_well_formed():
    facts = qa.fact_questions()
    assert 30 <= len(facts) <= 60
    assert len({f.item_id for f in facts}) == len(facts)
    for f in facts:
        assert f.query == "fact" and f.text.endswith("?")
        assert len(f.candidates) >= 4 and f.answer not in f.candidates[1:]
        assert len(set(f.candidates)) == len(f.candidates)


def test_item_questions_are_seeded_and_distractors_are_wrong(tiny_ckpt):
    cat = tiny_ckpt.catalog
    fields = qa.default_fields(cat)
    assert fields == ["title", "category", "year"]  # ml-100k
    qs = qa.item_questions(cat, fields, ["sid", "title"], 20, 9, seed=3)
    assert qs == qa.item_questions(cat, fields, ["sid", "title"], 20, 9, seed=3)
    assert {(q.query, q.field) for q in qs} == {
        ("sid", "title"),
        ("sid", "category"),
        ("sid", "year"),
        ("title", "category"),
        ("title", "year"),
    }
    by_id = {it.item_id: it for it in cat.items}
    for q in qs:
        assert len(q.candidates) == 10
        item = by_id[q.item_id]
        assert q.ref == (item.sid_string if q.query == "sid" else item.title) and q.ref in q.text
        if q.field == "category":  # genre lists: no distractor shares a genre with the truth
            truth = {g.strip() for g in q.answer.split(",")}
            assert all(not truth & {g.strip() for g in d.split(",")} for d in q.candidates[1:])
        else:
            assert q.answer not in q.candidates[1:]
    same = [q for q in qs if q.field == "year" and q.item_id == qs[0].item_id]
    # the SID and title questions share their candidates
    assert len({q.candidates for q in same}) == 1


def test_grounding_template_is_the_cpt_corpus_format(tiny_ckpt):
    """``--template grounding`` asks exactly the prefix the CPT stage trained on."""
    tok, cat = tiny_ckpt.tokenizer, tiny_ckpt.catalog
    it = cat.items[0]
    item = data.Item(it.item_id, it.title, it.categories, it.brand, "", it.year)
    seq = corpus.grounding(tok, Catalog([it]), [item], directions=("sid2text",)).ids[0]
    q = qa.item_questions(cat, ["title"], ["sid"], len(cat), 3, 0)
    q = next(x for x in q if x.item_id == cat.items[0].item_id)
    asker = Asker(tok, cat, "grounding")
    got = asker.prompt(q) + asker.answer(q.answer, q)
    assert got == seq[: len(got)]
    assert (
        asker.read(tok.encode(" toy story . year : 1995", add_special_tokens=False)) == "toy story"
    )
    assert (
        asker.read(tok.encode(" dr . strangelove : or", add_special_tokens=False))
        == "dr . strangelove : or"
    )


def train_sid_to_title(ckpt, questions, steps: int = 200) -> float:
    """A plain loop: teach the tiny model ``Question: ... <SID>?\\nAnswer: <title></s>``."""
    asker, tok, model = Asker(ckpt.tokenizer, ckpt.catalog, "plain"), ckpt.tokenizer, ckpt.model
    seqs, labels = [], []
    for q in questions:
        prompt, answer = asker.prompt(q), asker.answer(q.answer, q) + [tok.eos_token_id]
        seqs.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])  # (B, T)
    lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels])
    mask = (torch.arange(width)[None] < torch.tensor([len(s) for s in seqs])[:, None]).long()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def test_known_answer_sid_to_title_is_said_and_ranked(tiny_ckpt):
    args = verbalization.Args(
        n_items=12, fields=("title",), queries=("sid",), template="plain", n_boot=200, cosine=False
    )
    before = verbalization.compute(tiny_ckpt, args).groupby("metric")["value"].mean()
    assert before["gen_f1"] < 0.2 and before["logit_acc"] < 0.6  # untrained: near chance (1 in 10)
    loss = train_sid_to_title(tiny_ckpt, verbalization.questions_for(tiny_ckpt, args))
    assert loss < 0.05
    args.cosine = True
    df = verbalization.compute(tiny_ckpt, args)
    mean = df.groupby("metric")["value"].mean()
    for metric in ("gen_f1", "gen_rougeL", "gen_acc", "logit_acc", "logit_mrr"):
        assert mean[metric] >= 0.95, (metric, mean.to_dict())
    assert mean["gen_cosine"] >= 0.95
    gap = df[(df["metric"] == "gap_acc") & (df["field"] == "all")].iloc[0]
    assert (
        abs(gap["value"]) <= 0.1 and gap["n"] == 12 and gap["ci_lo"] <= gap["value"] <= gap["ci_hi"]
    )


def test_gap_is_the_paired_mean_difference_with_a_ci():
    rows = []
    for i, (g, lg) in enumerate([(0, 1), (1, 1), (0, 1), (0, 0)]):
        for metric, v in (("gen_acc", g), ("logit_acc", lg), ("gen_mrr", g), ("logit_mrr", lg)):
            rows.append(
                {
                    "ckpt": "c",
                    "stage": "sft",
                    "variant": "plain",
                    "query": "sid",
                    "field": "title",
                    "item_id": str(i),
                    "metric": metric,
                    "value": float(v),
                }
            )
    out = verbalization.gaps(pd.DataFrame(rows), n_boot=500)
    acc = out[(out["metric"] == "gap_acc") & (out["field"] == "title")].iloc[0]
    assert acc["value"] == pytest.approx(0.5) and acc["n"] == 4  # (1 + 0 + 1 + 0) / 4
    assert 0.0 <= acc["ci_lo"] <= 0.5 <= acc["ci_hi"] <= 1.0
    assert set(out["field"]) == {"title", "all"}


def test_cli_writes_tidy_results_and_meta(tiny_ckpt_path, tmp_path):
    out = tmp_path / "verb"
    df = verbalization.main(
        probe_argv(tiny_ckpt_path, out, "--n-items 4 --no-cosine --max-new-tokens 4")
    )
    saved = pd.read_csv(out / "results.csv")
    assert len(saved) == len(df)
    assert {"ckpt", "stage", "variant", "query", "field", "item_id", "metric", "value"} <= set(
        saved.columns
    )
    assert set(saved["query"]) == {"sid", "title", "fact"}
    assert {
        "gen_f1",
        "gen_rougeL",
        "gen_acc",
        "gen_mrr",
        "logit_acc",
        "logit_mrr",
        "gap_acc",
        "gap_acc_cc",
        "chance_gen_acc",
        "chance_logit_acc",
        "gen_acc_cc",
        "logit_acc_cc",
    } <= set(saved["metric"])
    wide = saved[
        saved["item_id"].notna() & saved["metric"].str.match(r"^(gen|logit|chance)_")
    ].pivot_table(index=["query", "field", "item_id"], columns="metric", values="value")
    items = wide.loc[["sid", "title"]]
    assert np.allclose(items["chance_logit_acc"], 1 / 10)  # the truth + 9 catalog distractors
    assert np.allclose(
        wide["logit_acc_cc"],
        (wide["logit_acc"] - wide["chance_logit_acc"]) / (1 - wide["chance_logit_acc"]),
    )
    assert json.loads((out / "meta.json").read_text())["probe"] == "verbalization"
    assert sorted(p.name for p in out.iterdir()) == [files.MARKER, "meta.json", "results.csv"]


def test_bad_arguments_are_user_errors(tiny_ckpt_path, tmp_path):
    with pytest.raises(UserError, match="--queries: unknown value .nope."):
        verbalization.main(
            [str(tiny_ckpt_path), "--out", str(tmp_path / "x"), "--queries", "sid,nope"]
        )
    with pytest.raises(UserError, match="no chat template"):
        verbalization.main(
            [str(tiny_ckpt_path), "--out", str(tmp_path / "x"), "--template", "chat"]
        )


# -- the LLM judge: real loopback servers
# ---------------------------------------------------------------


def _judge_argv(path, out, url, *extra, model="test-model"):
    flags = "--n-items 2 --queries sid --fields title --no-cosine --max-new-tokens 3 --judge"
    return probe_argv(path, out, flags, "--llm-base-url", url, "--llm-model", model, *extra)


def test_judge_is_cached_retried_and_unparseable_replies_are_nan_not_zero(tiny_ckpt_path, tmp_path):
    cache = tmp_path / "judge.jsonl"
    with ScriptedServer(scripted("429", "badjson", "timeout"), retry_after="0") as srv:
        opts = ("--llm-cache", str(cache), *FAST_LLM)
        df = verbalization.main(_judge_argv(tiny_ckpt_path, tmp_path / "a", srv.url, *opts))
        judged = df[df["metric"] == "gen_judge"]
        asked = sum(bool(o.strip()) for o in judged["output"])
        assert asked == 2  # both generations are non-empty, both went to the judge
        assert [r.fault for r in srv.requests] == ["429", "badjson", "timeout", None, None]
        # the scripted server answers "reply to: ...": neither yes nor no -> NaN, never a silent 0
        assert judged["value"].isna().all()
        verbalization.main(_judge_argv(tiny_ckpt_path, tmp_path / "b", srv.url, *opts))
        assert len(srv.requests) == 5  # the rerun was answered from the cache
    assert len(cache.read_text().splitlines()) == 2


def test_judge_failure_is_reported_not_scored(tiny_ckpt_path, tmp_path):
    with (
        ScriptedServer(fail_on("Question", "500")) as srv,
        pytest.raises(UserError, match="HTTP 500"),
    ):
        verbalization.main(
            _judge_argv(
                tiny_ckpt_path, tmp_path / "a", srv.url, "--llm-max-retries", "2", *FAST_LLM
            )
        )
    assert not (tmp_path / "a").exists()  # nothing half-written


def test_parse_judge():
    assert (
        verbalization.parse_judge("Yes.") == 1.0
        and verbalization.parse_judge(" no, it is not") == 0.0
    )
    assert verbalization.parse_judge("The answer is no.") == 0.0
    assert math.isnan(verbalization.parse_judge("Reply yes or no."))
    assert math.isnan(verbalization.parse_judge("Maybe")) and math.isnan(
        verbalization.parse_judge("yesterday")
    )


@pytest.mark.slow
def test_judge_against_real_llama_cpp_server(llama_server, tiny_ckpt_path, tmp_path):
    cache = tmp_path / "judge.jsonl"

    def run(url: str, out: str) -> pd.DataFrame:
        argv = _judge_argv(
            tiny_ckpt_path, tmp_path / out, url, "--llm-cache", str(cache), model="smollm2"
        )
        return verbalization.main(argv)

    df = twice_through_a_proxy(llama_server, run, requests=2)  # the rerun: from the cache
    values = df.loc[df["metric"] == "gen_judge", "value"]
    assert values.isna().all() or set(values.dropna()) <= {0.0, 1.0}
    print("llama.cpp judge replies:", cached_replies(cache))


@pytest.mark.slow
def test_smollm2_checkpoint_knows_facts_in_its_logits(tmp_path):
    """The real backbone: general facts are ranked far above chance by likelihood."""
    from pauserec.model import init_ckpt

    ckpt = init_ckpt.main(
        ["--backbone", "smollm2-135m", "--dataset", "ml-100k", "--out", str(tmp_path / "init")]
    )
    args = verbalization.Args(queries=("fact",), cosine=False, max_new_tokens=12)
    df = verbalization.compute(ckpt, args)
    mean = df.groupby("metric")["value"].mean()
    chance = np.mean([1 / len(q.candidates) for q in qa.fact_questions()])
    assert mean["logit_acc"] > chance + 0.1, mean.to_dict()  # measured: 0.42 vs chance 0.2


def test_chance_levels_make_the_two_readouts_comparable():
    """A model that knows nothing: empty answers (generation at 0) and uniform logits (1 in n) --
    the raw gap is +1/n, the chance-corrected one is 0; perfect answers stay perfect after
    correction."""
    qs = [
        qa.Question("sid", "title", str(i), f"q{i}", (f"truth{i}", "w1", "w2", "w3"))
        for i in range(20)
    ]
    chance = verbalization.chance_levels(qs, [""] * 20, seed=0)
    assert np.allclose(chance["chance_logit_acc"], 0.25) and np.allclose(
        chance["chance_gen_acc"], 0.0
    )
    right = verbalization.chance_levels(qs, [f"truth{i}" for i in range(20)], seed=0)
    assert np.allclose(right["chance_gen_acc"], 0.0)  # another question's answer never wins here
    # one fixed distractor: never the truth
    same = verbalization.chance_levels(qs, ["w1"] * 20, seed=0)
    assert np.allclose(same["chance_gen_acc"], 0.0)
    leaky = [qa.Question("sid", "title", str(i), f"q{i}", ("common", f"x{i}")) for i in range(10)]
    # every answer is the same truth
    shared = verbalization.chance_levels(leaky, ["common"] * 10, seed=0)
    assert np.allclose(shared["chance_gen_acc"], 1.0) and np.allclose(
        shared["chance_logit_acc"], 0.5
    )
