"""Can the model still say what it knows? Generation vs logit readouts of the same facts.

Questions ask for an item's ``title`` / ``category`` / ``year`` (ml-100k) or ``brand`` (Amazon) given its
SID (``query=sid``) or its title (``query=title``: the world-knowledge reference the SID should
inherit), plus a shipped set of general-knowledge facts (``query=fact``, ``resources/facts.jsonl``;
``field`` is the fact's topic). Each question is read out two ways:

* generation -- the greedy answer (:func:`pauserec.decode.generate`, first line) scored against the
  truth: ``gen_f1`` (token F1), ``gen_rougeL`` (LCS F-measure), ``gen_cosine`` (MiniLM), ``gen_acc`` /
  ``gen_mrr`` (the answer matched by token F1 to the same multiple-choice candidates as the logit
  readout; acc = the truth is strictly the closest), ``gen_judge`` (``--judge``: an LLM judge through
  :func:`pauserec.llm.complete`; 1/0, NaN when its reply is neither yes nor no);
* logits -- the truth and ``n_distractors`` catalog distractors ranked by length-normalised
  log-likelihood (:func:`pauserec.decode.score_continuations`): ``logit_acc`` (truth strictly best),
  ``logit_mrr`` (ties share the rank).

Rows: ``ckpt, stage, variant, query, field, item_id, metric, value`` (+ ``answer``, ``output``); per
checkpoint, query and field (and ``field=all``), ``gap_acc`` / ``gap_mrr`` = logit - gen, the mean of
per-question paired differences with a bootstrap CI (``ci_lo``, ``ci_hi``, ``n``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pauserec import decode, llm
from pauserec.checkpoint import Checkpoint
from pauserec.errors import UserError
from probes._common import ProbeArgs, cli, iter_ckpts, label, parse, write_results
from probes.qa import (
    Asker,
    Question,
    default_fields,
    fact_questions,
    item_questions,
    rouge_l,
    token_f1,
    truth_rank,
)

log = logging.getLogger(__name__)
QUERIES = ("sid", "title", "fact")
JUDGE_SYSTEM = "You grade answers to quiz questions. Reply with exactly one word: yes or no."


@dataclass
class Args(ProbeArgs):
    """Item knowledge (from the SID and from the title) and general facts: generation vs logits."""

    n_items: int = field(default=100, metadata={"help": "catalog items asked about (seeded sample)"})
    queries: tuple[str, ...] = field(default=QUERIES, metadata={"help": "sid, title, fact"})
    fields: tuple[str, ...] = field(default=(), metadata={
        "help": "title, category, year, brand (default: those the dataset has; ml-100k: title,category,year)"})
    n_distractors: int = field(default=9, metadata={"help": "catalog distractors per item question"})
    max_new_tokens: int = field(default=24, metadata={"help": "longest generated answer"})
    template: str = field(default="auto", metadata={
        "help": "auto (chat if the tokenizer has one), chat, plain, grounding (the CPT format)"})
    cosine: bool = field(default=True, metadata={"help": "score generations by MiniLM cosine"})
    judge: bool = field(default=False, metadata={"help": "also grade generations with an LLM judge"})
    llm_base_url: str | None = field(default=None, metadata={
        "help": f"judge endpoint (else ${llm.ENV_BASE_URL})"})
    llm_model: str | None = field(default=None, metadata={"help": f"judge model (else ${llm.ENV_MODEL})"})
    llm_cache: str | None = field(default=None, metadata={
        "help": "judge response cache (default OUT.llm-cache.jsonl)"})
    llm_timeout: float = field(default=60.0, metadata={"help": "seconds per judge request"})
    llm_max_retries: int = field(default=5, metadata={"help": "retries per judge request"})
    llm_backoff: float = field(default=0.5, metadata={"help": "first retry delay, seconds (doubles)"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples of the gap CIs"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generate() batch"})


# -- readouts -----------------------------------------------------------------------------------------

def generate_answers(model, asker: Asker, prompts: list[list[int]], max_new_tokens: int,
                     batch_size: int = 16) -> list[str]:
    """Greedy answers (read by ``asker``), prompts batched shortest first."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less left padding per batch
    new = decode.generate(model, asker.tok, [prompts[i] for i in order], max_new_tokens, asker.stop,
                          batch_size)
    out = [""] * len(prompts)
    for i, ids in zip(order, new):
        out[i] = asker.read(ids)
    return out


def logit_ranks(ckpt: Checkpoint, asker: Asker, questions: list[Question],
                prompts: list[list[int]]) -> list[float]:
    """Rank of the truth among each question's candidates by mean per-token log-probability."""
    cands = [[asker.answer(c, q) for c in q.candidates] for q in questions]
    sums = decode.score_continuations(ckpt.model, prompts, cands)
    return [truth_rank(s / np.maximum([len(c) for c in cs], 1)) for s, cs in zip(sums, cands)]


def cosines(outputs: list[str], answers: list[str]) -> np.ndarray:
    """MiniLM cosine of each output with its answer; 0 for an empty output."""
    from pauserec.sid import embed_texts

    emb = embed_texts(outputs + answers)  # L2-normalised (2n, 384)
    n = len(outputs)
    sims = (emb[:n] * emb[n:]).sum(1)
    return np.where([bool(o.strip()) for o in outputs], sims, 0.0)


def parse_judge(reply: str) -> float:
    """1.0 / 0.0 when the reply says yes or no as a word ("The answer is no." -> 0), and not both; else
    NaN (a reply that echoes "yes or no" is no verdict)."""
    said = set(re.findall(r"\b(yes|no)\b", reply.lower()))
    return float(said == {"yes"}) if len(said) == 1 else float("nan")


def llm_cache_path(args) -> str | None:
    if args.llm_cache:
        return args.llm_cache
    return str(Path(args.out).with_name(Path(args.out).name + ".llm-cache.jsonl")) if args.out else None


def judge(questions: list[Question], outputs: list[str], args: Args) -> np.ndarray:
    """1/0 per question from an LLM judge; an empty output is 0 without a request; an unparseable
    reply is NaN (logged). Failed requests raise :class:`UserError` -- never a silent 0."""
    ask = [i for i, o in enumerate(outputs) if o.strip()]
    prompts = [f"Question: {questions[i].text}\nReference answer: {questions[i].answer}\n"
               f"Candidate answer: {outputs[i]}\nDoes the candidate answer give the same answer as the "
               "reference? Reply yes or no." for i in ask]
    replies = llm.complete(prompts, base_url=args.llm_base_url, model=args.llm_model, system=JUDGE_SYSTEM,
                           cache_path=llm_cache_path(args), max_tokens=4, timeout=args.llm_timeout,
                           max_retries=args.llm_max_retries, backoff=args.llm_backoff) if prompts else []
    out = np.zeros(len(outputs))
    for i, reply in zip(ask, replies):
        out[i] = parse_judge(reply)
    if bad := int(np.isnan(out).sum()):
        log.warning("judge: %d of %d replies were neither yes nor no (scored NaN, not 0)", bad, len(ask))
    return out


def questions_for(ckpt: Checkpoint, args: Args) -> list[Question]:
    unknown = set(args.queries) - set(QUERIES)
    if unknown:
        raise UserError(f"unknown query {sorted(unknown)} (known: {', '.join(QUERIES)})")
    fields = list(args.fields) or default_fields(ckpt.catalog)
    out = item_questions(ckpt.catalog, fields, list(args.queries), args.n_items, args.n_distractors, args.seed)
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
    g_ranks = np.array([truth_rank([token_f1(o, c) for c in q.candidates]) for o, q in zip(outputs, questions)])
    scores["gen_acc"], scores["gen_mrr"] = (g_ranks == 1).astype(float), 1 / g_ranks
    if args.judge:
        scores["gen_judge"] = judge(questions, outputs, args)
    scores["logit_acc"] = (np.array(l_ranks) == 1).astype(float)
    scores["logit_mrr"] = 1 / np.array(l_ranks)
    base = label(ckpt)
    rows = [{**base, "query": q.query, "field": q.field, "item_id": q.item_id, "metric": m,
             "value": float(v[i]), "answer": q.answer, "output": outputs[i]}
            for m, v in scores.items() for i, q in enumerate(questions)]
    df = pd.DataFrame(rows)
    log.info("%s: %s", base["ckpt"], df.groupby(["query", "metric"])["value"].mean().round(3).to_dict())
    return pd.concat([df, gaps(df, args.n_boot, args.seed)], ignore_index=True)


def gaps(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """``gap_X = logit_X - gen_X`` (X = acc, mrr) per checkpoint, query and field (and ``all``)."""
    from analysis.stats import bootstrap_mean_ci

    rows = []
    keys = ["ckpt", "stage", "variant", "query"]
    for suffix in ("acc", "mrr"):
        gen = df[df["metric"] == f"gen_{suffix}"].set_index([*keys, "field", "item_id"])["value"]
        logit = df[df["metric"] == f"logit_{suffix}"].set_index([*keys, "field", "item_id"])["value"]
        diff = (logit - gen).dropna().reset_index()
        groups = [(k, g) for k, g in diff.groupby([*keys, "field"])]
        groups += [((*k, "all"), g) for k, g in diff.groupby(keys)]
        for key, g in groups:
            mean, lo, hi = bootstrap_mean_ci(g["value"].to_numpy(), n_boot, seed)
            rows.append({**dict(zip([*keys, "field"], key)), "metric": f"gap_{suffix}", "value": mean,
                         "ci_lo": lo, "ci_hi": hi, "n": len(g)})
    return pd.DataFrame(rows)


def figures(df: pd.DataFrame) -> dict:
    """``verbalization_gap``: gen_acc vs logit_acc per stage, one panel per query; ``verbalization_gen``:
    gen_f1 / gen_rougeL / gen_cosine per stage and query. Bars: means; error bars: bootstrap CIs."""
    import seaborn as sns

    from analysis import theme

    out = {}
    stages = [s for s in theme.STAGE_ORDER if s in set(df["stage"])] + sorted(
        set(df["stage"]) - set(theme.STAGE_ORDER))
    for name, metrics, col in (("verbalization_gap", ["gen_acc", "logit_acc"], "query"),
                               ("verbalization_gen", ["gen_f1", "gen_rougeL", "gen_cosine"], "query")):
        sub = df[df["metric"].isin(metrics)]
        if sub.empty:
            continue
        panels = [q for q in QUERIES if q in set(sub[col])]
        fig, axes = theme.figure(ncols=len(panels), squeeze=False, sharey=True)
        for ax, q in zip(axes[0], panels):
            sns.barplot(data=sub[sub[col] == q], x="stage", y="value", hue="metric", order=stages,
                        hue_order=[m for m in metrics if m in set(sub["metric"])], errorbar=("ci", 95),
                        n_boot=500, seed=0, ax=ax)
            ax.set_title(f"query: {q}")
            ax.set_ylim(0, 1.05)
            ax.tick_params(axis="x", rotation=30)
        fig.text(0.5, -0.12, theme.CI_CAPTION, ha="center", fontsize=7)
        out[name] = fig
    return out


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse(Args, argv, "probes.verbalization")
    df = pd.concat([compute(c, args) for c in iter_ckpts(args.ckpt, args.device)], ignore_index=True)
    write_results(df, args, figures(df), extra={"probe": "verbalization"})
    return df


if __name__ == "__main__":
    cli(main)
