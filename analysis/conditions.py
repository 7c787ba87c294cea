"""Trained conditions: their labels, which ones the claims compare, and their metric table.

A condition is an experiment *cell*, recorded by the trainer in every checkpoint and carried by every
evaluation row: ``sft``, ``pause-k5``, ``pause-k5-mean-text``, ``think-only``, ``sft-continued``,
``filler-k5``, ``cot-template``, and the classical baselines ``popularity``, ``markov``, ``sasrec``. The
label of a row is its cell; nothing is guessed from paths or metric names.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from pauserec import registry
from pauserec.evaluation import stats


def seed_list(values) -> str:
    """Training seeds as ``0,1,2`` (missing values skipped, floats from CSVs as ints); ``—`` when none."""
    return ",".join(str(int(s)) for s in sorted({float(v) for v in values if v == v})) or "—"


PRIMARY = "recall@10"
CONTROLS = ("sft-continued", "think-only", "filler")  # roles of the compute-matched controls
BASELINES = ("popularity", "markov", "sasrec")
ORDER = ("baseline", "base", "plain", "pause", "cot")  # how variants are listed


def with_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus a ``label`` column: the cell (empty frames get an empty one)."""
    out = frame.copy()
    out["label"] = out["cell"].astype(str) if "cell" in out.columns and len(out) else pd.Series(dtype=str)
    return out


def matching(frame: pd.DataFrame, **columns) -> pd.Series:
    """Rows of ``frame`` whose identity columns equal ``columns`` (a column ``frame`` lacks matches "")."""
    keep = pd.Series(True, index=frame.index)
    for col, want in columns.items():
        have = frame[col] if col in frame.columns else pd.Series("", index=frame.index)
        keep &= (pd.to_numeric(have, errors="coerce") == want) if isinstance(want, int) else \
            (have.fillna("").astype(str) == str(want))
    return keep


def main_labels(frame: pd.DataFrame, main_rationale: str = "template") -> dict[str, str]:
    """{role: cell} of the conditions the claims compare, for those present in ``frame``, selected by
    identity columns (:data:`pauserec.registry.ROLES`): ``plain`` (sft), ``pause`` (the paper's pause
    count, pretrained init), ``cot`` (the main rationale source), the controls and the baselines."""
    if not len(frame) or "cell" not in frame.columns:
        return {}
    specs = {**registry.ROLES, "cot": {**registry.ROLES["cot"], "rationale_source": main_rationale}}
    out = {}
    for role, spec in specs.items():
        cells = frame.loc[matching(frame, **spec), "cell"].astype(str)
        if len(cells):
            out[role] = cells.mode().iloc[0]
    baselines = set(frame.loc[matching(frame, stage="baseline"), "cell"].astype(str))
    return out | {b: b for b in BASELINES if b in baselines}


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
