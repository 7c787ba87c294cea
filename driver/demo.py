"""The main job on the embedded defaults -- what ``make demo`` runs.

Dataset stats, then two experiments on the same data and Semantic IDs, and one report over both:

* the recommendation comparison (``--backbone compact``, preset ``quick``): a TIGER-sized decoder
  trained from scratch on every training target (the ``stream`` layout), every training stage, pause
  and its compute-matched controls, CoT, the classical baselines on the same users, evaluation,
  latency, and the probes that need no pretrained language model (attention to pauses, logit lens,
  interventions, rationale sensitivity) -- in ``OUT/compact``;
* the language-model stages the LLM probes need (``--llm-backbone smollm2-135m``, preset
  ``quick-llm``): every stage with the efficient layouts, evaluated on a few users so their health
  is reported as it is, and the SID-word alignment and verbalisation probes -- in
  ``OUT/<llm backbone>``.

Both are ``pauserec experiment`` runs, so a rerun skips what is finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from analysis import make_report
from driver import experiment, pipeline
from driver.pipeline import RunArgs
from pauserec.config import arg, build, parse_args
from pauserec.data import command as data_command


@dataclass
class DemoArgs(RunArgs):
    """The quick experiments on the embedded default dataset, end to end, with one report."""

    out: str = arg("runs/demo", "run directory")
    backbone: str = arg("compact", "the recommendation comparison's backbone")
    llm_backbone: str = arg("smollm2-135m", "model the LLM probes look inside (empty: no LLM part)")
    llm_preset: str = arg("quick-llm", "configs/NAME.toml of the LLM part")


def parts(args: DemoArgs) -> list[tuple[str, str, str]]:
    """(run folder, backbone, preset) of each experiment the demo runs."""
    out = [(args.backbone, args.backbone, args.preset)]
    if args.llm_backbone:
        out.append((args.llm_backbone, args.llm_backbone, args.llm_preset))
    return out


def run(args: DemoArgs) -> Path:
    start = time.perf_counter()
    exps = [
        build(
            experiment.ExperimentArgs,
            {
                "out": str(Path(args.out) / folder),
                "dataset": args.dataset,
                "backbone": backbone,
                "preset": preset,
                "data_root": args.data_root,
                "device": args.device,
            },
            preset,
            "experiment",
        )
        for folder, backbone, preset in parts(args)
    ]
    wanted = pipeline.settings(
        args,
        llm_backbone=args.llm_backbone,
        llm_preset=pipeline.preset_id(args.llm_preset) if args.llm_backbone else "",
    )
    pipeline.check_run(args.out, "demo", wanted)
    # every part's whole run, before the dataset stats; experiment.run claims its --out
    for exp in exps:
        experiment.check(exp)
    reports = Path(args.out) / "report"
    report = build(
        make_report.Args, {"runs": [e.out for e in exps], "out": str(reports), "overwrite": True}
    )
    with pipeline.claim_run(args.out, "demo", wanted):
        print(f"== dataset {args.dataset}", flush=True)
        data_command.stats(
            build(data_command.DataArgs, {"dataset": args.dataset, "data_root": args.data_root})
        )
        for exp in exps:
            print(f"== experiment: {exp.backbone}, preset {exp.preset}", flush=True)
            experiment.run(exp, report=False)
        make_report.run(report)
    report = reports
    print(
        f"demo finished in {time.perf_counter() - start:.0f}s "
        f"-- open {report / 'REPORT.html'} in a browser"
    )
    return report


def main(argv: list[str] | None = None) -> Path:
    return run(parse_args(DemoArgs, argv, "pauserec demo"))
