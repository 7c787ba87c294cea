"""Figures of the alignment probe: tidy rows in, a Figure out (:class:`NoData` when the rows are
absent). Several checkpoints become a trajectory: the x axis follows the order in which the
checkpoints were given (labelled by stage)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import theme
from analysis.figures import NoData
from analysis.rows import ckpt_order, col, has, pick

ALIGN = [
    ("cosine_sid_title", None),
    ("cka", "mean"),
    ("cka", "concat"),
    ("mknn", "mean"),
    ("procrustes_residual", "mean"),
    ("word_precision", None),
    ("centroid_distance", None),
    ("separability_acc", None),
]


def by_stage(df: pd.DataFrame):
    """Each agreement metric per stage, with its permutation and random-row baselines."""
    panels = [(m, s) for m, s in ALIGN if has(df, m) and len(pick(df, m, s))]
    if not panels:
        raise NoData("no alignment rows (" + ", ".join(sorted({m for m, _ in ALIGN})) + ")")
    order = ckpt_order(df)
    ncols = min(4, max(1, len(panels)))
    fig, axes = theme.figure(
        ncols=ncols, nrows=-(-len(panels) // ncols), height=2.3, squeeze=False, layout="constrained"
    )
    matrices = [m for m in ("input", "output") if (col(df, "matrix") == m).any()]
    colors = dict(zip(matrices, theme.colors(len(matrices))))
    x = np.arange(len(order))
    for ax, (metric, space) in zip(axes.flat, panels):
        for matrix in matrices:
            for suffix, style in (("", "-o"), ("_baseline", "--"), ("_random", ":")):
                rows = pick(df, metric + suffix, space, level=None)
                rows = rows[col(rows, "matrix") == matrix]
                if not len(rows):
                    continue
                means = rows.groupby(["ckpt", "stage"])["value"].mean()
                y = [means.get(key, np.nan) for key in order]
                ax.plot(
                    x,
                    y,
                    style,
                    color=colors[matrix] if not suffix else "#999999",
                    ms=3,
                    lw=1,
                    label=matrix
                    + {"": "", "_baseline": " (permuted)", "_random": " (random rows)"}[suffix],
                )
        ax.set_xticks(x, [stage for _, stage in order], rotation=30, ha="right", fontsize=7)
        ax.set_title(metric + (f" ({space})" if space and metric == "cka" else ""), fontsize=8)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(
        "SID-token vs title-word alignment per stage (dashed: items re-paired; dotted: random "
        "SID rows, same codes)",
        fontsize=9,
    )
    return fig


def _two_panels(df: pd.DataFrame, metric: str, missing: str):
    """(checkpoints in order, fig, axes) of a two-panel figure of ``metric``; NoData when it is
    absent."""
    if not has(df, metric):
        raise NoData(missing)
    return (ckpt_order(df), *theme.figure(ncols=2, height=2.6, squeeze=False, layout="constrained"))


def contextual(df: pd.DataFrame):
    """Cosine of SID vs title mentions in the residual stream, per layer."""
    order, fig, axes = _two_panels(df, "context_cosine", "no context_cosine rows")
    colors = dict(zip(order, theme.colors(len(order))))
    for ax, space in zip(axes.flat, ("mention", "last")):
        for key in order:
            for suffix, ls in (("", "-"), ("_baseline", "--")):
                rows = pick(df, "context_cosine" + suffix, space)
                rows = rows[(rows["ckpt"] == key[0]) & (rows["stage"] == key[1])].sort_values(
                    "layer"
                )
                ax.plot(
                    rows["layer"],
                    rows["value"],
                    ls,
                    color=colors[key],
                    lw=1.2,
                    label=None if suffix else f"{key[1]} ({key[0]})",
                )
        ax.set(
            xlabel="layer (blocks applied)", ylabel="cosine", title=f"SID vs title mention: {space}"
        )
    axes.flat[0].legend(fontsize=6)
    return fig


def geometry(df: pd.DataFrame):
    """Embedding norms per group and where <pause> sits between the SID and word clouds."""
    order, fig, axes = _two_panels(df, "norm_q50", "no embedding-norm rows")
    ax = axes[0][0]
    groups = [g for g in ("sid", "word", "<pause>") if (col(df, "group") == g).any()]
    colors = dict(zip(groups, theme.colors(len(groups))))
    for j, group in enumerate(groups):
        q = {
            m: pick(df, m, group=group)
            .query("matrix == 'input'")
            .groupby(["ckpt", "stage"])["value"]
            .mean()
            for m in ("norm_q05", "norm_q25", "norm_q50", "norm_q75", "norm_q95")
        }
        for i, key in enumerate(order):
            xi = i + (j - (len(groups) - 1) / 2) * 0.22
            ax.vlines(xi, q["norm_q05"].get(key), q["norm_q95"].get(key), color=colors[group], lw=1)
            ax.vlines(xi, q["norm_q25"].get(key), q["norm_q75"].get(key), color=colors[group], lw=5)
            ax.plot(xi, q["norm_q50"].get(key), "o", color="white", ms=2.5)
        ax.plot([], [], color=colors[group], lw=4, label=group)
    ax.set_xticks(range(len(order)), [s for _, s in order], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="embedding norm", title="norms (input): 5/25/50/75/95%")
    ax.legend(fontsize=6)
    ax = axes[0][1]
    for j, (metric, name) in enumerate(
        (("dist_to_sid_centroid", "to SID centroid"), ("dist_to_word_centroid", "to word centroid"))
    ):
        rows = pick(df, metric, group="<pause>").query("matrix == 'input'")
        means = rows.groupby(["ckpt", "stage"])["value"].mean()
        ax.bar(
            np.arange(len(order)) + (j - 0.5) * 0.38,
            [means.get(k, np.nan) for k in order],
            0.38,
            label=name,
            color=theme.colors(2)[j],
        )
    ax.set_xticks(range(len(order)), [s for _, s in order], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="distance", title="where <pause> sits (input)")
    ax.legend(fontsize=6)
    return fig


def umap(df: pd.DataFrame):
    """UMAP maps of SID, word and special tokens, one panel per checkpoint (first three)."""
    if not has(df, "umap_x", "umap_y"):
        raise NoData("no UMAP rows (the alignment probe ran with --no-umap)")
    order = ckpt_order(df)
    order = order if len(order) <= 3 else [order[0], *order[-2:]]  # the start and the two variants
    rows = df[df["metric"].isin(["umap_x", "umap_y"]) & (col(df, "matrix") == "input")]
    fig, axes = theme.figure(ncols=len(order), height=2.8, squeeze=False, layout="constrained")
    spaces = sorted(rows["space"].dropna().unique())
    colors = dict(zip(spaces, theme.colors(len(spaces))))
    for ax, key in zip(axes.flat, order):
        g = rows[(rows["ckpt"] == key[0]) & (rows["stage"] == key[1])]
        wide = g.pivot_table(
            index=["space", "token"], columns="metric", values="value"
        ).reset_index()
        for space, h in wide.groupby("space"):
            big = space not in ("sid", "word")
            ax.scatter(
                h["umap_x"],
                h["umap_y"],
                s=30 if big else 3,
                marker="*" if big else "o",
                alpha=1.0 if big else 0.5,
                color=colors[space],
                label=space,
            )
        ax.set(title=f"{key[1]} ({key[0]})", xticks=[], yticks=[])
    axes.flat[0].legend(fontsize=6, markerscale=2)
    return fig
