"""The GPU run's evaluation inside its deadlines, on the same test users everywhere.

* Rounds: every cell decodes the same chunk of test users, round after round, its checkpoint loaded
  once. Users come from one seeded sample (:func:`pauserec.data.sample`: the sample of n users is
  the start of every larger one), so after any round every cell has the same users. The first round
  is one decoding batch at most; each round is as large as the time left before the evaluation
  deadline allows at the speed the rounds measured (the plan's assumed speed for the first), up to
  the plan's users. A round's results are kept in one atomic folder ``WORK/seed0/eval-rounds/NN/``
  and merged (:func:`pauserec.evaluation.evaluate.merge`) into ``WORK/seed0/eval/CELL/``
  (``metrics.json``, ``per_user.csv``).
* Baselines: fitted and ranked on exactly the users the cells reached (again if the cells moved on);
  SASRec trains for at most 60% of the time left before the baselines' deadline.
* Latency: the paper's protocol per cell; the time left before its deadline is shared by the
  cells' decoding costs and the samples are cut to what fits (a cell that cannot time 16 is
  skipped, and the record says so).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd

from driver import gpu_prepare
from pauserec import data, files
from pauserec.config import build
from pauserec.evaluation import evaluate
from pauserec.evaluation.baselines import command as baseline
from pauserec.model import checkpoint
from pauserec.model.device import describe, resolve_device, resolve_dtype

CELLS = tuple(c.name for c in gpu_prepare.CELLS)  # evaluated, in this order
COST = {c.name: gpu_prepare.eval_cost(c) for c in gpu_prepare.CELLS}
BASELINES = ("popularity", "markov", "sasrec")
TRAINED = ("sasrec",)  # skipped past the baselines' deadline; the counting ones take seconds
EVAL_SEED = 0  # of the user sample, as in ``evaluate --seed``
BEAMS = 20
ROUNDS = 6  # a later round holds at most 1/ROUNDS of the planned users: results come back early
SAFETY = 0.9  # a round is sized to this share of the time left at the measured speed
LATENCY_RATIO = 4.0  # assumed seconds per timed sample / per beam-searched user, until measured


def chunk(test: list[data.Example], done: int, size: int) -> list[data.Example]:
    """The examples that extend the sample of ``done`` test users to ``done + size`` users."""
    old = set(data.sample(len(test), done, EVAL_SEED).tolist()) if done else set()
    return [test[i] for i in data.sample(len(test), done + size, EVAL_SEED) if i not in old]


def load_rounds(folder: Path) -> list[dict]:
    """The finished rounds: per round, per cell, (summary, per-user frame)."""
    return [
        {
            c: (
                json.loads((d / f"{c}.json").read_text()),
                pd.read_csv(d / f"{c}.csv", keep_default_na=False),
            )
            for c in CELLS
        }
        for d in sorted(folder.glob("[0-9][0-9]"))
    ]


class Evaluation:
    """The four cells' checkpoints, their test users, and what was measured so far."""

    def __init__(self, args, work: Path, record: dict, publish):
        self.args, self.work, self.publish = args, work, publish
        self.device = resolve_device(args.device)
        self.dtype = resolve_dtype("auto", self.device)
        self.ckpts = {
            c: checkpoint.load(work / "seed0" / c, device=self.device, dtype=self.dtype)
            for c in CELLS
        }
        self.tests = {c: evaluate.examples_for(ck, "test") for c, ck in self.ckpts.items()}  # all
        self.popular = {c: evaluate.popular_items(ck) for c, ck in self.ckpts.items()}
        self.folder = work / "seed0" / "eval-rounds"
        self.rounds = load_rounds(self.folder)
        self.latency = {
            c: json.loads((self.folder / "latency" / f"{c}.json").read_text())
            for c in CELLS
            if (self.folder / "latency" / f"{c}.json").is_file()
        }
        self.ev = record.setdefault("evaluation", {})
        self.record = record

    @property
    def users(self) -> int:
        return sum(len(r[CELLS[0]][1]) for r in self.rounds)

    def write(self, cell: str) -> None:
        """The cell's merged evaluation, with its latency once timed, in the evaluate layout."""
        ckpt = self.ckpts[cell]
        summary, frame = evaluate.merge(ckpt, [r[cell] for r in self.rounds], self.popular[cell])
        summary.update(describe(self.device, self.dtype), **self.latency.get(cell, {}))
        settings = {
            "beams": BEAMS,
            "batch_size": self.args.eval_batch,
            "rounds": len(self.rounds),
            "split": "test",
            "eval_seed": EVAL_SEED,
            "device": self.args.device,
        }
        out = self.work / "seed0" / "eval" / cell  # rewritten after every round: claimed each time
        with files.claim(out, kind="pauserec evaluate", overwrite=True):
            evaluate.write(str(out), ckpt.identity(), summary, frame, settings)

    def run_rounds(self, clock, cap: int) -> None:
        self.ev["planned_users"] = cap
        b = self.record["budget"]  # until a round measures it: the plan's assumed decoding speed
        per_user = self.ev.get("seconds_per_user", b["eval_units"] / b["assumed"]["users_per_s"])
        fixed = self.ev.get("seconds_per_round", 0.0)  # writing and exporting a round's results
        while self.users < cap:
            left, done = clock.left("evaluate"), self.users
            most = (
                math.ceil(cap / ROUNDS) if "seconds_per_user" in self.ev else self.args.eval_batch
            )
            size = min(cap - done, most, int((SAFETY * left - fixed) / per_user))
            if left <= 0 or size < 1:
                self.ev["stopped"] = f"time: {done:,} of {cap:,} users by the evaluation deadline"
                break
            start = time.time()
            results = {
                c: evaluate.evaluate(
                    self.ckpts[c],
                    seed=EVAL_SEED,
                    beams=BEAMS,
                    examples=chunk(self.tests[c], done, size),
                    popular=self.popular[c],
                    batch_size=self.args.eval_batch,
                )
                for c in CELLS
            }
            per_user, start = (time.time() - start) / size, time.time()
            with files.atomic_dir(self.folder / f"{len(self.rounds):02d}") as tmp:
                for c, (summary, frame) in results.items():
                    files.write_json(tmp / f"{c}.json", summary)
                    files.write_csv(tmp / f"{c}.csv", frame)
            self.rounds.append(results)
            for c in CELLS:
                self.write(c)
            self.ev.update(users=self.users, rounds=len(self.rounds), seconds_per_user=per_user)
            self.publish()
            fixed = self.ev["seconds_per_round"] = time.time() - start
            print(
                f"== evaluation round {len(self.rounds)}: {size:,} users ({self.users:,} of "
                f"{cap:,}), {1000 * per_user:.1f} ms a user for all cells + {fixed:.1f}s to "
                f"write; {clock.left('evaluate'):.0f}s left",
                flush=True,
            )

    def run_baselines(self, plan: dict, folder: Path, clock) -> None:
        """Each baseline on exactly the users the cells reached."""
        users, notes = self.users, self.ev.setdefault("baselines", {})
        for name in BASELINES:
            out = self.work / "baselines" / name
            if (out / "metrics.json").is_file() and json.loads((out / "metrics.json").read_text())[
                "n_users"
            ] == users:
                continue
            left = clock.left("baselines")
            if name in TRAINED and left <= 0:
                notes[name] = "skipped: no time left before the baselines' deadline"
                continue
            values = {
                "model": name,
                "dataset": plan["source_dataset"],
                "data_root": str(folder / "data"),
                "out": str(out),
                "overwrite": True,
                "n_users": users,
                "eval_seed": EVAL_SEED,
                "device": self.args.device,
            }
            if name == "sasrec":
                values["sasrec_seconds"] = max(1.0, min(self.args.sasrec_seconds, 0.6 * left))
            baseline.run(build(baseline.BaselineArgs, values))
            notes[name] = f"{users:,} users"
            self.publish()

    def time_latency(self, clock) -> None:
        """The paper's latency protocol per cell, cut to the latency deadline."""
        notes = self.ev.setdefault("latency", {})
        ratio = self.ev.get("latency_ratio", LATENCY_RATIO)
        pending = [c for c in CELLS if c not in self.latency]
        for i, cell in enumerate(pending):
            beam = sum(r[cell][0]["beam_seconds"] for r in self.rounds) / self.users  # s a user
            share = clock.left("latency") * COST[cell] / sum(COST[c] for c in pending[i:])
            batches = int(share / (ratio * beam * evaluate.LATENCY_BATCH)) - 1  # 1 untimed first
            n = min(self.args.latency_samples, evaluate.LATENCY_BATCH * batches)
            if n < evaluate.LATENCY_BATCH:
                notes[cell] = f"skipped: {share:.1f}s left for it, too few for 16 samples"
                continue
            start = time.time()
            lat = evaluate.latency_of(self.ckpts[cell], chunk(self.tests[cell], 0, self.users), n)
            ratio = (time.time() - start) / (n + evaluate.LATENCY_BATCH) / beam
            self.latency[cell] = lat
            files.write_json(self.folder / "latency" / f"{cell}.json", lat)
            self.write(cell)
            notes[cell] = f"{n} samples"
            self.ev["latency_ratio"] = ratio
            self.publish()


def evaluate_all(
    args, plan: dict, folder: Path, work: Path, clock, cap: int, record: dict, publish
) -> None:
    """Rounds, then baselines, then latency (see the module docstring); ``publish`` after each."""
    ev = Evaluation(args, work, record, lambda: (collect(work, record), publish()))
    ev.run_rounds(clock, cap)
    if ev.users:  # else the record says the evaluation deadline came first
        ev.run_baselines(plan, folder, clock)
        ev.time_latency(clock)


def collect(work: Path, record: dict) -> None:
    """The headline numbers of every evaluated cell and baseline into the record."""
    keys = (
        "n_users",
        "recall@10",
        "ndcg@10",
        "coverage@10",
        "latency_ms_per_sample",
        "latency_samples",
    )
    found = [
        *sorted((work / "seed0" / "eval").glob("*/metrics.json")),
        *sorted((work / "baselines").glob("*/metrics.json")),
    ]
    record["metrics"] = {
        p.parent.name: {k: m[k] for k in keys if k in m}
        for p in found
        for m in [json.loads(p.read_text())]
    }


def format_metrics(record: dict) -> str:
    lines = [f"{'':<14} {'users':>7}  recall@10  ndcg@10  latency ms"]
    for name, m in record.get("metrics", {}).items():
        lat = f"{m['latency_ms_per_sample']:9.1f}" if "latency_ms_per_sample" in m else "        -"
        lines.append(
            f"{name:<14} {m['n_users']:>7,}  {m['recall@10']:9.4f}  {m['ndcg@10']:7.4f}  {lat}"
        )
    return "\n".join(lines)
