"""Build reports/REPORT.md and REPORT.html: the claims table, metric tables and figures.

``python -m analysis.make_report RUNS_DIR [MORE_DIRS ...] --out reports/`` reads every result file under
the directories (see :mod:`analysis.collect`), writes ``OUT/REPORT.md``, ``OUT/REPORT.html``,
``OUT/claims.csv``, ``OUT/comparisons.csv``, ``OUT/results.csv`` (the one tidy table) and
``OUT/figures/*.{png,pdf}`` (replaced as a whole). A figure whose data is absent is listed as "not run".
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import claims, costs, figures, figures_probes, render, stats, theme
from analysis.collect import Collected, collect, collect_all
from analysis.conditions import PRIMARY, conditions_table, main_labels, with_labels
from pauserec import files
from pauserec.cli import run, setup_logging
from pauserec.config import parse_args
from pauserec.errors import UserError

log = logging.getLogger(__name__)
PROG = "python -m analysis.make_report"
CLAIM_COLUMNS = {"claim": "Claim", "paper": "Paper", "measured": "Measured", "ci": "95% CI",
                 "setting": "Setting", "verdict": "Verdict", "why": "Why"}


@dataclass
class Args:
    """Collect runs, evaluations and probe results; write the report with claims, tables and figures."""

    runs: list[str] = field(default_factory=list, metadata={"positional": True, "help": "runs dir(s)"})
    out: str = field(default="reports", metadata={"help": "output dir (REPORT.md, REPORT.html, figures/)"})
    n_resamples: int = field(default=2000, metadata={"help": "bootstrap resamples per CI"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    metric: str = field(default=PRIMARY, metadata={"help": "primary metric of the claims"})
    split: str = field(default="test", metadata={"help": "evaluation split to report"})


@dataclass
class Figure:
    name: str
    title: str
    make: Callable[[], object]
    key: str = ""  # the caption's key; set from ``name`` before a group tag is appended

    def __post_init__(self) -> None:
        self.key = self.key or self.name


USER_CI = "error bars are 95% bootstrap CIs over users (seeds averaged per user)"
CAPTIONS = {
    "metrics_by_variant": f"Mean over users of the main plain / pause / cot conditions; {USER_CI}.",
    "k_sweep": f"Primary metric of the pause variant against the number of pauses k; {USER_CI}; "
               "dashed lines: the main plain and cot conditions.",
    "pause_init": f"Primary metric by pause-embedding initialisation at the main k; {USER_CI}.",
    "cost": "Left: training device-hours of each variant's whole lineage, stacked by stage. Right: "
            "inference latency per user; error bars are Student-t CIs across seeds (none with one seed).",
    "training_curves": "Training loss per logged step, by stage (no error bars).",
    "alignment_trajectory": "Alignment of SID embeddings with item-text embeddings across training "
                            "stages; error bars are 95% bootstrap CIs over items; dashed: permutation "
                            "baseline.",
    "umap": "UMAP of input embeddings (as the alignment probe computed it), one point per token or "
            "item, coloured by space (SID tokens, words, special tokens drawn as stars).",
    "attention": "Mean attention mass from each pause position (x) in each layer (y) onto a key segment, "
                 "averaged over heads and users (no error bars).",
    "logit_lens": "Logit lens at pause positions: rank / top-1 of the target's first SID token per "
                  "layer; bands are 95% bootstrap CIs over users.",
    "verbalization": "What the model generates (hatched) vs what it ranks by logits (solid); error bars "
                     "are 95% bootstrap CIs over items.",
    "rationale": "Change in recall@10 (and KL) when the rationale is perturbed (perturbed - clean); "
                 "error bars are 95% bootstrap CIs over users.",
}


def eval_specs(data: Collected, per_user: pd.DataFrame, args: Args, tag: str = "") -> list[Figure]:
    """Figures of evaluations and costs, for one (dataset, backbone); ``tag`` names the group."""
    n, s, m = args.n_resamples, args.seed, args.metric
    runs = with_labels(data.runs)
    train, latency = costs.cost_frames(data, claims.all_main_labels(data, per_user, runs))
    specs = [
        Figure("metrics_by_variant", "Recall and NDCG by variant",
               lambda: figures.metrics_by_variant(per_user, ("recall@10", "ndcg@10"), None, n, s)),
        Figure("k_sweep", "Number of pauses k", lambda: figures.k_sweep(per_user, m, n, s)),
        Figure("pause_init", "Pause-embedding initialisation",
               lambda: figures.pause_init_ablation(per_user, m, n, s)),
        Figure("cost", "Training and inference cost", lambda: figures.cost(train, latency)),
        Figure("training_curves", "Training loss", lambda: figures.training_curves(data.train_logs)),
    ]
    if tag:
        for spec in specs:
            spec.name = f"{spec.name}_{re.sub(r'[^A-Za-z0-9.-]+', '_', tag)}"
            spec.title = f"{spec.title} ({tag})"
    return specs


def probe_specs(probes: pd.DataFrame, args: Args) -> list[Figure]:
    """Figures of the probes' tidy results."""
    n, s, fp = args.n_resamples, args.seed, figures_probes
    return [
        Figure("alignment_trajectory", "SID-text alignment across stages",
               lambda: fp.alignment_trajectory(probes, n, s)),
        Figure("umap", "UMAP map of embeddings", lambda: fp.umap_map(probes)),
        Figure("attention", "Attention from pause positions", lambda: fp.attention_heatmap(probes)),
        Figure("logit_lens", "Logit lens at pause positions", lambda: fp.logit_lens(probes, min(n, 500), s)),
        Figure("verbalization", "Verbalisation: generation vs logits",
               lambda: fp.verbalization_gap(probes, n, s)),
        Figure("rationale", "Sensitivity to rationale quality",
               lambda: fp.rationale_sensitivity(probes, n, s)),
    ]


def figure_specs(data: Collected, per_user: pd.DataFrame, args: Args) -> list[Figure]:
    """Every figure the report tries to draw (each may raise figures.NoData): evaluation figures once
    per (dataset, backbone) found, then the probe figures."""
    groups = claims.dataset_groups(per_user)
    if len(groups) <= 1:
        specs = eval_specs(data, per_user, args)
    else:
        specs = []
        for d, b in groups:
            part = per_user[(per_user["dataset"].fillna("") == d) & (per_user["backbone"].fillna("") == b)]
            specs += eval_specs(claims.subset(data, d, b), part, args, f"{d}, {b}")
    return specs + probe_specs(data.probes, args)


def draw(specs: list[Figure], folder: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Save each figure as PNG + PDF in ``folder``: ([(name, title, caption)], ["name: why not"])."""
    done, skipped = [], []
    for spec in specs:
        try:
            fig = spec.make()
        except figures.NoData as why:
            skipped.append(f"{spec.title} (`{spec.name}`): not run -- {why}")
            continue
        except Exception as err:  # a bug in one figure must not cost the whole report
            log.exception("figure %s failed", spec.name)
            skipped.append(f"{spec.title} (`{spec.name}`): failed -- {type(err).__name__}: {err}")
            continue
        theme.save_figure(fig, folder / spec.name)
        done.append((spec.name, spec.title, CAPTIONS.get(spec.key or spec.name, spec.title)))
    return done, skipped


def _ci_cols(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    out = table.drop(columns=[c for c in table.columns if c.endswith((" lo", " hi"))])
    for m in metrics:
        out[m] = [f"{v:.4f} [{lo:.4f}, {hi:.4f}]" for v, lo, hi in
                  zip(table[m], table[f"{m} lo"], table[f"{m} hi"])]
    return out


def comparisons(per_user: pd.DataFrame, args: Args) -> pd.DataFrame:
    """Paired comparisons of the main conditions per (dataset, backbone); Holm over the whole table."""
    metrics, frames = list(dict.fromkeys([args.metric, "ndcg@10"])), []
    for d, b in claims.dataset_groups(per_user):
        part = per_user[(per_user["dataset"].fillna("") == d) & (per_user["backbone"].fillna("") == b)]
        labels = main_labels(part)
        pairs = [(labels[x], labels[y]) for x, y in (("pause", "plain"), ("pause", "cot"), ("cot", "plain"))
                 if x in labels and y in labels]
        if pairs:
            avg = stats.mean_over_seeds(part, ["label"], metrics)
            table = stats.compare_table(avg, pairs, metrics, n_resamples=args.n_resamples, seed=args.seed)
            frames.append(table.drop(columns="p_holm", errors="ignore").assign(dataset=d, backbone=b))
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    if "p" in out.columns:
        out["p_holm"] = stats.holm(out["p"].to_numpy(dtype=float))
    return out


def _comparison_rows(table: pd.DataFrame) -> pd.DataFrame:
    if not len(table) or "diff" not in table.columns:
        return table
    return pd.DataFrame({
        "dataset": table["dataset"] + ", " + table["backbone"], "treatment": table["treatment"],
        "baseline": table["baseline"], "metric": table["metric"],
        "users": table["n"], "diff [95% CI]": [f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" for d, lo, hi in
                                               zip(table["diff"], table["diff_lo"], table["diff_hi"])],
        "relative [95% CI]": [f"{r:+.2f}% [{lo:+.2f}, {hi:+.2f}]" for r, lo, hi in
                              zip(table["rel"], table["rel_lo"], table["rel_hi"])],
        "Wilcoxon p": table["p"], "Holm p": table["p_holm"]})


def setting_lines(data: Collected, args: Args, per_user: pd.DataFrame) -> list[str]:
    def uniq(df: pd.DataFrame, col: str) -> str:
        vals = sorted({str(v) for v in df.get(col, pd.Series(dtype=str)).dropna() if str(v)})
        return ", ".join(vals) or "—"

    src = per_user if len(per_user) else data.index
    return [f"runs: {', '.join(f'`{r}`' for r in args.runs)}",
            f"datasets: {uniq(src, 'dataset')}; backbones: {uniq(src, 'backbone')}; "
            f"seeds: {uniq(src, 'seed')}",
            f"checkpoints: {len(data.index)}; evaluations with per-user rows: "
            f"{per_user['eval_dir'].nunique() if len(per_user) else 0} (split `{args.split}`, "
            f"{per_user['user'].nunique() if len(per_user) else 0} distinct users)",
            f"probes: {uniq(data.probes, 'probe')}",
            f"statistics: paired bootstrap over users ({args.n_resamples} resamples, seed {args.seed}), "
            f"Wilcoxon signed-rank, Holm correction; primary metric `{args.metric}`"]


def build(data: Collected, args: Args, command: str, folder: Path) -> tuple[list, dict[str, pd.DataFrame]]:
    """Draw figures into ``folder``; return the report blocks and the tables to save as CSV."""
    per_user = with_labels(data.eval)
    per_user = per_user[per_user["split"] == args.split] if len(per_user) else per_user
    claim_table = claims.evaluate(data, args.n_resamples, args.seed, args.metric, args.split)
    comp = comparisons(per_user, args) if len(per_user) else pd.DataFrame()
    metric_cols = ["recall@5", "recall@10", "recall@20", "ndcg@10"]
    cond = conditions_table(per_user, metric_cols, args.n_resamples, args.seed)
    done, skipped = draw(figure_specs(data, per_user, args), folder)
    blocks: list = [
        ("h", 1, "PauseRec reproduction report"),
        ("p", f"Generated {time.strftime('%Y-%m-%d %H:%M')} by:"), ("code", command),
        ("h", 2, "Setting"), ("list", setting_lines(data, args, per_user)),
        ("h", 2, "Claims"),
        ("p", "Verdicts: **reproduced** when the 95% CI lies on the claimed side of 0, **not reproduced** "
              "when it lies on the other side, **inconclusive at this scale** when it crosses 0 or data "
              "is missing. Relative effects are percent of the baseline's mean; cost claims are per-seed "
              "measurements (no CI with one seed)."),
        ("table", claim_table[list(CLAIM_COLUMNS)].rename(columns=CLAIM_COLUMNS)),
        ("h", 2, "Metrics"),
        ("p", "Per condition: mean over users (seeds averaged per user) [95% bootstrap CI]."),
        ("table", _ci_cols(cond, metric_cols) if len(cond) else cond),
        ("h", 3, "Paired comparisons"), ("table", _comparison_rows(comp)),
        ("h", 2, "Figures"),
    ]
    for name, title, caption in done:
        blocks += [("h", 3, title), ("img", f"figures/{name}.png", caption)]
    if skipped:
        blocks += [("h", 3, "Not run"), ("list", skipped)]
    own = [(probe, p) for probe, paths in sorted(data.probe_figures.items()) for p in paths]
    if own:
        blocks.append(("h", 2, "Figures made by the probes"))
        for i, (probe, path) in enumerate(own):
            rel = Path("probes", probe, f"{i:02d}_{path.name}")  # two runs of a probe may share names
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / rel)
            caption = f"{probe}: {path.stem} (`{path.parent.parent}`)"
            blocks.append(("img", f"figures/{rel.as_posix()}", caption))
    return blocks, {"claims": claim_table, "comparisons": comp, "conditions": cond}


def check_roots(paths: list[str]) -> list[Path]:
    if not paths:
        raise UserError(f"{PROG}: give at least one RUNS_DIR")
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"runs directory {p} does not exist")
    return [Path(p) for p in paths]


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(Args, argv, PROG)
    roots = check_roots(args.runs)
    data = collect(roots)
    if data.empty():
        raise UserError(f"no results under {', '.join(args.runs)}: no pauserec.json, metrics.json, "
                        "per_user.csv or probe results.csv found")
    out = Path(args.out)
    command = f"{PROG} {shlex.join(sys.argv[1:] if argv is None else argv)}"
    with files.atomic_dir(out / "figures") as tmp:
        blocks, tables = build(data, args, command, tmp)
    files.write_text(out / "REPORT.md", render.to_markdown(blocks))
    files.write_text(out / "REPORT.html", render.to_html(blocks, "PauseRec reproduction report"))
    for name, table in tables.items():
        files.write_csv(out / f"{name}.csv", table)
    files.write_csv(out / "results.csv", collect_all(roots))
    log.info("wrote %s and %s", out / "REPORT.md", out / "REPORT.html")
    return out / "REPORT.md"


if __name__ == "__main__":
    setup_logging()
    sys.exit(run(main))
