"""Trained conditions: their labels, which ones the claims compare, and their metric table.

A condition is an experiment *cell*, recorded by the trainer in every checkpoint and carried by every
evaluation row: ``sft``, ``pause-k5``, ``pause-k5-mean-text``, ``think-only``, ``sft-continued``,
``filler-k5``, ``cot-template``, and the classical baselines ``popularity``, ``markov``, ``sasrec``. The
label of a row is its cell; nothing is guessed from paths or metric names.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from pauserec import stats
from pauserec.prompts import DEFAULT_PAUSES


def seed_list(values) -> str:
    """Training seeds as ``0,1,2`` (missing values skipped, floats from CSVs as ints); ``—`` when none."""
    return ",".join(str(int(s)) for s in sorted({float(v) for v in values if v == v})) or "—"

PRIMARY = "recall@10"
PAPER_K = DEFAULT_PAUSES
CONTROLS = ("sft-continued", "think-only", f"filler-k{DEFAULT_PAUSES}")
BASELINES = ("popularity", "markov", "sasrec")
ORDER = ("baseline", "base", "plain", "pause", "cot")  # how variants are listed


def with_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus a ``label`` column: the cell (empty frames get an empty one)."""
    out = frame.copy()
    out["label"] = out["cell"].astype(str) if "cell" in out.columns and len(out) else pd.Series(dtype=str)
    return out


def main_labels(frame: pd.DataFrame, main_rationale: str = "template") -> dict[str, str]:
    """{role: cell} of the conditions the claims compare, for those present in ``frame``: ``plain``
    (sft), ``pause`` (pause-k5), ``cot`` (cot-MAIN), the controls and the baselines."""
    wanted = {"plain": "sft", "pause": f"pause-k{PAPER_K}", "cot": f"cot-{main_rationale}",
              **{c: c for c in CONTROLS}, **{b: b for b in BASELINES}}
    have = set(frame["cell"].astype(str)) if len(frame) and "cell" in frame.columns else set()
    return {role: cell for role, cell in wanted.items() if cell in have}


def strongest_baseline(per_user: pd.DataFrame, metric: str = PRIMARY) -> str | None:
    """The classical baseline with the best mean ``metric`` (the one every variant is compared with)."""
    rows = per_user[per_user["cell"].isin(BASELINES)] if len(per_user) else per_user
    if not len(rows):
        return None
    return str(rows.groupby("cell")[metric].mean().idxmax())


def conditions_table(per_user: pd.DataFrame, metrics: Sequence[str] = ("recall@10", "ndcg@10"),
                     n_resamples: int = stats.N_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """One row per (dataset, backbone, split, cell): users, seeds, and each metric's mean with a
    bootstrap CI over users (seeds averaged per user first)."""
    if not len(per_user):
        return pd.DataFrame()
    frame = with_labels(per_user).assign(train_seed=per_user["train_seed"].fillna(-1))
    keys = [c for c in ("dataset", "backbone", "split", "variant", "label") if c in frame.columns]
    frame[keys] = frame[keys].fillna("").astype(str)  # baselines have no backbone
    avg = stats.mean_over_seeds(frame, keys, list(metrics), seed="train_seed")
    seeds = frame.groupby(keys, dropna=False)["train_seed"].agg(
        lambda s: ",".join(str(int(x)) for x in sorted(set(s)) if x >= 0) or "—")
    rows = []
    for key, group in avg.groupby(keys, dropna=False, sort=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row.update(users=len(group), seeds=seeds.get(key, ""))
        for m in metrics:
            mean, lo, hi = stats.bootstrap_mean_ci(group[m], n_resamples, seed)
            row[m], row[f"{m} lo"], row[f"{m} hi"] = mean, lo, hi
        rows.append(row)
    order = {v: i for i, v in enumerate(ORDER)}
    out = pd.DataFrame(rows)
    return out.sort_values(["variant", "label"], key=lambda s: s.map(lambda v: (order.get(v, 9), v)),
                           kind="stable", ignore_index=True).drop(columns="variant")
