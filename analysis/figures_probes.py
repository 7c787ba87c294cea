"""Figures of probe results. Each takes the tidy probe rows and returns a Figure; no IO.

Input: :func:`analysis.collect.collect_probes` rows -- ``ckpt, stage, variant, metric, value`` plus
whichever of ``layer, head, pos, user_id, item_id, seed, segment, perturbation, space`` apply.
Metric names the figures (and analysis.claims_probes) look for -- probes should write these:

- alignment: ``cosine_sid_title`` (mean cosine of an item's SID embedding and its title embedding),
  ``cka``, ``mknn`` (mutual k-NN overlap), ``procrustes_residual``, ``centroid_distance``; a permutation
  baseline of any of them is the same name + ``_baseline``. One row per item (``item_id``) or one per
  checkpoint; rows with an empty ``layer`` (or the smallest layer) are the input embeddings.
  UMAP map: ``umap_x`` / ``umap_y`` per ``item_id`` with ``space`` (e.g. ``sid``, ``title``).
- attention: ``attn_mass`` -- attention mass (0..1) at query pause ``pos`` (0-based pause index) in
  ``layer`` onto key ``segment`` (e.g. ``history``, ``pause``); averaged over heads and users.
- logit lens: ``lens_rank`` (1-based rank of the target's first SID token when decoding the residual at
  ``layer`` and pause ``pos``) and ``lens_top1`` (0/1, the target token is top-1).
- verbalisation: ``gen_X`` (the model *says* it, greedy generation) vs ``logit_X`` (the model *ranks*
  it, scored by logits), e.g. ``gen_acc`` / ``logit_acc``; paired per ``item_id``. Gap = logit - gen.
- rationale: ``delta_recall@10`` / ``delta_ndcg@10`` (metric with the perturbed rationale minus with
  the clean one, per ``user_id``) and ``kl`` / ``kl_items`` (KL, clean || perturbed), with a
  ``perturbation`` column (``clean``/``none`` rows are the reference and are not plotted; ``oracle``
  or ``upper_bound`` rows are upper bounds; ``paraphrase`` is a meaning-preserving control).

Error bars are 95% bootstrap CIs over the rows (items or users) of each point.
"""

from __future__ import annotations

import matplotlib.figure
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from analysis import stats, theme
from analysis.claims_probes import CLEAN, MISALIGNMENT, UPPER_BOUNDS, embedding_rows
from analysis.figures import NoData, footnote

ROW_CI = "Error bars: 95% bootstrap CIs over items/users."
LINEAGE = {"plain": ("init", "cpt", "sft"), "pause": ("init", "cpt", "pause-pretrain", "pause-sft"),
           "cot": ("init", "cpt", "sft", "cot-sft")}


def _metric_rows(probes: pd.DataFrame, metrics) -> pd.DataFrame:
    rows = probes[probes["metric"].isin(metrics)] if len(probes) else probes
    if not len(rows):
        raise NoData(f"no probe rows with metric {' / '.join(sorted(metrics))}")
    return rows


def _stage_x(stage: str) -> int:
    return theme.STAGE_ORDER.index(stage) if stage in theme.STAGE_ORDER else len(theme.STAGE_ORDER)


def _grid(n: int, height: float = 2.4):
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig, axes = theme.figure(ncols=ncols, nrows=nrows, height=height, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def alignment_trajectory(probes: pd.DataFrame, n_resamples: int = stats.N_RESAMPLES,
                         seed: int = 0) -> matplotlib.figure.Figure:
    """Alignment metrics across training stages, one line per variant's lineage, with CIs."""
    names = set(MISALIGNMENT) | {f"{m}_baseline" for m in MISALIGNMENT}
    rows = embedding_rows(_metric_rows(probes, names))
    metrics = [m for m in MISALIGNMENT if (rows["metric"] == m).any()]
    if not metrics:
        raise NoData("only permutation baselines, no alignment metric")
    fig, axes = _grid(len(metrics))
    table = stats.ci_table(rows, ["metric", "stage", "variant"], "value", n_resamples, seed)
    table["x"] = table["stage"].map(_stage_x)
    for ax, metric in zip(axes, metrics):
        t = table[table["metric"] == metric].sort_values("x")
        for variant, stages in LINEAGE.items():
            line = t[t["stage"].isin(stages) & t["variant"].isin([variant, "base", "plain"])]
            if (line["variant"] == variant).any():
                ax.plot(line["x"], line["mean"], color=theme.VARIANT_COLORS[variant], lw=1.2)
        for variant, g in t.groupby("variant"):
            ax.errorbar(g["x"], g["mean"], yerr=np.vstack([g["mean"] - g["lo"], g["hi"] - g["mean"]]),
                        fmt="o", ms=4, capsize=2, color=theme.palette([variant])[variant], label=variant)
        base = table[table["metric"] == f"{metric}_baseline"].sort_values("x")
        if len(base):
            ax.plot(base["x"], base["mean"], ls="--", marker="_", ms=14, color="#999999", lw=1,
                    label="permutation baseline")
        ax.set_xticks(t["x"].unique(), [theme.STAGE_ORDER[x] if x < len(theme.STAGE_ORDER) else "?"
                                        for x in t["x"].unique()], rotation=30, ha="right")
        ax.set(title=metric, ylabel=metric)
    axes[0].legend(fontsize=6)
    return footnote(fig, ROW_CI + " Lines join each variant's training lineage.")


def attention_heatmap(probes: pd.DataFrame) -> matplotlib.figure.Figure:
    """Mean ``attn_mass`` as layer x pause-index heatmaps, one per (checkpoint, key segment)."""
    rows = _metric_rows(probes, {"attn_mass"})
    if not {"layer", "pos"} <= set(rows.columns):
        raise NoData("attn_mass rows lack layer/pos columns")
    rows = rows.assign(segment=rows["segment"].fillna("all") if "segment" in rows.columns else "all")
    panels = list(rows.groupby(["variant", "stage", "segment"], sort=False))[:6]
    fig, axes = _grid(len(panels), height=2.6)
    vmax = rows.groupby(["variant", "stage", "segment", "layer", "pos"])["value"].mean().max()
    for ax, ((variant, stage, segment), g) in zip(axes, panels):
        grid = g.pivot_table(index="layer", columns="pos", values="value", aggfunc="mean")
        im = ax.imshow(grid.to_numpy(), aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=vmax)
        ax.set_xticks(range(grid.shape[1]), [str(int(p)) for p in grid.columns])
        ax.set_yticks(range(grid.shape[0])[:: max(1, grid.shape[0] // 8)],
                      [str(int(v)) for v in grid.index][:: max(1, grid.shape[0] // 8)])
        ax.set(xlabel="pause index", ylabel="layer", title=f"{variant} ({stage}) -> {segment}")
        ax.grid(False)
    footnote(fig, "Mean attention mass from each pause position, over heads and users.")
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention mass")
    return fig


def logit_lens(probes: pd.DataFrame, n_resamples: int = 500, seed: int = 0) -> matplotlib.figure.Figure:
    """Logit-lens curves over layers, one line per pause index; rows = metric, columns = checkpoint."""
    rows = _metric_rows(probes, {"lens_rank", "lens_top1"})
    if not {"layer", "pos"} <= set(rows.columns):
        raise NoData("lens rows lack layer/pos columns")
    metrics = [m for m in ("lens_rank", "lens_top1") if (rows["metric"] == m).any()]
    ckpts = list(rows.groupby(["variant", "stage"], sort=False).groups)[:3]
    fig, axes = theme.figure(ncols=len(ckpts), nrows=len(metrics), height=2.4, squeeze=False)
    positions = sorted(rows["pos"].dropna().unique())
    colors = dict(zip(positions, theme.colors(len(positions))))
    for i, metric in enumerate(metrics):
        for j, (variant, stage) in enumerate(ckpts):
            ax = axes[i][j]
            g = rows[(rows["metric"] == metric) & (rows["variant"] == variant) & (rows["stage"] == stage)]
            t = stats.ci_table(g, ["pos", "layer"], "value", n_resamples, seed)
            for pos, line in t.groupby("pos"):
                line = line.sort_values("layer")
                ax.plot(line["layer"], line["mean"], color=colors[pos], lw=1.2, label=f"pause {int(pos)}")
                ax.fill_between(line["layer"], line["lo"], line["hi"], color=colors[pos], alpha=0.15)
            ax.set(xlabel="layer", ylabel=metric, title=f"{variant} ({stage})",
                   yscale="log" if metric == "lens_rank" else "linear")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].legend(fontsize=6)
    return footnote(fig, "Bands: 95% bootstrap CIs over users. lens_rank: lower is better.")


def verbalization_gap(probes: pd.DataFrame, n_resamples: int = stats.N_RESAMPLES,
                      seed: int = 0) -> matplotlib.figure.Figure:
    """``gen_X`` (hatched) vs ``logit_X`` (solid) per checkpoint, one panel per ``query``, with CIs."""
    rows = probes[probes["metric"].astype(str).str.match(r"^(gen|logit)_")] if len(probes) else probes
    names = set(rows.get("metric", []))
    suffixes = sorted({m.split("_", 1)[1] for m in names} & {m.split("_", 1)[1] for m in names
                                                               if m.startswith("logit_")})
    suffixes = [x for x in suffixes if f"gen_{x}" in names]
    if not suffixes:
        raise NoData("no paired gen_*/logit_* verbalisation metrics")
    suffix = "acc" if "acc" in suffixes else suffixes[0]
    rows = rows[rows["metric"].isin([f"gen_{suffix}", f"logit_{suffix}"])]
    rows = rows.assign(query=rows["query"].fillna("all") if "query" in rows.columns else "all")
    queries = sorted(rows["query"].unique(), key=lambda q: (q != "sid", q))[:3]
    fig, axes = _grid(len(queries), height=2.6)
    t = stats.ci_table(rows, ["query", "stage", "variant", "metric"], "value", n_resamples, seed)
    for ax, query in zip(axes, queries):
        tq = t[t["query"] == query]
        ckpts = sorted({(s, v) for s, v in zip(tq["stage"], tq["variant"])}, key=lambda sv: _stage_x(sv[0]))
        for i, (stage, variant) in enumerate(ckpts):
            for j, kind in enumerate(("gen", "logit")):
                r = tq[(tq["stage"] == stage) & (tq["variant"] == variant)
                       & (tq["metric"] == f"{kind}_{suffix}")]
                if not len(r):
                    continue
                r = r.iloc[0]
                ax.bar(i + (j - 0.5) * 0.38, r["mean"], 0.38, color=theme.palette([variant])[variant],
                       yerr=[[max(r["mean"] - r["lo"], 0)], [max(r["hi"] - r["mean"], 0)]], capsize=2,
                       hatch="///" if kind == "gen" else None, alpha=0.55 if kind == "gen" else 1.0,
                       edgecolor="white")
        ax.set_xticks(range(len(ckpts)), [f"{s}\n({v})" for s, v in ckpts], fontsize=7)
        ax.set(ylabel=suffix, title=f"query: {query}")
    fig.suptitle(f"gen_{suffix} (hatched) vs logit_{suffix} (solid)", fontsize=10)
    return footnote(fig, ROW_CI + " Gap = logit - generation: known but not said.")


def rationale_sensitivity(probes: pd.DataFrame, n_resamples: int = stats.N_RESAMPLES,
                          seed: int = 0) -> matplotlib.figure.Figure:
    """``delta_recall@10`` and ``kl`` per perturbation of the rationale, one marker per variant."""
    rows = probes[probes["metric"].astype(str).str.match(r"^(delta_|kl)")] if len(probes) else probes
    if not len(rows) or "perturbation" not in rows.columns:
        raise NoData("no delta_*/kl rows with a perturbation column")
    rows = rows[~rows["perturbation"].fillna("").astype(str).str.lower().isin(CLEAN)]
    metrics = sorted(rows["metric"].unique(), key=lambda m: (m.startswith("kl"), "recall" not in m, m))[:4]
    fig, axes = _grid(len(metrics), height=2.6)
    for ax, metric in zip(axes, metrics):
        g = rows[rows["metric"] == metric]
        t = stats.ci_table(g, ["perturbation", "variant"], "value", n_resamples, seed)
        perts = sorted(t["perturbation"].unique())
        variants = sorted(t["variant"].unique())
        for j, variant in enumerate(variants):
            r = t[t["variant"] == variant].set_index("perturbation").reindex(perts)
            x = np.arange(len(perts)) + (j - (len(variants) - 1) / 2) * 0.2
            ax.errorbar(x, r["mean"], yerr=np.vstack([r["mean"] - r["lo"], r["hi"] - r["mean"]]), fmt="o",
                        capsize=3, color=theme.palette([variant])[variant], label=variant)
        ax.axhline(0, color="#555555", lw=0.8)
        names = [f"{p}*" if p in UPPER_BOUNDS else p for p in perts]
        ax.set_xticks(range(len(perts)), names, rotation=35, ha="right", fontsize=7)
        ax.set(xlabel="rationale perturbation", ylabel=metric, title=metric)
    axes[0].legend(fontsize=6)
    return footnote(fig, ROW_CI + " delta = perturbed - clean; * = upper bound (names the target).")


def umap_map(probes: pd.DataFrame) -> matplotlib.figure.Figure:
    """Tokens/items in a 2-D UMAP map, coloured by ``space``, one panel per checkpoint."""
    rows = _metric_rows(probes, {"umap_x", "umap_y"})
    if "item_id" not in rows.columns:
        raise NoData("umap rows lack item_id")
    if "matrix" in rows.columns and rows["matrix"].notna().any():
        rows = rows[rows["matrix"].isna() | (rows["matrix"] == "input")]
    rows = rows.assign(space=rows["space"].fillna("?") if "space" in rows.columns else "items")
    wide = rows.pivot_table(index=["stage", "variant", "space", "item_id"], columns="metric",
                            values="value").reset_index()
    panels = sorted(wide.groupby(["stage", "variant"]).groups, key=lambda sv: _stage_x(sv[0]))[:3]
    fig, axes = _grid(len(panels), height=2.8)
    spaces = sorted(wide["space"].unique())
    colors = dict(zip(spaces, theme.colors(len(spaces))))
    for ax, (stage, variant) in zip(axes, panels):
        g = wide[(wide["stage"] == stage) & (wide["variant"] == variant)]
        for space, h in g.groupby("space"):  # rare spaces (pause, think tokens) drawn large, on top
            rare = len(h) < 10
            ax.scatter(h["umap_x"], h["umap_y"], s=60 if rare else 4, alpha=1.0 if rare else 0.5,
                       marker="*" if rare else "o", color=colors[space], label=space, zorder=3 if rare else 2,
                       edgecolors="black" if rare else "none", linewidths=0.5)
        ax.set(title=f"{variant} ({stage})", xticks=[], yticks=[])
    legend = axes[0].legend(fontsize=6)
    for handle in legend.legend_handles:
        handle.set_sizes([25])
    return footnote(fig, "UMAP of embeddings; one point per token/item, coloured by space.")
