"""Trained conditions: their labels, the main one per variant, and their metric table.

A *label* names one condition (variant, stage, k, pause init, rationale source), e.g. ``plain``,
``pause k=5 init=pretrained``, ``cot template``, ``pause @pause-pretrain k=5``. The *main* condition of a
variant is the one with the most evaluated rows at its final stage (``plain: sft``, ``pause: pause-sft``,
``cot: cot-sft``); ties prefer k = 5, a pretrained pause init and non-leaky rationales.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis import stats

PRIMARY = "recall@10"
PAPER_K = 5
FINAL_STAGE = {"plain": "sft", "pause": "pause-sft", "cot": "cot-sft"}
MAIN_VARIANTS = ("plain", "pause", "cot")


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def label_of(row: dict | pd.Series) -> str:
    """The display name of the condition a row belongs to."""
    variant = _text(row.get("variant")) or "base"
    parts = [variant]
    stage = _text(row.get("stage"))
    if stage and stage != FINAL_STAGE.get(variant):
        parts.append(f"@{stage}")
    if variant == "pause":
        parts.append(f"k={int(float(row.get('k') or 0))}")
        if _text(row.get("pause_init")):
            parts.append(f"init={_text(row.get('pause_init'))}")
    if variant == "cot" and _text(row.get("rationale_source")):
        leaky = str(row.get("rationale_leaky")).lower() in ("true", "1")
        parts.append(_text(row.get("rationale_source")) + (" leaky" if leaky else ""))
    return " ".join(parts)


def with_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus a ``label`` column (empty frames get an empty one)."""
    out = frame.copy()
    if not len(out):
        out["label"] = pd.Series(dtype=str)
        return out
    cols = [c for c in ("variant", "stage", "k", "pause_init", "rationale_source", "rationale_leaky")
            if c in out.columns]
    keys = out[cols].astype(str).agg("|".join, axis=1)
    first = out.loc[~keys.duplicated(), cols]
    names = {k: label_of(r) for k, r in zip(keys[~keys.duplicated()], first.to_dict("records"))}
    out["label"] = keys.map(names)
    return out


def main_labels(frame: pd.DataFrame) -> dict[str, str]:
    """{variant: label} of the main condition of each of plain/pause/cot present in ``frame``."""
    if not len(frame) or "label" not in frame.columns:
        return {}
    out = {}
    for variant in MAIN_VARIANTS:
        rows = frame[frame["variant"] == variant]
        final = rows[rows["stage"] == FINAL_STAGE[variant]]
        rows = final if len(final) else rows
        if not len(rows):
            continue

        def score(group: pd.DataFrame) -> tuple:
            first = group.iloc[0]
            return (len(group), int(float(first.get("k") or 0)) == PAPER_K,
                    "pretrain" in _text(first.get("pause_init")),
                    str(first.get("rationale_leaky")).lower() not in ("true", "1"))

        out[variant] = max(rows.groupby("label"), key=lambda kv: score(kv[1]))[0]
    return out


def conditions_table(per_user: pd.DataFrame, metrics: Sequence[str] = ("recall@10", "ndcg@10"),
                     n_resamples: int = stats.N_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """One row per (dataset, split, label): users, seeds and ``metric`` = mean with bootstrap CI."""
    if not len(per_user):
        return pd.DataFrame()
    frame = per_user if "label" in per_user.columns else with_labels(per_user)
    keys = [c for c in ("dataset", "backbone", "split", "label") if c in frame.columns]
    avg = stats.mean_over_seeds(frame, keys, list(metrics))
    seeds = frame.groupby(keys, dropna=False)["seed"].agg(lambda s: ",".join(map(str, sorted(set(s)))))
    rows = []
    for key, group in avg.groupby(keys, dropna=False, sort=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row.update(users=len(group), seeds=seeds.get(key, ""))
        for m in metrics:
            mean, lo, hi = stats.bootstrap_mean_ci(group[m], n_resamples, seed)
            row[m], row[f"{m} lo"], row[f"{m} hi"] = mean, lo, hi
        rows.append(row)
    order = {v: i for i, v in enumerate(("base", *MAIN_VARIANTS))}
    out = pd.DataFrame(rows)
    return out.sort_values("label", key=lambda s: s.map(lambda lab: (order.get(lab.split()[0], 9), lab)),
                           kind="stable", ignore_index=True)
