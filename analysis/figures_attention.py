"""Figures of the attention probe: tidy rows in, a Figure out (:class:`NoData` when the rows are
absent)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import theme
from analysis.figures import NoData
from analysis.rows import ckpt_order, col, has, of, pick


def segments(df: pd.DataFrame):
    """Attention mass per layer onto each prompt segment, from pause and SID-generating
    positions."""
    if not has(df, "attn_mass") and not has(df, "attn_mass_sid"):
        raise NoData("no attention-mass rows")
    keys = ckpt_order(df)[:3]
    fig, axes = theme.figure(
        ncols=2, nrows=len(keys), height=2.6, squeeze=False, layout="constrained"
    )
    for r, key in enumerate(keys):
        for c, (metric, who) in enumerate(
            (("attn_mass", "pause positions"), ("attn_mass_sid", "SID-generating positions"))
        ):
            ax, rows = axes[r][c], pick(of(df, key), metric)
            if not len(rows):
                ax.set_visible(False)
                continue
            grid = rows.pivot_table(
                index="layer", columns="segment", values="value", aggfunc="mean"
            )
            im = ax.imshow(
                grid.to_numpy(), aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1
            )
            ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right", fontsize=7)
            step = max(1, len(grid) // 8)
            ax.set_yticks(range(0, len(grid), step), [str(int(v)) for v in grid.index[::step]])
            ax.set(ylabel="layer", title=f"{key[1]} ({key[0]}): from {who}")
            ax.grid(False)
            fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def early_vs_late(df: pd.DataFrame):
    """Segment masses of the first vs the last half of the pauses."""
    if not has(df, "attn_mass_early", "attn_mass_late"):
        raise NoData("no early/late pause rows (k < 2)")
    keys = ckpt_order(df)[:3]
    fig, axes = theme.figure(ncols=len(keys), height=2.6, squeeze=False, layout="constrained")
    for ax, key in zip(axes.flat, keys):
        for j, metric in enumerate(("attn_mass_early", "attn_mass_late")):
            means = pick(of(df, key), metric).groupby("segment")["value"].mean()
            x = np.arange(len(means))
            ax.bar(
                x + (j - 0.5) * 0.38,
                means.to_numpy(),
                0.38,
                label=metric.rsplit("_", 1)[1] + " pauses",
                color=theme.colors(2)[j],
            )
            ax.set_xticks(x, means.index, rotation=45, ha="right", fontsize=7)
        ax.set(ylabel="attention mass (mean over layers, heads)", title=f"{key[1]} ({key[0]})")
        ax.legend(fontsize=6)
    return fig


def relevance(df: pd.DataFrame):
    """Partial correlation of attention with relevance to the target, against its re-pairing
    baseline."""
    if not has(df, "relevance_corr_partial"):
        raise NoData("no relevance rows")
    rows = df[df["metric"].isin(["relevance_corr_partial", "relevance_corr_partial_baseline"])]
    relations = [r for r in ("prefix", "category") if (col(rows, "relation") == r).any()] or [
        "prefix"
    ]
    fig, axes = theme.figure(ncols=len(relations), height=2.6, squeeze=False, layout="constrained")
    keys = ckpt_order(df)[:3]
    colors = dict(
        zip([(k, q) for k in keys for q in ("pause", "sid")], theme.colors(2 * len(keys)))
    )
    for ax, relation in zip(axes.flat, relations):
        for key in keys:
            for query in ("pause", "sid"):
                for metric, ls in (
                    ("relevance_corr_partial", "-"),
                    ("relevance_corr_partial_baseline", "--"),
                ):
                    g = pick(of(rows, key), metric, relation=relation)
                    g = g[(col(g, "query") == query) & g["layer"].notna()].sort_values("layer")
                    if len(g):
                        ax.plot(
                            g["layer"],
                            g["value"],
                            ls,
                            color=colors[(key, query)],
                            lw=1.1,
                            label=None if ls == "--" else f"{key[1]}: from {query}",
                        )
        ax.axhline(0, color="#555555", lw=0.6)
        ax.set(
            xlabel="layer", ylabel="partial correlation", title=f"attention vs shared {relation}"
        )
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(
        "Within-history, position-adjusted; dashed: targets re-paired across users", fontsize=8
    )
    return fig


def interventions(df: pd.DataFrame):
    """Paired change in recall/NDCG/target log-prob when the pauses are removed, masked or
    replaced."""
    metrics = [
        m
        for m in (
            "intervention_delta_recall@10",
            "intervention_delta_ndcg@10",
            "intervention_delta_target_logprob",
        )
        if has(df, f"{m}_mean", f"{m}_lo", f"{m}_hi")
    ]
    if not metrics:
        raise NoData("no intervention rows (the attention probe ran without --interventions)")
    fig, axes = theme.figure(ncols=len(metrics), height=2.6, squeeze=False, layout="constrained")
    keys = ckpt_order(df)
    colors = dict(zip(keys, theme.colors(len(keys))))
    for ax, metric in zip(axes.flat, metrics):
        for j, key in enumerate(keys):
            rows = of(df, key)
            stats = {
                s: pick(rows, f"{metric}_{s}").set_index("intervention")["value"]
                for s in ("mean", "lo", "hi")
            }
            conds = list(stats["mean"].index)
            x = np.arange(len(conds)) + (j - (len(keys) - 1) / 2) * 0.2
            m = stats["mean"].to_numpy()
            err = np.vstack([m - stats["lo"][conds].to_numpy(), stats["hi"][conds].to_numpy() - m])
            ax.errorbar(
                x, m, yerr=err, fmt="o", capsize=3, color=colors[key], label=f"{key[1]} ({key[0]})"
            )
            ax.set_xticks(np.arange(len(conds)), conds, rotation=20, fontsize=7)
        ax.axhline(0, color="#555555", lw=0.8)
        ax.set(
            ylabel=metric.replace("intervention_delta_", "Δ "), title="intervention - unmodified"
        )
    axes.flat[0].legend(fontsize=6)
    fig.text(0.01, -0.02, theme.CI_CAPTION + " Paired over users.", fontsize=7)
    return fig
