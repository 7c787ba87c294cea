"""The report's text: setting, health, claims, metrics, comparisons and deviations from the paper,
as :mod:`analysis.render` blocks. Tables in, blocks out; no IO."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import verdicts
from analysis.claims import with_seeds
from analysis.collect import Collected
from analysis.conditions import (
    BASELINES,
    CONTROLS,
    main_labels,
    seed_list,
    strongest_baseline,
    with_labels,
)
from pauserec.evaluation import stats
from pauserec.model import backbone
from pauserec.registry import PAPER_PAUSES

CLAIM_COLUMNS = {
    "claim": "Claim",
    "paper": "Paper",
    "compared": "Compared",
    "measured": "Measured",
    "ci": "95% CI",
    "mde": "MDE (80% power)",
    "setting": "Setting",
    "verdict": "Verdict",
    "why": "Why",
}
RULES = (
    "Verdicts. Each claim states a direction and a minimum meaningful effect (the margin: 2% of "
    "the baseline for quality, 10% for cost and latency). A verdict needs at least 3 training "
    "seeds; Holm correction runs over the whole table. With the 95% CI signed so that the claimed "
    "direction is positive: entirely above the margin with Holm p < 0.05 reads **reproduced**; "
    "entirely below minus the margin reads **not reproduced**; entirely inside the margin reads "
    "**no meaningful difference**; anything else reads **inconclusive**; a single measurement "
    "reads **point estimate only**. Quality CIs combine the spread of per-seed paired effects with "
    "the user sampling shared by the seeds (t quantiles, no bootstrap: with 3 seeds a percentile "
    "bootstrap is far too narrow); latency CIs come from timed batches, cost CIs from replicate "
    "seeds. Gates come first and take a claim out of Holm: a quality claim whose trained side "
    "gives most users one list or scores below most-popular on the same users reads **inconclusive "
    "(not learned)**; a comparison that is not compute-matched (same start, steps, data, "
    "schedule), lacks its control, compares a baseline that reads another history or learns from "
    "other targets, or would pick a best rival on the split it is tested on reads **no verdict**, "
    "saying what is missing. MDE: the smallest true effect that would read reproduced in 80% of "
    "experiments with this design (at least 3 seeds on these users; `python -m pauserec "
    "experiment plan RUNS` gives the seeds and users a target needs)."
)
DESIGN = [
    "paired users: every condition is evaluated on the same test users and compared user by user",
    "paired seeds: a seed's conditions share its start (the seed's sft checkpoint), data order and "
    "subsamples, and effects are taken seed by seed (common random numbers across conditions)",
    "crossed seeds and users: every seed sees the same users, so the user sampling noise shared by "
    "the seeds is estimated once (with N - 1 df) instead of inflating the seed spread",
    "best-of choices (pause count, pause init) are made on the validation split and tested once",
    "more test users: the planner reads each dataset's full test set (one held-out target each)",
]
PAPER = {
    "backbone": "Qwen3-1.7B",
    "hardware": "GPUs",
    "datasets": "Amazon Beauty, Toys, Office (and others)",
}


def setting_lines(data: Collected, per_user: pd.DataFrame, runs: list[str]) -> list[str]:
    def uniq(df: pd.DataFrame, col: str) -> str:
        vals = sorted({str(v) for v in df.get(col, pd.Series(dtype=str)).dropna() if str(v)})
        return ", ".join(vals) or "—"

    trained = data.ckpts[data.ckpts["stage"] != "init"] if len(data.ckpts) else data.ckpts
    seeds = seed_list(trained["train_seed"]) if len(trained) else "—"
    where = sorted(
        {f"{d} ({t})" for d, t in zip(data.runs.get("device", []), data.runs.get("dtype", [])) if d}
    )
    trained = sorted(
        {
            f"{d} ({t})"
            for d, t in zip(data.ckpts.get("device", []), data.ckpts.get("dtype", []))
            if isinstance(d, str) and d
        }
    )
    return [
        f"runs: {', '.join(f'`{r}`' for r in runs)}",
        f"datasets: {uniq(data.ckpts, 'dataset')}; backbones: {uniq(data.ckpts, 'backbone')}; "
        f"training seeds: {seeds}",
        f"checkpoints: {len(data.ckpts)}; evaluations with per-user rows: "
        f"{per_user['eval_dir'].nunique() if len(per_user) else 0} "
        f"({per_user['user'].nunique() if len(per_user) else 0} distinct users)",
        f"trained on: {'; '.join(trained) or '—'}; evaluated on: {'; '.join(where) or '—'}",
        f"probes: {uniq(data.probes, 'probe')}",
    ]


def health_lines(data: Collected, per_user: pd.DataFrame) -> list[str]:
    """Conditions that have not learned: user-independent lists, or below the most-popular
    baseline."""
    lines = []
    flagged = data.health[data.health["user_independent"]] if len(data.health) else data.health
    # most-popular is so by design
    for cell in sorted(set(flagged.get("cell", [])) - set(BASELINES)):
        lines.append(
            f"`{cell}` gives most users the same top-10 list: it has not learned to condition on "
            "the user; read its metrics and its probe results with care."
        )
    if len(per_user) and (per_user["label"] == "popularity").any():
        pop = per_user.loc[per_user["label"] == "popularity", "recall@10"].mean()
        means = per_user[~per_user["label"].isin(BASELINES)].groupby("label")["recall@10"].mean()
        for cell, value in means.items():
            if value < pop:
                lines.append(
                    f"`{cell}` (recall@10 {value:.4f}) is below most-popular ({pop:.4f}): it has "
                    "not learned yet."
                )
    return lines


def metrics_table(cond: pd.DataFrame, per_user: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The conditions table with CIs as text and a note on conditions that have not learned."""
    if not len(cond):
        return cond
    out = cond.drop(columns=[c for c in cond.columns if c.endswith((" lo", " hi"))])
    for m in metrics:
        out[m] = [
            f"{v:.4f} [{lo:.4f}, {hi:.4f}]"
            for v, lo, hi in zip(cond[m], cond[f"{m} lo"], cond[f"{m} hi"])
        ]
    pop = (
        per_user.loc[per_user["label"] == "popularity", "recall@10"].mean()
        if len(per_user)
        else np.nan
    )
    out["note"] = [
        "classical baseline"
        if lab in BASELINES
        else ("below most-popular: not learned yet" if np.isfinite(pop) and v < pop else "")
        for lab, v in zip(cond["label"], cond["recall@10"])
    ]
    return out


def comparisons(per_user: pd.DataFrame, metric: str, main_rationale: str) -> pd.DataFrame:
    """Every trained condition against the plain reference, the compute-matched controls and the
    strongest classical baseline: paired effects (users within seeds, seeds across), Holm over the
    table."""
    if not len(per_user):
        return pd.DataFrame()
    labels = main_labels(per_user, main_rationale)
    refs = [
        r
        for r in (
            labels.get("sft-continued"),
            labels.get("plain"),
            labels.get("think-only"),
            strongest_baseline(per_user, metric),
        )
        if r
    ]
    cells = [c for c in dict.fromkeys(per_user["label"]) if c not in BASELINES]
    rows, effects = [], []
    for treat in cells:
        for base in refs:
            if base == treat:
                continue
            try:
                e = verdicts.paired_effect(
                    with_seeds(per_user, treat),
                    treat,
                    base,
                    metric,
                    label="label",
                    seed="train_seed",
                    user="user",
                )
            except ValueError:
                continue
            effects.append(e)
            rows.append(
                {
                    "treatment": treat,
                    "baseline": base,
                    "metric": metric,
                    "seeds": e.n_seeds,
                    "users": e.n_units,
                    "diff [95% CI]": f"{e.value:+.4f} [{e.lo:+.4f}, {e.hi:+.4f}]",
                    "relative [95% CI]": (
                        f"{e.rel:+.1f}% [{e.rel_lo:+.1f}, {e.rel_hi:+.1f}]"
                        if np.isfinite(e.rel_lo)
                        else "—"
                    ),
                    "p": e.p,
                }
            )
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame(rows)
    out["Holm p"] = stats.holm(out["p"].to_numpy(dtype=float))
    return out


def deviations(data: Collected, per_user: pd.DataFrame, main_rationale: str) -> list[str]:
    """What differs from the paper, read off what actually ran."""
    ck = data.ckpts
    out = []
    for col, what in (("backbone", "backbone"), ("dataset", "datasets")):
        vals = sorted({str(v) for v in ck.get(col, []) if str(v)})
        out.append(
            f"{what}: {', '.join(vals) or '—'} (paper: "
            f"{PAPER[what if what != 'datasets' else 'datasets']})"
        )
    devices = sorted({str(d) for d in ck.get("device", []) if isinstance(d, str) and d})
    if any(d.startswith("cpu") for d in devices):
        out.append(
            f"hardware: {', '.join(devices)} (paper: {PAPER['hardware']}); CPU runs use small "
            "subsamples and short schedules: read each condition's health beside its numbers"
        )
    out.append(
        "explicit-CoT baseline: CoT-SFT with template rationales and no RL stage (paper: "
        f"OneRec-Think, CoT-SFT + RL); main CoT source `{main_rationale}`"
    )
    targets = sorted({str(t) for t in ck.get("train_targets", []) if str(t) and t == t})
    out.append(
        f"training targets: {', '.join(targets) or '—'} (paper: last -- one example per user, the "
        "third-to-last item)"
    )
    layouts = sorted({str(t) for t in ck.get("layout", []) if str(t) and t == t} - {"example"})
    if layouts:
        out.append(
            f"training layout: {', '.join(layouts)} (paper: example -- one sequence per target; "
            "exact computes the same loss with each window's history shared, stream trains the "
            "history as one sequence and decodes the stream prompt format)"
        )
    scratch = sorted(
        {str(b) for b in ck.get("backbone", []) if str(b) and not backbone.language_model(str(b))}
    )
    if scratch:
        out.append(
            f"backbone trained from scratch: {', '.join(scratch)} (no pretrained language model: "
            "the verbalisation and SID-word alignment probes skip it)"
        )
    trained = ck[ck["stage"].isin(["sft", "pause-sft", "cot-sft"])] if len(ck) else ck
    if len(trained):
        n_train = sorted({int(n) for n in trained["n_train"].dropna()})
        epochs = sorted({int(e) for e in trained["epochs"].dropna()})
        hist = sorted({int(h) for h in trained["max_history"].dropna()})
        out.append(
            f"training data per stage: {', '.join(map(str, n_train)) or '—'} examples (0 = all), "
            f"epochs {', '.join(map(str, epochs))}; history length {', '.join(map(str, hist))} "
            "(paper: 20)"
        )
    inits = sorted(
        {str(i) for i in ck.get("token_init", pd.Series(dtype=object)).dropna()} - {"mean-all"}
    )
    if inits:
        out.append(
            f"new token rows initialised `{', '.join(inits)}` (paper: the mean of the existing "
            "rows; `default` samples each row from the word embeddings' distribution)"
        )
    seeds = ck["train_seed"].dropna().nunique() if len(ck) else 0
    if seeds < verdicts.MIN_SEEDS:
        out.append(
            f"training seeds: {seeds} (verdicts need {verdicts.MIN_SEEDS}; with fewer every claim "
            "reads inconclusive or point estimate only)"
        )
    users = per_user.groupby("label")["user"].nunique().min() if len(per_user) else 0
    out.append(f"evaluated users per condition: {users:,} (paper: all test users)")
    roles = main_labels(per_user)
    if "pause" not in roles:
        out.append(
            f"the paper's pause condition ({PAPER_PAUSES} "
            "pauses, pretrained init) was not evaluated"
        )
    missing = [c for c in CONTROLS if c not in roles]
    if missing:
        out.append(f"compute-matched controls not run: {', '.join(missing)}")
    return out + baseline_footing(per_user)


def baseline_footing(per_user: pd.DataFrame) -> list[str]:
    """What the classical baselines and the trained conditions read and learn from, side by side."""
    if not len(per_user) or "history_len" not in per_user.columns:
        return []
    rows = per_user.assign(base=per_user["label"].isin(BASELINES))

    def says(part: pd.DataFrame) -> str:
        longest = pd.to_numeric(part["history_len"], errors="coerce").max()
        targets = "/".join(sorted(set(part["train_targets"].astype(str)) - {""})) or "—"
        return f"read up to {longest:.0f} history items, training targets `{targets}`"

    if not rows["base"].any() or rows["base"].all():
        return []
    return [
        f"classical baselines {says(rows[rows['base']])}; trained conditions "
        f"{says(rows[~rows['base']])}"
    ]


def claim_rows(table: pd.DataFrame) -> pd.DataFrame:
    if not len(table):
        return table
    out = table[list(CLAIM_COLUMNS)].rename(columns=CLAIM_COLUMNS)
    if table["dataset"].astype(str).str.len().any():
        out.insert(0, "Data", table["dataset"].astype(str) + ", " + table["backbone"].astype(str))
    return out


def labelled(per_user: pd.DataFrame, split: str) -> pd.DataFrame:
    rows = with_labels(per_user)
    return rows[rows["split"] == split] if len(rows) else rows
