"""Can the model still say what it knows? Generation vs logit readouts of the same facts.

Questions ask for an item's ``title`` / ``category`` / ``year`` (ml-100k) or ``brand`` (Amazon)
given its SID (``query=sid``) or its title (``query=title``: the world-knowledge reference the SID
should inherit), plus a shipped set of general-knowledge facts (``query=fact``,
``resources/facts.jsonl``; ``field`` is the fact's topic). Each question is read out two ways:

* generation -- the greedy answer (:func:`pauserec.decode.generate`, first line) scored against the
  truth: ``gen_f1`` (token F1), ``gen_rougeL`` (LCS F-measure), ``gen_cosine`` (MiniLM), ``gen_acc``
  / ``gen_mrr`` (the answer matched by token F1 to the same multiple-choice candidates as the logit
  readout; acc = the truth is strictly the closest), ``gen_judge`` (``--judge``: an LLM judge
  through :func:`pauserec.llm.complete`; 1/0, NaN when its reply is neither yes nor no);
* logits -- the truth and ``n_distractors`` catalog distractors ranked by length-normalised
  log-likelihood (:func:`pauserec.decode.score_continuations`): ``logit_acc`` (truth strictly best),
  ``logit_mrr`` (ties share the rank).

The two readouts have different chance floors (logits: 1 in n candidates; generation: ~0 -- an
answer that knows nothing rarely beats 9 distractors), so a model that knows nothing would show a
logit-minus-generation gap of about +0.1. Every question therefore also gets ``chance_gen_acc`` /
``chance_logit_acc`` (see :func:`chance_levels`) and the chance-corrected ``gen_acc_cc`` /
``logit_acc_cc`` = (acc - chance) / (1 - chance), on which gaps are read.

Rows: the checkpoint's identity, ``query, field, item_id, metric, value`` (+ ``answer``,
``output``); per checkpoint, query and field (and ``field=all``), ``gap_acc`` / ``gap_acc_cc`` /
``gap_mrr`` = logit - gen, the mean of per-question paired differences with a bootstrap CI
(``ci_lo``, ``ci_hi``, ``n``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pauserec import decoding
from pauserec.config import arg
from pauserec.errors import UserError
from pauserec.evaluation import stats
from pauserec.model.checkpoint import Checkpoint
from pauserec.teacher import llm
from probes import activations as act
from probes._common import LLMProbeArgs, cli, entry, label
from probes.qa import (
    QUESTIONS,
    TEMPLATES,
    Asker,
    Question,
    default_fields,
    fact_questions,
    generate_answers,
    item_questions,
    rouge_l,
    token_f1,
    truth_rank,
)

log = logging.getLogger(__name__)
JUDGE_SYSTEM = "You grade answers to quiz questions. Reply with exactly one word: yes or no."
QUERIES = ("sid", "title", "fact")


@dataclass
class Args(LLMProbeArgs):
    """Item knowledge (from the SID and from the title) and general facts: generation vs logits."""

    n_items: int = arg(100, "catalog items asked about (seeded sample)", min=1)
    queries: tuple[str, ...] = arg(QUERIES, "{choices}", choices=QUERIES)
    fields: tuple[str, ...] = arg((), "{choices} (default: dataset's)", choices=tuple(QUESTIONS))
    n_distractors: int = arg(9, "catalog distractors per item question", min=1)
    max_new_tokens: int = arg(24, "longest generated answer", min=1)
    template: str = arg("auto", "{choices} (auto: chat if tokenizer has one)", choices=TEMPLATES)
    cosine: bool = arg(True, "score generations by MiniLM cosine")
    judge: bool = arg(False, "also grade generations with an LLM judge")
    n_boot: int = arg(1000, "bootstrap resamples of the gap CIs", min=1)
    batch_size: int = arg(16, "prompts per generate() batch", min=1)


# -- readouts
# -----------------------------------------------------------------------------------------


def logit_ranks(
    ckpt: Checkpoint, asker: Asker, questions: list[Question], prompts: list[list[int]]
) -> list[float]:
    """Rank of the truth among each question's candidates by mean per-token log-probability."""
    cands = [[asker.answer(c, q) for c in q.candidates] for q in questions]
    sums = decoding.score_continuations(ckpt.model, prompts, cands)
    return [truth_rank(s / np.maximum([len(c) for c in cs], 1)) for s, cs in zip(sums, cands)]


def cosines(outputs: list[str], answers: list[str]) -> np.ndarray:
    """MiniLM cosine of each output with its answer; 0 for an empty output."""
    from pauserec.sid import embed_texts

    emb = embed_texts(outputs + answers)  # L2-normalised (2n, 384)
    n = len(outputs)
    sims = (emb[:n] * emb[n:]).sum(1)
    return np.where([bool(o.strip()) for o in outputs], sims, 0.0)


def parse_judge(reply: str) -> float:
    """1.0 / 0.0 when the reply says yes or no as a word ("The answer is no." -> 0), and not both;
    else NaN (a reply that echoes "yes or no" is no verdict)."""
    said = set(re.findall(r"\b(yes|no)\b", reply.lower()))
    return float(said == {"yes"}) if len(said) == 1 else float("nan")


def judge(questions: list[Question], outputs: list[str], args: Args) -> np.ndarray:
    """1/0 per question from an LLM judge; an empty output is 0 without a request; an unparseable
    reply is NaN (logged). Failed requests raise :class:`UserError` -- never a silent 0."""
    ask = [i for i, o in enumerate(outputs) if o.strip()]
    prompts = [
        f"Question: {questions[i].text}\nReference answer: {questions[i].answer}\n"
        f"Candidate answer: {outputs[i]}\nDoes the candidate answer give the same answer as the "
        "reference? Reply yes or no."
        for i in ask
    ]
    replies = (
        llm.complete(
            prompts,
            system=JUDGE_SYSTEM,
            max_tokens=4,
            **args.llm_options(),
        )
        if prompts
        else []
    )
    out = np.zeros(len(outputs))
    for i, reply in zip(ask, replies):
        out[i] = parse_judge(reply)
    if bad := int(np.isnan(out).sum()):
        log.warning(
            "judge: %d of %d replies were neither yes nor no (scored NaN, not 0)", bad, len(ask)
        )
    return out


def questions_for(ckpt: Checkpoint, args: Args) -> list[Question]:
    unknown = set(args.queries) - set(QUERIES)
    if unknown:
        raise UserError(f"unknown query {sorted(unknown)} (known: {', '.join(QUERIES)})")
    fields = list(args.fields) or default_fields(ckpt.catalog)
    out = item_questions(
        ckpt.catalog, fields, list(args.queries), args.n_items, args.n_distractors, args.seed
    )
    return out + (fact_questions() if "fact" in args.queries else [])


def compute(ckpt: Checkpoint, args: Args) -> pd.DataFrame:
    """Per-question rows for one checkpoint, then its gap rows (see the module docstring)."""
    questions = questions_for(ckpt, args)
    if not questions:
        raise UserError("no questions to ask: check --queries and --fields")
    asker = Asker(ckpt.tokenizer, ckpt.catalog, args.template)
    prompts = [asker.prompt(q) for q in questions]
    outputs = generate_answers(ckpt.model, asker, prompts, args.max_new_tokens, args.batch_size)
    l_ranks = logit_ranks(ckpt, asker, questions, prompts)
    answers = [q.answer for q in questions]
    scores: dict[str, np.ndarray] = {
        "gen_f1": np.array([token_f1(o, a) for o, a in zip(outputs, answers)]),
        "gen_rougeL": np.array([rouge_l(o, a) for o, a in zip(outputs, answers)]),
    }
    if args.cosine:
        scores["gen_cosine"] = cosines(outputs, answers)
    g_ranks = np.array(
        [truth_rank([token_f1(o, c) for c in q.candidates]) for o, q in zip(outputs, questions)]
    )
    scores["gen_acc"], scores["gen_mrr"] = (g_ranks == 1).astype(float), 1 / g_ranks
    if args.judge:
        scores["gen_judge"] = judge(questions, outputs, args)
    scores["logit_acc"] = (np.array(l_ranks) == 1).astype(float)
    scores["logit_mrr"] = 1 / np.array(l_ranks)
    chance = chance_levels(questions, outputs, args.seed)
    for kind in ("gen", "logit"):
        c = chance[f"chance_{kind}_acc"]
        scores[f"{kind}_acc_cc"] = (scores[f"{kind}_acc"] - c) / np.where(c < 1, 1 - c, 1)
        scores[f"chance_{kind}_acc"] = c
    base = label(ckpt)
    rows = [
        {
            **base,
            "query": q.query,
            "field": q.field,
            "item_id": q.item_id,
            "metric": m,
            "value": float(v[i]),
            "answer": q.answer,
            "output": outputs[i],
        }
        for m, v in scores.items()
        for i, q in enumerate(questions)
    ]
    df = pd.DataFrame(rows)
    log.info(
        "%s: %s", base["ckpt"], df.groupby(["query", "metric"])["value"].mean().round(3).to_dict()
    )
    return pd.concat([df, gaps(df, args.n_boot, args.seed)], ignore_index=True)


def chance_levels(
    questions: list[Question], outputs: list[str], seed: int = 0
) -> dict[str, np.ndarray]:
    """Per question, the accuracy each readout gets by chance, so the two can be compared:

    * logits: the truth is strictly best among ``n`` candidates 1 time in ``n``;
    * generation: an answer that knows nothing about *this* question -- the outputs re-paired with
      other questions of the same query and field (a derangement) and scored the same way; the mean
      over the group is every question's chance level (an empty answer scores 0 either way).
    """
    logit = np.array([1.0 / len(q.candidates) for q in questions])
    gen = np.zeros(len(questions))
    groups: dict[tuple[str, str], list[int]] = {}
    for i, q in enumerate(questions):
        groups.setdefault((q.query, q.field), []).append(i)
    rng = np.random.default_rng(seed)
    for idx in groups.values():
        if len(idx) < 2:
            continue
        other = [idx[j] for j in act.permutation(len(idx), rng)]
        hits = [
            truth_rank([token_f1(outputs[o], c) for c in questions[i].candidates]) == 1
            for i, o in zip(idx, other)
        ]
        gen[idx] = float(np.mean(hits))
    return {"chance_logit_acc": logit, "chance_gen_acc": gen}


def gaps(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """``gap_X = logit_X - gen_X`` (X = acc, acc_cc (chance-corrected), mrr) per checkpoint, query
    and field (and ``all``)."""
    rows = []
    keys = ["ckpt", "stage", "variant", "query"]
    for suffix in ("acc", "acc_cc", "mrr"):
        gen = df[df["metric"] == f"gen_{suffix}"].set_index([*keys, "field", "item_id"])["value"]
        logit = df[df["metric"] == f"logit_{suffix}"].set_index([*keys, "field", "item_id"])[
            "value"
        ]
        diff = (logit - gen).dropna().reset_index()
        groups = [(k, g) for k, g in diff.groupby([*keys, "field"])]
        groups += [((*k, "all"), g) for k, g in diff.groupby(keys)]
        for key, g in groups:
            mean, lo, hi = stats.bootstrap_mean_ci(g["value"].to_numpy(), n_boot, seed)
            rows.append(
                {
                    **dict(zip([*keys, "field"], key)),
                    "metric": f"gap_{suffix}",
                    "value": mean,
                    "ci_lo": lo,
                    "ci_hi": hi,
                    "n": len(g),
                }
            )
    return pd.DataFrame(rows)


run, main = entry(Args, compute, "verbalization", language_model=True)


if __name__ == "__main__":
    cli(main)
