"""Figures of evaluation and cost results. Each takes tidy DataFrames and returns a Figure; no IO.

Inputs are the tables of :mod:`analysis.collect` (``per_user`` = :func:`eval_rows`; the ``label`` of
a row is its cell). Error bars are 95% bootstrap CIs over users (seeds averaged per user first), and
each figure says so in its footnote. Classical baselines are drawn as reference lines. A figure
whose data is absent raises :class:`NoData`; the report lists it as "not run".
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Sequence

import matplotlib.figure
import numpy as np
import pandas as pd

from analysis import theme
from analysis.conditions import BASELINES, PRIMARY, main_labels, matching, with_labels
from pauserec.evaluation import stats
from pauserec.evaluation.stats import N_RESAMPLES
from pauserec.registry import PAPER_PAUSES

USER_CI = "Error bars: 95% bootstrap CIs over users (seeds averaged per user)."
SEED_CI = "Error bars: 95% CIs across seeds (training cost) and timed batches (latency)."


class NoData(ValueError):
    """The data a figure needs is absent (the report lists the figure as "not run")."""


def footnote(fig: matplotlib.figure.Figure, text: str) -> matplotlib.figure.Figure:
    """Lay ``fig`` out, leaving a strip at the bottom for ``text`` (what the error bars are)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # layouts with colorbars
        fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))
    fig.text(0.01, 0.01, text, ha="left", va="bottom", fontsize=7, color="#555555")
    return fig


def wrap(text: object, width: int = 14) -> str:
    return "\n".join(textwrap.wrap(str(text), width)) or str(text)


def stage_colors(stages) -> dict[str, str]:
    """A fixed colour per training stage (by its place in ``theme.STAGE_ORDER``), in stage order."""
    order = [s for s in theme.STAGE_ORDER if s in set(stages)] + sorted(
        set(stages) - set(theme.STAGE_ORDER)
    )
    palette = theme.colors(len(theme.STAGE_ORDER) + len(order))
    extra = iter(palette[len(theme.STAGE_ORDER) :])
    return {
        s: palette[theme.STAGE_ORDER.index(s)] if s in theme.STAGE_ORDER else next(extra)
        for s in order
    }


def _labelled(per_user: pd.DataFrame) -> pd.DataFrame:
    if not len(per_user):
        raise NoData("no per-user evaluation rows")
    return with_labels(per_user)


def _avg(df: pd.DataFrame, keys: list[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Per-user values averaged over training seeds (baselines without a seed count as one)."""
    return stats.mean_over_seeds(
        df.assign(train_seed=df["train_seed"].fillna(-1)), keys, list(metrics), seed="train_seed"
    )


def _baseline_lines(ax, df: pd.DataFrame, metric: str) -> None:
    """Each classical baseline's mean as a dotted reference line."""
    for i, name in enumerate(b for b in BASELINES if (df["label"] == b).any()):
        mean = float(df.loc[df["label"] == name, metric].mean())
        ax.axhline(
            mean, ls=":", lw=1, color=theme.colors(10)[7 + i % 3], label=f"{name} {mean:.3f}"
        )


def _order(labels: Sequence[str], variant_of: dict[str, str]) -> list[str]:
    rank = {v: i for i, v in enumerate(theme.VARIANT_ORDER)}
    return sorted(labels, key=lambda lab: (rank.get(variant_of.get(lab, ""), 99), lab))


def _bars(ax, table: pd.DataFrame, x: str, colors: Sequence[str]) -> None:
    """Bars of ``table.mean`` with [lo, hi] error bars, one per row, labelled by column ``x``."""
    pos = np.arange(len(table))
    err = np.vstack([table["mean"] - table["lo"], table["hi"] - table["mean"]]).clip(min=0)
    ax.bar(pos, table["mean"], yerr=np.nan_to_num(err), color=colors, capsize=3, width=0.7)
    ax.set_xticks(pos, [wrap(v) for v in table[x]], fontsize=7)


def metrics_by_variant(
    per_user: pd.DataFrame,
    metrics: Sequence[str] = ("recall@10", "ndcg@10"),
    labels: Sequence[str] | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> matplotlib.figure.Figure:
    """Bars per trained condition (default: the main plain/pause/cot and the controls), one panel
    per metric, with CIs; the classical baselines as reference lines."""
    all_rows = _labelled(per_user)
    labels = list(labels or [c for r, c in main_labels(all_rows).items() if r not in BASELINES])
    df = all_rows[all_rows["label"].isin(labels)]
    if not len(df):
        raise NoData("no evaluated plain/pause/cot condition")
    variant_of = df.groupby("label")["variant"].first().to_dict()
    order = _order(labels, variant_of)
    avg = _avg(df, ["label"], metrics)
    fig, axes = theme.figure(ncols=len(metrics), height=2.8, squeeze=False)
    colors = [theme.palette(variant_of.values())[variant_of[lab]] for lab in order]
    for ax, metric in zip(axes[0], metrics):
        table = (
            stats.ci_table(avg, ["label"], metric, n_resamples, seed).set_index("label").loc[order]
        )
        _bars(ax, table.reset_index(), "label", colors)
        _baseline_lines(ax, all_rows, metric)
        ax.set_ylabel(metric)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"{', '.join(metrics)} by variant ({avg['user'].nunique():,} users)", fontsize=10)
    return footnote(fig, USER_CI)


def _sweep_rows(per_user: pd.DataFrame) -> pd.DataFrame:
    """Evaluated pause-sft cells with real pauses (not the controls)."""
    df = _labelled(per_user)
    rows = df[matching(df, stage="pause-sft", control="")]
    if not len(rows):
        raise NoData("no evaluated pause-sft condition")
    return rows


def k_sweep(
    per_user: pd.DataFrame, metric: str = PRIMARY, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> matplotlib.figure.Figure:
    """``metric`` against the number of pauses k (one line per pause init), plain/cot as
    references."""
    df = _labelled(per_user)
    rows = _sweep_rows(df)
    if rows["n_pauses"].nunique() < 2:
        raise NoData(
            "pause evaluated at one pause count only "
            f"({sorted(int(x) for x in rows['n_pauses'].unique())})"
        )
    fig, ax = theme.figure(height=2.8)
    for i, (init, group) in enumerate(rows.groupby("pause_init", dropna=False)):
        avg = _avg(group, ["n_pauses"], [metric])
        t = stats.ci_table(avg, ["n_pauses"], metric, n_resamples, seed).sort_values("n_pauses")
        color = (
            theme.VARIANT_COLORS["pause"]
            if "pretrain" in str(init)
            else theme.colors(10)[4 + i % 6]
        )
        ax.errorbar(
            t["n_pauses"],
            t["mean"],
            yerr=np.vstack([t["mean"] - t["lo"], t["hi"] - t["mean"]]),
            marker="o",
            capsize=3,
            color=color,
            label=f"pause, init={init or '?'}",
        )
    for role, lab in main_labels(df).items():
        if role in ("plain", "cot"):
            mean = _avg(df[df["label"] == lab], ["label"], [metric])[metric].mean()
            ax.axhline(mean, ls="--", lw=1, color=theme.VARIANT_COLORS[role], label=lab)
    _baseline_lines(ax, df, metric)
    ax.axvline(PAPER_PAUSES, color="#999999", lw=0.8, ls=":")
    ax.set(
        xlabel="number of pauses",
        ylabel=metric,
        title=f"{metric} vs pauses (paper: {PAPER_PAUSES})",
    )
    ax.legend(loc="best")
    return footnote(fig, USER_CI + " Dashed: the main plain / cot conditions.")


def pause_init_ablation(
    per_user: pd.DataFrame, metric: str = PRIMARY, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> matplotlib.figure.Figure:
    """Bars per pause-embedding initialisation, at the main condition's k."""
    rows = _sweep_rows(per_user)
    rows = rows[rows["n_pauses"] == PAPER_PAUSES]
    if rows["pause_init"].nunique() < 2:
        raise NoData(f"one pause init only ({sorted(rows['pause_init'].astype(str).unique())})")
    avg = _avg(rows, ["pause_init"], [metric])
    table = stats.ci_table(avg, ["pause_init"], metric, n_resamples, seed).sort_values("mean")
    fig, ax = theme.figure(height=2.6)
    colors = [
        theme.VARIANT_COLORS["pause"] if "pretrain" in str(v) else "#f4a6a6"
        for v in table["pause_init"]
    ]
    _bars(ax, table, "pause_init", colors)
    ax.set(
        xlabel="pause embedding init",
        ylabel=metric,
        title=f"Pause-init ablation ({PAPER_PAUSES} pauses)",
    )
    return footnote(fig, USER_CI)


def cost(train: pd.DataFrame, latency: pd.DataFrame) -> matplotlib.figure.Figure:
    """Training device-hours per condition (whole lineage, stacked by stage) and inference latency.

    ``train``: :func:`analysis.costs.training_rows`; ``latency``:
    :func:`analysis.costs.latency_rows`.
    """
    if not len(train) and not len(latency):
        raise NoData("no timings and no latency measurements")
    fig, (ax1, ax2) = theme.figure(ncols=2, height=2.8)
    if len(train):
        per = train.groupby(["cell", "timing_stage", "train_seed"], dropna=False)[
            "device_hours"
        ].sum()
        per = per.groupby(["cell", "timing_stage"]).mean().unstack(fill_value=0.0)
        bottom = np.zeros(len(per))
        for stage, color in stage_colors(per.columns).items():
            ax1.bar(per.index, per[stage], bottom=bottom, label=stage, color=color, alpha=0.85)
            bottom += per[stage].to_numpy()
        ax1.set_ylim(0, 1.45 * float(bottom.max() or 1.0))  # headroom for the legend
        ax1.legend(fontsize=6, loc="upper center", ncol=3)
        ax1.tick_params(axis="x", labelsize=7, rotation=20)
    ax1.set(ylabel="device-hours (whole lineage)", title="Training cost")
    if len(latency):
        t = stats.ci_table(latency, ["cell"], "value")
        _bars(ax2, t, "cell", theme.colors(len(t)))
    ax2.set(ylabel="ms per sample", title="Inference latency (greedy, batch 16)")
    return footnote(fig, SEED_CI)


def training_curves(logs: pd.DataFrame) -> matplotlib.figure.Figure:
    """Training loss against step, one line per (stage, cell, seed), coloured by stage."""
    if not len(logs) or not {"step", "loss"} <= set(logs.columns):
        raise NoData("no train_log.csv with step and loss")
    fig, ax = theme.figure(height=2.6)
    colors = stage_colors(logs["stage"])
    logs = logs.assign(train_seed=logs["train_seed"].fillna(0))
    first_seed = logs["train_seed"].min()
    groups = logs.groupby(["stage", "cell", "train_seed"])
    for stage, cell, seed in sorted(
        groups.groups, key=lambda k: (list(colors).index(k[0]), k[1], k[2])
    ):
        g = groups.get_group((stage, cell, seed)).sort_values("step")
        ax.plot(
            g["step"],
            g["loss"],
            color=colors[stage],
            lw=1,
            marker="o" if len(g) < 5 else None,
            ms=3,
            label=cell if seed == first_seed else None,
        )
    loss = logs["loss"][logs["loss"] > 0]
    wide = len(loss) and loss.max() / loss.min() > 10
    ax.set(
        xlabel="step",
        ylabel="loss",
        title="Training loss by stage",
        yscale="log" if wide else "linear",
    )
    ax.legend(fontsize=6)
    return footnote(fig, "Loss as logged by the trainer (no error bars).")


def learning_curves(valid: pd.DataFrame) -> matplotlib.figure.Figure:
    """Validation Recall@10 against the targets trained on, one line per (backbone, cell, seed),
    with the most-popular list's Recall@10 on the same users as a dashed line: where (and whether) a
    model passed it."""
    need = {"targets", "recall@10", "popular_recall@10"}
    if not len(valid) or not need <= set(valid.columns):
        raise NoData("no valid_log.csv (train with --valid-every N to log validation Recall@10)")
    valid = valid.assign(train_seed=valid["train_seed"].fillna(0))
    groups = list(valid.groupby(["dataset", "backbone"], sort=True))
    fig, axes = theme.figure(ncols=len(groups), height=2.6)
    axes = np.atleast_1d(axes)
    for ax, ((dataset, bb), rows) in zip(axes, groups):
        cells = sorted(set(rows["cell"]))
        colors = dict(zip(cells, theme.colors(len(cells))))
        first = rows["train_seed"].min()
        for (cell, seed), g in rows.groupby(["cell", "train_seed"]):
            g = g.sort_values("targets")
            x, y = g["targets"], g["recall@10"]
            label = cell if seed == first else None  # one legend entry per cell
            ax.plot(x, y, color=colors[cell], lw=1, marker="o", ms=2.5, label=label)
        ax.axhline(
            rows["popular_recall@10"].mean(), color="#555555", lw=0.9, ls="--", label="most popular"
        )
        ax.set(xlabel="targets trained on", ylabel="validation recall@10", title=f"{dataset}, {bb}")
        ax.legend(fontsize=6)
    users = int(valid["users"].max()) if "users" in valid.columns else 0
    return footnote(
        fig,
        f"Recall@10 on {users:,} seeded validation users (never trained on), measured while "
        "each stage trained; dashed: the most-popular list on the same users (no error bars).",
    )
