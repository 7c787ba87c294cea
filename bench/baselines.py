"""Classical baselines on the leave-one-out split: Recall/NDCG@10, wall and CPU seconds, per
setting.

For every dataset and baseline, fits on ``train`` (what the LLM trains on) and/or ``train+valid``
(the validation item added back for the test evaluation), then scores all test users with history
items kept (as the LLM's beam search does) and excluded. SASRec also prints a learning curve:
Recall@10 on the validation and test users after each epoch against its training seconds. Prints
``ratio to reference`` where the issue gives a reference Recall@10 (fitted on ``train``, history
kept).

  python bench/baselines.py --datasets ml-100k,beauty --sasrec-seconds 120 --out /tmp/baselines.csv

Runs on ``--threads`` torch threads (default 1: the machine is shared). Timings on a busy machine
are inflated; the CPU seconds of this process are printed beside wall time.

Measured (fit on train, history kept, all test users, 1 thread, seed 0; Recall@10 / NDCG@10):

  dataset  popularity       markov (L=3, 0.5)  sasrec (2x64, hist 20, full softmax)
  ml-100k  0.0498 / 0.0224  0.1198 / 0.0644    0.1357 / 0.0610 after 120 s (beats popularity at 8 s)
  beauty   0.0114 / 0.0053  0.0706 / 0.0444    0.0825 / 0.0413 after 900 s (18 epochs, busy machine)
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

import pandas as pd
import torch

from pauserec import data, files
from pauserec.cli import run, setup_logging
from pauserec.config import arg, parse_args
from pauserec.data import data_root_arg
from pauserec.errors import UserError
from pauserec.evaluation import baselines

# (dataset, baseline) -> (Recall@10, NDCG@10) from issue #11, all test users
REFERENCE = {
    ("ml-100k", "popularity"): (0.050, 0.022),
    ("beauty", "popularity"): (0.011, 0.005),
    ("ml-100k", "markov"): (0.120, 0.064),
    ("beauty", "markov"): (0.069, 0.044),
    ("beauty", "sasrec"): (0.081, 0.041),
}
FIT_ON = {"train": ("train",), "train+valid": ("train", "valid")}


@dataclass
class BenchArgs:
    """Fit and score the classical baselines on the same split, users and metrics as the LLM."""

    datasets: str = arg("ml-100k", "comma-separated: ml-100k, beauty, ...")
    baselines: str = arg("popularity,markov,sasrec", "comma-separated")
    fit_on: str = arg("train", "train, train+valid or both", choices=(*FIT_ON, "both"))
    sasrec_seconds: float = arg(120.0, "SASRec training budget (s)", gt=0.0)
    sasrec_epochs: int = arg(200, "SASRec epoch cap", min=1)
    sasrec_dropout: float = arg(0.2, "SASRec dropout", min=0.0)
    curve_every: int = arg(1, "SASRec learning curve: valid+test every N epochs (0 = none)", min=0)
    threads: int = arg(1, "torch threads", min=1)
    seed: int = arg(0, "training seed", min=0)
    data_root: str | None = data_root_arg()
    out: str = arg("", "write tidy results CSV here ('' = don't)")


def curve_hook(model, sp: dict[str, list[data.Example]], rows: list[dict], ident: dict, every: int):
    """on_epoch callback: Recall/NDCG@10 of valid and test users, printed and kept as rows."""

    def hook(epoch: int, seconds: float) -> None:
        if epoch % every:
            return
        line = []
        for split in ("valid", "test"):
            s, _ = baselines.evaluate_baseline(model, sp[split])
            line.append(f"{split} R@10 {s['recall@10']:.4f} N@10 {s['ndcg@10']:.4f}")
            rows.extend(
                {
                    **ident,
                    "split": split,
                    "epoch": epoch,
                    "train_seconds": seconds,
                    "metric": m,
                    "value": s[m],
                }
                for m in ("recall@10", "ndcg@10")
            )
        print(f"  epoch {epoch:3d} {seconds:7.1f} s  " + "  ".join(line), flush=True)

    return hook


def fit_one(name: str, ds: data.Dataset, sp: dict, fit_on: str, args: BenchArgs, rows: list[dict]):
    """(fitted model, wall s, cpu s)."""
    options = (
        {
            "max_seconds": args.sasrec_seconds,
            "epochs": args.sasrec_epochs,
            "dropout": args.sasrec_dropout,
        }
        if name == "sasrec"
        else {}
    )
    model = baselines.make(name, **options)
    if name == "sasrec" and args.curve_every > 0:
        ident = {"dataset": ds.name, "baseline": name, "fit_on": fit_on}
        model.on_epoch = curve_hook(model, sp, rows, ident, args.curve_every)
    train = [ex for part in FIT_ON[fit_on] for ex in sp[part]]
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(ds, train, seed=args.seed)
    return model, time.perf_counter() - wall, time.process_time() - cpu


def bench_dataset(name: str, args: BenchArgs, rows: list[dict]) -> None:
    ds = data.load_dataset(name, args.data_root)
    sp = data.split(ds)
    fits = ("train", "train+valid") if args.fit_on == "both" else (args.fit_on,)
    for baseline in args.baselines.split(","):
        for fit_on in fits:
            print(f"{ds.name} {baseline} fit on {fit_on}", flush=True)
            model, wall, cpu = fit_one(baseline, ds, sp, fit_on, args, rows)
            for exclude in (False, True):
                model.exclude_history = exclude
                s, _ = baselines.evaluate_baseline(model, sp["test"])
                ref = (
                    REFERENCE.get((ds.name, baseline))
                    if fit_on == "train" and not exclude
                    else None
                )
                note = f"  ratio to reference {s['recall@10'] / ref[0]:.2f}" if ref else ""
                print(
                    f"  test, history {'excluded' if exclude else 'kept    '}: R@10 "
                    f"{s['recall@10']:.4f} N@10 {s['ndcg@10']:.4f}  fit wall {wall:.1f} s cpu "
                    f"{cpu:.1f} s  ranking {s['recommend_seconds']:.1f} s{note}",
                    flush=True,
                )
                settings = {
                    k: v for k, v in model.info.items() if k not in ("baseline", "exclude_history")
                }
                rows.extend(
                    {
                        "dataset": ds.name,
                        "baseline": baseline,
                        "fit_on": fit_on,
                        "split": "test",
                        "exclude_history": exclude,
                        "fit_wall_s": wall,
                        "fit_cpu_s": cpu,
                        "settings": str(settings),
                        "metric": m,
                        "value": s[m],
                    }
                    for m in ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
                )


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(BenchArgs, argv, "python bench/baselines.py")
    unknown = set(args.baselines.split(",")) - set(baselines.NAMES)
    if unknown or args.fit_on not in (*FIT_ON, "both"):
        raise UserError(f"unknown baseline(s) {sorted(unknown)} or --fit-on {args.fit_on!r}")
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    for name in args.datasets.split(","):
        bench_dataset(name, args, rows)
    frame = pd.DataFrame(rows)
    if args.out:
        files.write_csv(args.out, frame)
        print(f"wrote {args.out}")
    return frame


if __name__ == "__main__":
    setup_logging(logging.WARNING)
    sys.exit(run(main))
