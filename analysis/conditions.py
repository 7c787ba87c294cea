"""Trained conditions: their labels, which ones the claims compare, and their metric table.

A condition is an experiment *cell*, recorded by the trainer in every checkpoint and carried by
every evaluation row: ``sft``, ``pause-k5``, ``pause-k5-mean-text``, ``think-only``,
``sft-continued``, ``filler-k5``, ``cot-template``, and the classical baselines ``popularity``,
``markov``, ``sasrec``. The label of a row is its cell; nothing is guessed from paths or metric
names.

The claims' gates read here whether a comparison is a fair one: :func:`not_learned` (a condition
whose lists do not depend on the user, or that scores below most-popular on the same users),
:func:`unmatched` (two conditions trained from different starts, for different steps, on different
data or schedules), :func:`footing` (a classical baseline that reads another history length or
trains on other targets than the condition it is compared with) and :func:`best_on_valid` (a best-of
choice made on the validation split, never on the split it is then tested on).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from pauserec import registry
from pauserec.evaluation import stats


def seed_list(values) -> str:
    """Training seeds as ``0,1,2`` (missing values skipped, floats from CSVs as ints); ``—`` when
    none."""
    return ",".join(str(int(s)) for s in sorted({float(v) for v in values if v == v})) or "—"


PRIMARY = "recall@10"
CONTROLS = ("sft-continued", "think-only", "filler")  # roles of the compute-matched controls
BASELINES = ("popularity", "markov", "sasrec")
ORDER = ("baseline", "base", "plain", "pause", "cot")  # how variants are listed


def with_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus a ``label`` column: the cell (empty frames get an empty one)."""
    out = frame.copy()
    out["label"] = (
        out["cell"].astype(str) if "cell" in out.columns and len(out) else pd.Series(dtype=str)
    )
    return out


def matching(frame: pd.DataFrame, **columns) -> pd.Series:
    """Rows of ``frame`` whose identity columns equal ``columns`` (a column ``frame`` lacks matches
    "")."""
    keep = pd.Series(True, index=frame.index)
    for col, want in columns.items():
        have = frame[col] if col in frame.columns else pd.Series("", index=frame.index)
        keep &= (
            (pd.to_numeric(have, errors="coerce") == want)
            if isinstance(want, int)
            else (have.fillna("").astype(str) == str(want))
        )
    return keep


def main_labels(frame: pd.DataFrame, main_rationale: str = "template") -> dict[str, str]:
    """{role: cell} of the conditions the claims compare, for those present in ``frame``, selected
    by identity columns (:data:`pauserec.registry.ROLES`): ``plain`` (sft), ``pause`` (the paper's
    pause count, pretrained init), ``cot`` (the main rationale source), the controls and the
    baselines."""
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
    """The classical baseline with the best mean ``metric`` (the one every variant is compared
    with)."""
    rows = per_user[per_user["cell"].isin(BASELINES)] if len(per_user) else per_user
    if not len(rows):
        return None
    return str(rows.groupby("cell")[metric].mean().idxmax())


def not_learned(
    per_user: pd.DataFrame, health: pd.DataFrame, cell: str, metric: str = PRIMARY
) -> str:
    """Why ``cell`` has not learned to recommend ('' if it has): an evaluation that gives most users
    the same top-10 list (``user_independent``), or a mean ``metric`` below most-popular (the
    ``popularity`` baseline) on the same users. ``per_user`` and ``health`` hold one split."""
    why = []
    flags = (
        health[(health["cell"] == cell) & health["user_independent"].astype(bool)]
        if len(health)
        else health
    )
    if len(flags):
        seeds = seed_list(flags["train_seed"])
        why.append(f"`{cell}` gives most users the same top-10 list (seeds {seeds})")
    pop = per_user[per_user["label"] == "popularity"].drop_duplicates("user")
    pop = pop.set_index("user")[metric]
    rows = per_user[(per_user["label"] == cell) & per_user["user"].isin(pop.index)]
    if len(rows):
        mean = rows.groupby("train_seed", dropna=False)[metric].mean().mean()
        floor = pop[rows["user"].unique()].mean()
        if mean < floor:
            why.append(
                f"`{cell}` {metric} {mean:.4f} is below most-popular's {floor:.4f} on the "
                f"same {rows['user'].nunique():,} users"
            )
    return "; ".join(why)


MATCHED = (
    "dataset",
    "start",
    "steps",
    "n_train",
    "train_targets",
    "max_history",
    "epochs",
    "max_steps",
    "lr",
    "batch_size",
    "batch_tokens",
    "warmup_ratio",
)  # start, steps, data,
# schedule: what two compute-matched conditions share (the checkpoints' training records)


def _text(value) -> str:
    if value is None or value != value or value == "":
        return "—"
    return f"{value:g}" if isinstance(value, float) else str(value)


def unmatched(ckpts: pd.DataFrame, treat: str, base: str) -> str:
    """How the training of ``treat`` and ``base`` differs in :data:`MATCHED` (start, steps, data,
    schedule), seed by seed ('' when compute-matched); what cannot be checked is named."""
    rows = {}
    for cell in (treat, base):
        found = ckpts[ckpts["cell"] == cell] if len(ckpts) else ckpts
        if not len(found):
            return f"no training record (pauserec.json) of `{cell}`: compute cannot be checked"
        rows[cell] = found.drop_duplicates("train_seed").set_index("train_seed")
    seeds = sorted(set(rows[treat].index) & set(rows[base].index))
    if not seeds:
        return "no training seed on both sides: compute cannot be checked"
    diffs = []
    for col in MATCHED:
        a, b = (
            [_text(r[col].get(s)) if col in r else "—" for s in seeds]
            for r in (rows[treat], rows[base])
        )
        bad = [i for i in range(len(seeds)) if a[i] != b[i]]
        if bad:
            diffs.append(f"{col} {a[bad[0]]} vs {b[bad[0]]} (seed {seeds[bad[0]]:g})")
    return "; ".join(diffs)


def footing(per_user: pd.DataFrame, treat: str, base: str) -> str:
    """How a classical baseline ``base`` differs from ``treat`` in what it reads and learns from
    ('' if it does not): the longest history read (``history_len``) and the training targets."""
    sides = [per_user[per_user["label"] == c] for c in (treat, base)]
    diffs = []
    if "history_len" in per_user.columns:
        longest = [int(pd.to_numeric(s["history_len"], errors="coerce").max()) for s in sides]
        if longest[0] != longest[1]:
            diffs.append(f"history read: up to {longest[0]} vs {longest[1]} items")
    targets = ["/".join(sorted(map(str, s["train_targets"].unique()))) for s in sides]
    if targets[0] != targets[1]:
        diffs.append(f"training targets {targets[0]} vs {targets[1]}")
    return "; ".join(diffs)


def best_on_valid(
    valid: pd.DataFrame, cells: Sequence[str], metric: str = PRIMARY
) -> tuple[str | None, str]:
    """(the cell of ``cells`` with the best mean ``metric`` on the validation rows ``valid``, '')
    or (None, why not): every candidate needs a validation-split evaluation (one: no choice)."""
    if len(cells) <= 1:
        return (cells[0] if cells else None), ""
    have = set(valid["label"].unique()) if len(valid) else set()
    missing = [c for c in cells if c not in have]
    if missing:
        return None, (
            f"the best of {', '.join(cells)} must be chosen on the valid split: no "
            f"valid-split evaluation of {', '.join(missing)}"
        )
    return str(valid[valid["label"].isin(cells)].groupby("label")[metric].mean().idxmax()), ""


def conditions_table(
    per_user: pd.DataFrame,
    metrics: Sequence[str] = ("recall@10", "ndcg@10"),
    n_resamples: int = stats.N_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (dataset, backbone, split, cell): users, seeds, and each metric's mean with a
    bootstrap CI over users (seeds averaged per user first)."""
    if not len(per_user):
        return pd.DataFrame()
    frame = with_labels(per_user).assign(train_seed=per_user["train_seed"].fillna(-1))
    keys = [c for c in ("dataset", "backbone", "split", "variant", "label") if c in frame.columns]
    frame[keys] = frame[keys].fillna("").astype(str)  # baselines have no backbone
    avg = stats.mean_over_seeds(frame, keys, list(metrics), seed="train_seed")
    seeds = frame.groupby(keys, dropna=False)["train_seed"].agg(
        lambda s: ",".join(str(int(x)) for x in sorted(set(s)) if x >= 0) or "—"
    )
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
    return out.sort_values(
        ["variant", "label"],
        key=lambda s: s.map(lambda v: (order.get(v, 9), v)),
        kind="stable",
        ignore_index=True,
    ).drop(columns="variant")
