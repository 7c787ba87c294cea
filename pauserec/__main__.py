"""``python -m pauserec COMMAND ...``: one entry point for every workbench command.

This module is the program's entry point and sits above every layer: it names the library commands
(``pauserec``) and the drivers (``driver``) by module path and imports only the one that runs.
Nothing imports it.
"""

from __future__ import annotations

import importlib
import sys

from pauserec.cli import run, setup_logging
from pauserec.errors import UserError

# command words -> (module, function, one-line help); modules are imported only when their command
# runs
COMMANDS = {
    ("data", "stats"): (
        "pauserec.data.command",
        "data_stats",
        "users, items, interactions, sequence lengths",
    ),
    ("data", "prepare"): (
        "pauserec.data.prepare",
        "main",
        "raw Amazon / MovieLens files -> the LC-Rec layout",
    ),
    ("data", "export"): (
        "pauserec.data.export",
        "main",
        "a dataset in RecBole's atomic-file format",
    ),
    ("sid", "build"): (
        "pauserec.sid.command",
        "sid_build",
        "Semantic IDs for a catalog, with a quality report",
    ),
    ("init-ckpt",): (
        "pauserec.model.init_ckpt",
        "main",
        "an untrained checkpoint (backbone + SID tokens)",
    ),
    ("train",): ("pauserec.training.train", "main", "one training stage: CKPT in, CKPT out"),
    ("pipeline",): ("driver.pipeline", "main", "every stage in order, with timings"),
    ("evaluate",): (
        "pauserec.evaluation.evaluate",
        "main",
        "Recall/NDCG@K with trie-constrained beam search",
    ),
    ("rationales",): ("pauserec.teacher.rationales", "main", "generate and cache CoT rationales"),
    ("baseline",): (
        "pauserec.evaluation.baselines.command",
        "main",
        "popularity, markov or sasrec on the same split",
    ),
    ("experiment", "plan"): ("analysis.plan", "main", "seeds and test users each claim needs"),
    ("experiment",): (
        "driver.experiment",
        "main",
        "the paper's matrix: train, evaluate, probe, report",
    ),
    ("rationale-train",): (
        "driver.rationale_train",
        "main",
        "cot-sft per rationale condition vs quality",
    ),
    ("demo",): ("driver.demo", "main", "the main job on the embedded defaults (make demo)"),
    ("gpu", "prepare"): (
        "driver.gpu_prepare",
        "main",
        "prepare the one-command GPU run (on the CPU)",
    ),
    ("gpu", "run"): (
        "driver.gpu_run",
        "main",
        "the paper's comparison in one time-boxed GPU command",
    ),
    ("gpu", "preflight"): ("driver.gpu_preflight", "main", "versions, device, a smoke test there"),
}


def usage() -> str:
    lines = [
        "usage: python -m pauserec COMMAND [options]   (COMMAND --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {' '.join(k):<16} {help_}" for k, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    for key, (module, func, _) in COMMANDS.items():
        if tuple(argv[: len(key)]) == key:
            getattr(importlib.import_module(module), func)(argv[len(key) :])
            return
    raise UserError(f"unknown command '{' '.join(argv[:2])}' (see python -m pauserec --help)")


if __name__ == "__main__":
    setup_logging()
    sys.exit(run(main))
