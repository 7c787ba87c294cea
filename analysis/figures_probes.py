"""Figures of probe results. Each takes the tidy probe rows and returns a Figure; no IO.

Input: :func:`analysis.collect.collect_probes` rows -- ``ckpt, stage, variant, metric, value`` plus
whichever of ``layer, head, pos, user_id, item_id, seed, segment, perturbation, space`` apply.
Metric names the figures (and analysis.claims_probes) look for -- probes should write these:

- alignment: ``cosine_sid_title`` (mean cosine of an item's SID embedding and its title embedding),
  ``cka``, ``mknn`` (mutual k-NN overlap), ``procrustes_residual``, ``centroid_distance``; a
  permutation baseline of any of them is the same name + ``_baseline``. One row per item
  (``item_id``) or one per checkpoint; rows with an empty ``layer`` (or the smallest layer) are the
  input embeddings. UMAP map: ``umap_x`` / ``umap_y`` per ``item_id`` with ``space`` (e.g. ``sid``,
  ``title``).
- attention: ``attn_mass`` -- attention mass (0..1) at query pause ``pos`` (0-based pause index) in
  ``layer`` onto key ``segment`` (e.g. ``history``, ``pause``); averaged over heads and users.
- logit lens: ``lens_rank`` (1-based rank of the target's first SID token when decoding the residual
  at ``layer`` and pause ``pos``) and ``lens_top1`` (0/1, the target token is top-1).
- verbalisation: ``gen_X`` (the model *says* it, greedy generation) vs ``logit_X`` (the model
  *ranks* it, scored by logits), e.g. ``gen_acc`` / ``logit_acc``; paired per ``item_id``. Gap =
  logit - gen.
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

from analysis import theme
from analysis.claims_probes import CLEAN, UPPER_BOUNDS
from analysis.figures import NoData, footnote
from analysis.rows import grid, metric_rows, stage_x
from pauserec.evaluation import stats

ROW_CI = "Error bars: 95% bootstrap CIs over items/users."


def logit_lens(
    probes: pd.DataFrame, n_resamples: int = 500, seed: int = 0
) -> matplotlib.figure.Figure:
    """Logit-lens curves over layers, one line per pause index; rows = metric, columns =
    checkpoint."""
    rows = metric_rows(probes, {"lens_rank", "lens_top1"})
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
            g = rows[
                (rows["metric"] == metric) & (rows["variant"] == variant) & (rows["stage"] == stage)
            ]
            t = stats.ci_table(g, ["pos", "layer"], "value", n_resamples, seed)
            for pos, line in t.groupby("pos"):
                line = line.sort_values("layer")
                ax.plot(
                    line["layer"],
                    line["mean"],
                    color=colors[pos],
                    lw=1.2,
                    label=f"pause {int(pos)}",
                )
                ax.fill_between(
                    line["layer"], line["lo"], line["hi"], color=colors[pos], alpha=0.15
                )
            ax.set(
                xlabel="layer",
                ylabel=metric,
                title=f"{variant} ({stage})",
                yscale="log" if metric == "lens_rank" else "linear",
            )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].legend(fontsize=6)
    return footnote(fig, "Bands: 95% bootstrap CIs over users. lens_rank: lower is better.")


def verbalization_gap(
    probes: pd.DataFrame, n_resamples: int = stats.N_RESAMPLES, seed: int = 0
) -> matplotlib.figure.Figure:
    """``gen_X`` (hatched) vs ``logit_X`` (solid) per checkpoint, one panel per ``query``, with
    CIs."""
    rows = (
        probes[probes["metric"].astype(str).str.match(r"^(gen|logit)_")] if len(probes) else probes
    )
    names = set(rows.get("metric", []))
    suffixes = sorted(
        {m.split("_", 1)[1] for m in names}
        & {m.split("_", 1)[1] for m in names if m.startswith("logit_")}
    )
    suffixes = [x for x in suffixes if f"gen_{x}" in names]
    if not suffixes:
        raise NoData("no paired gen_*/logit_* verbalisation metrics")
    suffix = next((x for x in ("acc_cc", "acc") if x in suffixes), suffixes[0])
    rows = rows[rows["metric"].isin([f"gen_{suffix}", f"logit_{suffix}"])]
    rows = rows.assign(query=rows["query"].fillna("all") if "query" in rows.columns else "all")
    queries = sorted(rows["query"].unique(), key=lambda q: (q != "sid", q))[:3]
    fig, axes = grid(len(queries), height=2.6)
    t = stats.ci_table(rows, ["query", "stage", "variant", "metric"], "value", n_resamples, seed)
    for ax, query in zip(axes, queries):
        tq = t[t["query"] == query]
        ckpts = sorted(
            {(s, v) for s, v in zip(tq["stage"], tq["variant"])}, key=lambda sv: stage_x(sv[0])
        )
        for i, (stage, variant) in enumerate(ckpts):
            for j, kind in enumerate(("gen", "logit")):
                r = tq[
                    (tq["stage"] == stage)
                    & (tq["variant"] == variant)
                    & (tq["metric"] == f"{kind}_{suffix}")
                ]
                if not len(r):
                    continue
                r = r.iloc[0]
                ax.bar(
                    i + (j - 0.5) * 0.38,
                    r["mean"],
                    0.38,
                    color=theme.palette([variant])[variant],
                    yerr=[[max(r["mean"] - r["lo"], 0)], [max(r["hi"] - r["mean"], 0)]],
                    capsize=2,
                    hatch="///" if kind == "gen" else None,
                    alpha=0.55 if kind == "gen" else 1.0,
                    edgecolor="white",
                )
        ax.set_xticks(range(len(ckpts)), [f"{s}\n({v})" for s, v in ckpts], fontsize=7)
        ax.set(ylabel=suffix, title=f"query: {query}")
    fig.suptitle(f"gen_{suffix} (hatched) vs logit_{suffix} (solid)", fontsize=10)
    return footnote(fig, ROW_CI + " Gap = logit - generation: known but not said.")


def rationale_sensitivity(
    probes: pd.DataFrame, n_resamples: int = stats.N_RESAMPLES, seed: int = 0
) -> matplotlib.figure.Figure:
    """``delta_recall@10`` and ``kl`` per perturbation of the rationale, one marker per variant."""
    rows = (
        probes[probes["metric"].astype(str).str.match(r"^(delta_|kl)")] if len(probes) else probes
    )
    if not len(rows) or "perturbation" not in rows.columns:
        raise NoData("no delta_*/kl rows with a perturbation column")
    rows = rows[~rows["perturbation"].fillna("").astype(str).str.lower().isin(CLEAN)]
    metrics = sorted(
        rows["metric"].unique(), key=lambda m: (m.startswith("kl"), "recall" not in m, m)
    )[:4]
    fig, axes = grid(len(metrics), height=2.6)
    for ax, metric in zip(axes, metrics):
        g = rows[rows["metric"] == metric]
        t = stats.ci_table(g, ["perturbation", "variant"], "value", n_resamples, seed)
        perts = sorted(t["perturbation"].unique())
        variants = sorted(t["variant"].unique())
        for j, variant in enumerate(variants):
            r = t[t["variant"] == variant].set_index("perturbation").reindex(perts)
            x = np.arange(len(perts)) + (j - (len(variants) - 1) / 2) * 0.2
            ax.errorbar(
                x,
                r["mean"],
                yerr=np.vstack([r["mean"] - r["lo"], r["hi"] - r["mean"]]),
                fmt="o",
                capsize=3,
                color=theme.palette([variant])[variant],
                label=variant,
            )
        ax.axhline(0, color="#555555", lw=0.8)
        names = [f"{p}*" if p in UPPER_BOUNDS else p for p in perts]
        ax.set_xticks(range(len(perts)), names, rotation=35, ha="right", fontsize=7)
        ax.set(xlabel="rationale perturbation", ylabel=metric, title=metric)
    axes[0].legend(fontsize=6)
    return footnote(fig, ROW_CI + " delta = perturbed - clean; * = upper bound (names the target).")


def rationale_quality(probes: pd.DataFrame) -> matplotlib.figure.Figure:
    """Mean ``delta_recall@K`` and ``kl`` per perturbation against the rationales' mean leakage and
    history agreement (one point per checkpoint and perturbation; no error bars)."""
    rows = (
        probes[probes["metric"].astype(str).str.match(r"^(delta_recall@|kl$|quality_)")]
        if len(probes)
        else probes
    )
    if (
        not len(rows)
        or "perturbation" not in rows.columns
        or not (rows["metric"] == "quality_leakage").any()
    ):
        raise NoData("no rationale quality rows")
    means = rows.pivot_table(
        index=["ckpt", "perturbation"], columns="metric", values="value"
    ).reset_index()
    ys = [m for m in means.columns if str(m).startswith("delta_recall@")][:1] + (
        ["kl"] if "kl" in means.columns else []
    )
    if not ys:
        raise NoData("no delta_recall@K or kl rows")
    fig, axes = theme.figure(ncols=2, nrows=len(ys), squeeze=False, sharex="col", height=2.6)
    colors = dict(zip(sorted(means["ckpt"].unique()), theme.colors(means["ckpt"].nunique())))
    for row, y in zip(axes, ys):
        for ax, q in zip(row, ("quality_leakage", "quality_agreement")):
            for _, r in means.dropna(subset=[y]).iterrows():
                ax.scatter(r[q], r[y], s=12, color=colors[r["ckpt"]])
                ax.annotate(r["perturbation"], (r[q], r[y]), fontsize=6)
            ax.set(xlabel=q, ylabel=y)
    return footnote(
        fig, "Means per perturbation (no error bars); oracle names the target (upper bound)."
    )


def rationale_train(rows: pd.DataFrame) -> matplotlib.figure.Figure:
    """Final recall@K of cot-sft trained on each rationale condition against the training
    rationales' leakage and history agreement (rows of the ``rationale-train`` driver)."""
    if not len(rows) or not (rows["metric"] == "train_quality_leakage").any():
        raise NoData("no training-time rationale rows")
    t = rows.pivot_table(
        index="perturbation", columns="metric", values="value", aggfunc="mean"
    ).reset_index()
    recall = next((c for c in t.columns if str(c).startswith("recall@")), None)
    if recall is None:
        raise NoData("no recall@K rows")
    fig, axes = theme.figure(ncols=2, squeeze=False, sharey=True)
    for ax, q in zip(axes[0], ("train_quality_leakage", "train_quality_agreement")):
        ax.scatter(t[q], t[recall], s=12, color=theme.VARIANT_COLORS["cot"])
        for _, r in t.iterrows():
            ax.annotate(r["perturbation"], (r[q], r[recall]), fontsize=6)
        ax.set(xlabel=q, ylabel=f"final {recall}")
    return footnote(fig, "Mean over evaluated users per training condition (no error bars).")
