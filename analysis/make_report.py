"""Build REPORT.md and REPORT.html: the claims table, metric tables, deviations from the paper,
figures.

``python -m analysis.make_report RUNS_DIR [MORE_DIRS ...] --out reports/`` reads every result file
under the directories (see :mod:`analysis.collect`) and writes, as one atomic directory,
``OUT/REPORT.md``, ``OUT/REPORT.html``, ``OUT/claims.csv``, ``OUT/comparisons.csv``,
``OUT/conditions.csv``, ``OUT/results.csv.gz`` (the one tidy table, gzipped: ``pandas.read_csv``
reads it) and ``OUT/figures/*.{png,pdf}``. A figure whose data is absent is listed as "not run".
Paths in the report are relative to the runs directories.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import (
    claims,
    costs,
    figures,
    figures_alignment,
    figures_attention,
    figures_probes,
    render,
    theme,
)
from analysis import report as text
from analysis.collect import Collected, collect, collect_all
from analysis.conditions import PRIMARY, conditions_table, main_labels
from pauserec import files
from pauserec.cli import run as cli_run
from pauserec.cli import setup_logging
from pauserec.config import arg, parse_args
from pauserec.errors import UserError

log = logging.getLogger(__name__)
PROG = "python -m analysis.make_report"
KIND = PROG  # what marks a report folder (``--overwrite`` replaces only a report)
METRICS = ["recall@5", "recall@10", "recall@20", "ndcg@10"]


@dataclass
class Args:
    """Collect runs, evaluations and probe results; write the report with claims, tables and
    figures."""

    runs: list[str] = arg(help="runs dir(s)", factory=list, positional=True)
    out: str = arg("", "output dir: REPORT.md/.html, figures/ (default: the first RUNS_DIR/report)")
    overwrite: bool = arg(False, "replace an existing --out")
    n_resamples: int = arg(2000, "bootstrap resamples per CI over users/items", min=100)
    seed: int = arg(0, "bootstrap seed", min=0)
    metric: str = arg(
        PRIMARY,
        "primary metric of the claims",
        choices=tuple(f"{m}@{k}" for m in ("recall", "ndcg") for k in (1, 5, 10, 20)),
    )
    split: str = arg("test", "evaluation split to report", choices=("train", "valid", "test"))
    main_rationale: str = arg("template", "the CoT source the claims compare")


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    make: Callable[[], object]


USER_CI = "error bars are 95% bootstrap CIs over users (seeds averaged per user)"


def eval_specs(data: Collected, per_user: pd.DataFrame, args: Args) -> list[Figure]:
    """Figures of evaluations and costs."""
    n, s, m = args.n_resamples, args.seed, args.metric
    labels = main_labels(per_user, args.main_rationale)
    main = {r: labels[r] for r in ("plain", "pause", "cot") if r in labels}
    train, lat = costs.training_rows(data.timings, main), costs.latency_rows(data.runs, main)
    return [
        Figure(
            "metrics_by_variant",
            "Recall and NDCG by condition",
            f"Mean over users of the main conditions and the compute-matched controls; {USER_CI}; "
            "dotted lines: the classical baselines.",
            lambda: figures.metrics_by_variant(per_user, ("recall@10", "ndcg@10"), None, n, s),
        ),
        Figure(
            "k_sweep",
            "Number of pauses",
            f"Primary metric against the number of pauses; {USER_CI}.",
            lambda: figures.k_sweep(per_user, m, n, s),
        ),
        Figure(
            "pause_init",
            "Pause-embedding initialisation",
            f"Primary metric by pause init; {USER_CI}.",
            lambda: figures.pause_init_ablation(per_user, m, n, s),
        ),
        Figure(
            "cost",
            "Training and inference cost",
            "Left: device-hours of each condition's whole lineage, stacked by stage (mean over "
            "seeds). Right: latency per sample (greedy, batch 16); error bars are 95% CIs over "
            "timed batches.",
            lambda: figures.cost(train, lat),
        ),
        Figure(
            "training_curves",
            "Training loss",
            "Training loss per logged step, by stage (no error bars).",
            lambda: figures.training_curves(data.train_logs),
        ),
        Figure(
            "learning_curves",
            "Validation recall while training",
            "Recall@10 on seeded validation users against the targets trained on, per stage; "
            "dashed: the most-popular list on the same users.",
            lambda: figures.learning_curves(data.valid_logs),
        ),
    ]


def probe_specs(probes: pd.DataFrame, args: Args) -> list[Figure]:
    """Figures of the probes' tidy results (every probe figure is drawn here, from the files)."""
    n, s = args.n_resamples, args.seed
    fa, ft, fp = figures_alignment, figures_attention, figures_probes
    items = "error bars are 95% bootstrap CIs over items"
    by = {
        name: probes[probes["probe"] == name] if "probe" in probes.columns else probes
        for name in ("alignment", "attention", "verbalization", "rationale", "rationale_train")
    }
    return [
        Figure(
            "alignment",
            "SID-word alignment across stages",
            "Agreement of SID-token and title-word embeddings per stage; dashed: items re-paired "
            "at random; dotted: random SID rows with the same codes.",
            lambda: fa.by_stage(by["alignment"]),
        ),
        Figure(
            "alignment_context",
            "SID vs title in the residual stream",
            "Cosine of the residual stream for an item mentioned by SID vs by title, per layer; "
            "dashed: another item's title.",
            lambda: fa.contextual(by["alignment"]),
        ),
        Figure(
            "geometry",
            "Embedding geometry",
            "Embedding norms per token group and where <pause> sits "
            "between the SID and word clouds.",
            lambda: fa.geometry(by["alignment"]),
        ),
        Figure(
            "umap",
            "UMAP map of SID and word tokens",
            "UMAP (cosine) of input embeddings: SID tokens, "
            "sampled word tokens, and <pause>/<think> as stars.",
            lambda: fa.umap(by["alignment"]),
        ),
        Figure(
            "attention",
            "Attention from pause and SID positions",
            "Mean attention mass per layer onto "
            "each prompt segment, averaged over heads and users.",
            lambda: ft.segments(by["attention"]),
        ),
        Figure(
            "early_vs_late",
            "Early vs late pauses",
            "Segment masses of the first and the last half of the pauses.",
            lambda: ft.early_vs_late(by["attention"]),
        ),
        Figure(
            "relevance",
            "Attention vs relevance to the target",
            "Position-adjusted correlation of "
            "attention with what a history item shares with the target; dashed: targets re-paired.",
            lambda: ft.relevance(by["attention"]),
        ),
        Figure(
            "logit_lens",
            "Logit lens at pause positions",
            "Top-1 rate and rank of the target's first "
            "SID code read from each pause's residual stream; bands are 95% bootstrap CIs over "
            "users.",
            lambda: fp.logit_lens(by["attention"], min(n, 500), s),
        ),
        Figure(
            "interventions",
            "Pause interventions",
            "Paired change when the pauses are removed, masked "
            "or replaced; error bars are 95% bootstrap CIs over users.",
            lambda: ft.interventions(by["attention"]),
        ),
        Figure(
            "verbalization",
            "Verbalisation: generation vs logits",
            f"What the model says (hatched) vs "
            f"what it ranks (solid), chance-corrected where available; {items}.",
            lambda: fp.verbalization_gap(by["verbalization"], n, s),
        ),
        Figure(
            "rationale",
            "Sensitivity to rationale quality",
            "Change when the rationale is perturbed "
            "(perturbed - clean); error bars are 95% bootstrap CIs over users.",
            lambda: fp.rationale_sensitivity(by["rationale"], n, s),
        ),
        Figure(
            "rationale_quality",
            "Rationale quality vs effect",
            "Mean change per perturbation against the rationales' leakage and history agreement.",
            lambda: fp.rationale_quality(by["rationale"]),
        ),
        Figure(
            "rationale_train",
            "Training-time rationale quality",
            "Final recall of cot-sft trained on each "
            "rationale condition against the training rationales' quality.",
            lambda: fp.rationale_train(by["rationale_train"]),
        ),
    ]


def draw(specs: list[Figure], folder: Path) -> tuple[list[Figure], list[str]]:
    """Save each figure as PNG + PDF in ``folder``: (drawn, ["title: why not"])."""
    done, skipped = [], []
    for spec in specs:
        try:
            fig = spec.make()
        except figures.NoData as why:
            skipped.append(f"{spec.title} (`{spec.name}`): not run -- {why}")
            continue
        # a bug in one figure must not cost the whole report
        except Exception as err:  # noqa: BLE001
            why = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
            log.warning("figure %s not drawn: %s", spec.name, why)  # one line, no traceback
            skipped.append(f"{spec.title} (`{spec.name}`): failed -- {why}")
            continue
        theme.save_figure(fig, folder / spec.name)
        done.append(spec)
    return done, skipped


def build(
    data: Collected, args: Args, command: str, folder: Path
) -> tuple[list, dict[str, pd.DataFrame]]:
    """Draw figures into ``folder``; return the report blocks and the tables to save as CSV."""
    per_user = text.labelled(data.eval, args.split)
    cfg = claims.Config(
        metric=args.metric,
        split=args.split,
        main_rationale=args.main_rationale,
        n_resamples=args.n_resamples,
        seed=args.seed,
    )
    claim_table = claims.evaluate(data, cfg)
    comp = text.comparisons(per_user, args.metric, args.main_rationale)
    cond = conditions_table(per_user, METRICS, args.n_resamples, args.seed)
    done, skipped = draw(eval_specs(data, per_user, args) + probe_specs(data.probes, args), folder)
    health = text.health_lines(data, per_user)
    blocks: list = [
        ("h", 1, "PauseRec reproduction report"),
        ("p", f"Generated {time.strftime('%Y-%m-%d %H:%M')} by:"),
        ("code", command),
        ("h", 2, "Setting"),
        ("list", text.setting_lines(data, per_user, display_roots(args.runs))),
        *([("h", 3, "Conditions that have not learned"), ("list", health)] if health else []),
        ("h", 2, "Claims"),
        ("p", text.RULES),
        ("table", text.claim_rows(claim_table)),
        ("p", "Variance reduction in this design (none of it changes what is measured):"),
        ("list", text.DESIGN),
        ("h", 2, "Metrics"),
        (
            "p",
            f"Per condition ({args.split} split): mean over users (seeds averaged per user) [95% "
            "bootstrap CI]. A trained model below most-popular has not learned yet.",
        ),
        ("table", text.metrics_table(cond, per_user, METRICS)),
        ("h", 3, "Paired comparisons"),
        (
            "p",
            "Each trained condition against the plain reference, the compute-matched control and "
            "the strongest classical baseline: paired over users within seeds, t intervals across "
            "seeds.",
        ),
        ("table", comp),
        ("h", 2, "Deviations from the paper"),
        ("list", text.deviations(data, per_user, args.main_rationale)),
        ("h", 2, "Figures"),
    ]
    for spec in done:
        blocks += [("h", 3, spec.title), ("img", f"figures/{spec.name}.png", spec.caption)]
    if skipped:
        blocks += [("h", 3, "Not run"), ("list", skipped)]
    return blocks, {"claims": claim_table, "comparisons": comp, "conditions": cond}


def display_roots(paths: list[str]) -> list[str]:
    """Runs directories as shown in the report: relative to the working directory, else their
    name."""
    out = []
    for p in map(Path, paths):
        full = p.resolve()
        out.append(str(full.relative_to(Path.cwd())) if full.is_relative_to(Path.cwd()) else p.name)
    return out


def check_roots(paths: list[str]) -> list[Path]:
    if not paths:
        raise UserError(f"{PROG}: give at least one RUNS_DIR")
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"runs directory {p} does not exist")
    return [Path(p) for p in paths]


def run(args: Args) -> Path:
    """Write the report of ``args.runs`` into ``args.out`` (one atomic directory)."""
    roots = check_roots(args.runs)
    out = args.out or str(roots[0] / "report")  # never the committed ./reports by default
    # a report may live inside a runs dir (experiment: OUT/report), never be or hold one
    with files.claim(out, kind=KIND, overwrite=args.overwrite, around=roots):
        data = collect(roots)
        if data.empty():
            raise UserError(
                f"no results under {', '.join(args.runs)}: no pauserec.json, metrics.json, "
                "per_user.csv or probe results.csv found"
            )
        shown = [*display_roots(args.runs), "--out", *display_roots([out])]
        command = f"{PROG} {shlex.join(shown)}"
        with files.atomic_dir(out) as tmp:
            blocks, tables = build(data, args, command, tmp / "figures")
            files.write_text(tmp / "REPORT.md", render.to_markdown(blocks))
            files.write_text(
                tmp / "REPORT.html", render.to_html(blocks, "PauseRec reproduction report")
            )
            for name, table in tables.items():
                files.write_csv(tmp / f"{name}.csv", table)
            # every probe row: megabytes as text
            files.write_csv(tmp / "results.csv.gz", collect_all(roots))
    log.info("wrote %s and %s", Path(out) / "REPORT.md", Path(out) / "REPORT.html")
    return Path(out) / "REPORT.md"


def main(argv: list[str] | None = None) -> Path:
    return run(parse_args(Args, argv, PROG))


if __name__ == "__main__":
    setup_logging()
    sys.exit(cli_run(main))
