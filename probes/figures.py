"""Figures of the alignment and attention probes: tidy rows in, Figures out, no IO (style from
:mod:`analysis.theme`). Several checkpoints become a trajectory: the x axis follows the order in
which the checkpoints were given (labelled by stage)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import theme

ALIGN = [("cosine_sid_title", None), ("cka", "mean"), ("cka", "concat"), ("mknn", "mean"),
         ("procrustes_residual", "mean"), ("word_precision", None), ("centroid_distance", None),
         ("separability_acc", None)]


def ckpt_order(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(ckpt, stage) pairs in order of appearance."""
    return list(dict.fromkeys(zip(df["ckpt"], df["stage"])))


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series(np.nan, index=df.index)


def _pick(df: pd.DataFrame, metric: str, space: str | None = None, **eq) -> pd.DataFrame:
    rows = df[df["metric"] == metric]
    if space is not None:
        rows = rows[_col(rows, "space") == space]
    for key, value in eq.items():
        col = _col(rows, key)
        rows = rows[col.isna()] if value is None else rows[col == value]
    return rows


def alignment_figures(df: pd.DataFrame) -> dict:
    """``alignment_by_stage``, ``contextual``, ``geometry`` and (with UMAP rows) ``umap``."""
    out = {"alignment_by_stage": _by_stage(df), "geometry": _geometry(df)}
    if (df["metric"] == "context_cosine").any():
        out["contextual"] = _contextual(df)
    if (df["metric"] == "umap_x").any():
        out["umap"] = _umap(df)
    return out


def _by_stage(df: pd.DataFrame):
    order = ckpt_order(df)
    panels = [(m, s) for m, s in ALIGN if len(_pick(df, m, s))]
    ncols = min(4, max(1, len(panels)))
    fig, axes = theme.figure(ncols=ncols, nrows=-(-len(panels) // ncols), height=2.3, squeeze=False,
                             layout="constrained")
    matrices = [m for m in ("input", "output") if (_col(df, "matrix") == m).any()]
    colors = dict(zip(matrices, theme.colors(len(matrices))))
    x = np.arange(len(order))
    for ax, (metric, space) in zip(axes.flat, panels):
        for matrix in matrices:
            for suffix, style in (("", "-o"), ("_baseline", "--"), ("_random", ":")):
                rows = _pick(df, metric + suffix, space, level=None)
                rows = rows[_col(rows, "matrix") == matrix]
                if not len(rows):
                    continue
                means = rows.groupby(["ckpt", "stage"])["value"].mean()
                y = [means.get(key, np.nan) for key in order]
                ax.plot(x, y, style, color=colors[matrix] if not suffix else "#999999", ms=3, lw=1,
                        label=matrix + {"": "", "_baseline": " (permuted)", "_random": " (random rows)"}[suffix])
        ax.set_xticks(x, [stage for _, stage in order], rotation=30, ha="right", fontsize=7)
        ax.set_title(metric + (f" ({space})" if space and metric == "cka" else ""), fontsize=8)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("SID-token vs title-word alignment per stage (dashed: items re-paired; dotted: random "
                 "SID rows, same codes)", fontsize=9)
    return fig


def _contextual(df: pd.DataFrame):
    order = ckpt_order(df)
    fig, axes = theme.figure(ncols=2, height=2.6, squeeze=False, layout="constrained")
    colors = dict(zip(order, theme.colors(len(order))))
    for ax, space in zip(axes.flat, ("mention", "last")):
        for key in order:
            for suffix, ls in (("", "-"), ("_baseline", "--")):
                rows = _pick(df, "context_cosine" + suffix, space)
                rows = rows[(rows["ckpt"] == key[0]) & (rows["stage"] == key[1])].sort_values("layer")
                ax.plot(rows["layer"], rows["value"], ls, color=colors[key], lw=1.2,
                        label=None if suffix else f"{key[1]} ({key[0]})")
        ax.set(xlabel="layer (blocks applied)", ylabel="cosine", title=f"SID vs title mention: {space}")
    axes.flat[0].legend(fontsize=6)
    return fig


def _geometry(df: pd.DataFrame):
    order = ckpt_order(df)
    fig, axes = theme.figure(ncols=2, height=2.6, squeeze=False, layout="constrained")
    ax = axes[0][0]
    groups = [g for g in ("sid", "word", "<pause>") if (_col(df, "group") == g).any()]
    colors = dict(zip(groups, theme.colors(len(groups))))
    for j, group in enumerate(groups):
        q = {m: _pick(df, m, group=group).query("matrix == 'input'").groupby(["ckpt", "stage"])["value"].mean()
             for m in ("norm_q05", "norm_q25", "norm_q50", "norm_q75", "norm_q95")}
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
    for j, (metric, name) in enumerate((("dist_to_sid_centroid", "to SID centroid"),
                                        ("dist_to_word_centroid", "to word centroid"))):
        rows = _pick(df, metric, group="<pause>").query("matrix == 'input'")
        means = rows.groupby(["ckpt", "stage"])["value"].mean()
        ax.bar(np.arange(len(order)) + (j - 0.5) * 0.38, [means.get(k, np.nan) for k in order], 0.38,
               label=name, color=theme.colors(2)[j])
    ax.set_xticks(range(len(order)), [s for _, s in order], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="distance", title="where <pause> sits (input)")
    ax.legend(fontsize=6)
    return fig


def _umap(df: pd.DataFrame):
    order = ckpt_order(df)[:3]
    rows = df[df["metric"].isin(["umap_x", "umap_y"]) & (_col(df, "matrix") == "input")]
    fig, axes = theme.figure(ncols=len(order), height=2.8, squeeze=False, layout="constrained")
    spaces = sorted(rows["space"].dropna().unique())
    colors = dict(zip(spaces, theme.colors(len(spaces))))
    for ax, key in zip(axes.flat, order):
        g = rows[(rows["ckpt"] == key[0]) & (rows["stage"] == key[1])]
        wide = g.pivot_table(index=["space", "token"], columns="metric", values="value").reset_index()
        for space, h in wide.groupby("space"):
            big = space not in ("sid", "word")
            ax.scatter(h["umap_x"], h["umap_y"], s=30 if big else 3, marker="*" if big else "o",
                       alpha=1.0 if big else 0.5, color=colors[space], label=space)
        ax.set(title=f"{key[1]} ({key[0]})", xticks=[], yticks=[])
    axes.flat[0].legend(fontsize=6, markerscale=2)
    return fig


def attention_figures(df: pd.DataFrame) -> dict:
    """``attention_segments``, ``early_vs_late``, ``relevance``, ``logit_lens`` and, with
    intervention rows, ``interventions``."""
    out = {"attention_segments": _segments(df), "logit_lens": _lens(df), "relevance": _relevance(df)}
    if (df["metric"] == "attn_mass_early").any():
        out["early_vs_late"] = _early_late(df)
    if df["metric"].astype(str).str.startswith("intervention_delta").any():
        out["interventions"] = _interventions(df)
    return out


def _panel_keys(df: pd.DataFrame, n: int = 3) -> list[tuple[str, str]]:
    return ckpt_order(df)[:n]


def _of(df: pd.DataFrame, key: tuple[str, str]) -> pd.DataFrame:
    return df[(df["ckpt"] == key[0]) & (df["stage"] == key[1])]


def _segments(df: pd.DataFrame):
    keys = _panel_keys(df)
    fig, axes = theme.figure(ncols=2, nrows=len(keys), height=2.6, squeeze=False, layout="constrained")
    for r, key in enumerate(keys):
        for c, (metric, who) in enumerate((("attn_mass", "pause positions"),
                                           ("attn_mass_sid", "SID-generating positions"))):
            ax, rows = axes[r][c], _pick(_of(df, key), metric)
            if not len(rows):
                ax.set_visible(False)
                continue
            grid = rows.pivot_table(index="layer", columns="segment", values="value", aggfunc="mean")
            im = ax.imshow(grid.to_numpy(), aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right", fontsize=7)
            step = max(1, len(grid) // 8)
            ax.set_yticks(range(0, len(grid), step), [str(int(v)) for v in grid.index[::step]])
            ax.set(ylabel="layer", title=f"{key[1]} ({key[0]}): from {who}")
            ax.grid(False)
            fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _early_late(df: pd.DataFrame):
    keys = _panel_keys(df)
    fig, axes = theme.figure(ncols=len(keys), height=2.6, squeeze=False, layout="constrained")
    for ax, key in zip(axes.flat, keys):
        for j, metric in enumerate(("attn_mass_early", "attn_mass_late")):
            means = _pick(_of(df, key), metric).groupby("segment")["value"].mean()
            x = np.arange(len(means))
            ax.bar(x + (j - 0.5) * 0.38, means.to_numpy(), 0.38, label=metric.rsplit("_", 1)[1] + " pauses",
                   color=theme.colors(2)[j])
            ax.set_xticks(x, means.index, rotation=45, ha="right", fontsize=7)
        ax.set(ylabel="attention mass (mean over layers, heads)", title=f"{key[1]} ({key[0]})")
        ax.legend(fontsize=6)
    return fig


def _relevance(df: pd.DataFrame):
    rows = df[df["metric"].isin(["relevance_corr_partial", "relevance_corr_partial_baseline"])]
    relations = [r for r in ("prefix", "category") if (_col(rows, "relation") == r).any()] or ["prefix"]
    fig, axes = theme.figure(ncols=len(relations), height=2.6, squeeze=False, layout="constrained")
    keys = ckpt_order(df)[:3]
    colors = dict(zip([(k, q) for k in keys for q in ("pause", "sid")], theme.colors(2 * len(keys))))
    for ax, relation in zip(axes.flat, relations):
        for key in keys:
            for query in ("pause", "sid"):
                for metric, ls in (("relevance_corr_partial", "-"), ("relevance_corr_partial_baseline", "--")):
                    g = _pick(_of(rows, key), metric, relation=relation)
                    g = g[(_col(g, "query") == query) & g["layer"].notna()].sort_values("layer")
                    if len(g):
                        ax.plot(g["layer"], g["value"], ls, color=colors[(key, query)], lw=1.1,
                                label=None if ls == "--" else f"{key[1]}: from {query}")
        ax.axhline(0, color="#555555", lw=0.6)
        ax.set(xlabel="layer", ylabel="partial correlation", title=f"attention vs shared {relation}")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("Within-history, position-adjusted; dashed: targets re-paired across users", fontsize=8)
    return fig


def _lens(df: pd.DataFrame):
    keys = _panel_keys(df)
    fig, axes = theme.figure(ncols=len(keys), height=2.6, squeeze=False, layout="constrained")
    for ax, key in zip(axes.flat, keys):
        rows = _of(df, key)
        top1 = _pick(rows, "lens_top1").groupby(["pos", "layer"])["value"].mean()
        positions = sorted({p for p, _ in top1.index})
        colors = theme.colors(len(positions) + 1)
        for i, pos in enumerate(positions):
            line = top1.loc[pos]
            ax.plot(line.index, line.to_numpy(), color=colors[i], lw=1.2, label=f"pause {int(pos)}")
        sid = _pick(rows, "lens_top1_sid")
        sid = sid[sid["pos"] == 0].sort_values("layer")
        ax.plot(sid["layer"], sid["value"], "--", color=colors[-1], lw=1.2, label="SID step 0")
        chance = _pick(rows, "lens_chance_top1")["value"]
        if len(chance):
            ax.axhline(float(chance.iloc[0]), color="#999999", lw=0.8, ls=":", label="chance")
        ax.set(xlabel="layer", ylabel="target's first code top-1 rate", title=f"logit lens: {key[1]}")
    axes.flat[0].legend(fontsize=6)
    return fig


def _interventions(df: pd.DataFrame):
    metrics = [m for m in ("intervention_delta_recall@10", "intervention_delta_ndcg@10",
                           "intervention_delta_target_logprob") if (df["metric"] == f"{m}_mean").any()]
    fig, axes = theme.figure(ncols=len(metrics), height=2.6, squeeze=False, layout="constrained")
    keys = ckpt_order(df)
    colors = dict(zip(keys, theme.colors(len(keys))))
    for ax, metric in zip(axes.flat, metrics):
        for j, key in enumerate(keys):
            rows = _of(df, key)
            stats = {s: _pick(rows, f"{metric}_{s}").set_index("intervention")["value"]
                     for s in ("mean", "lo", "hi")}
            conds = list(stats["mean"].index)
            x = np.arange(len(conds)) + (j - (len(keys) - 1) / 2) * 0.2
            m = stats["mean"].to_numpy()
            err = np.vstack([m - stats["lo"][conds].to_numpy(), stats["hi"][conds].to_numpy() - m])
            ax.errorbar(x, m, yerr=err,
                        fmt="o", capsize=3, color=colors[key], label=f"{key[1]} ({key[0]})")
            ax.set_xticks(np.arange(len(conds)), conds, rotation=20, fontsize=7)
        ax.axhline(0, color="#555555", lw=0.8)
        ax.set(ylabel=metric.replace("intervention_delta_", "Δ "), title="intervention - unmodified")
    axes.flat[0].legend(fontsize=6)
    fig.text(0.01, -0.02, theme.CI_CAPTION + " Paired over users.", fontsize=7)
    return fig
