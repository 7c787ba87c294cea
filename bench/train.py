"""Training tokens/s: a plain Hugging Face loop vs the workbench loop, side by side in one run.

    python bench/train.py [--ckpt CKPT] [--steps 8] [--rounds 3] [--batch-size 16] [--device auto]

* baseline -- what a plain HF fine-tuning loop does: random batches padded to the batch max, fp32,
  ``model(input_ids, attention_mask, labels=...)`` (logits for every position), torch's default AdamW.
* ours -- :mod:`pauserec.loop`: length bucketing, the LM head only on labelled positions, bf16 autocast and
  fused AdamW on GPU (``--amp`` to choose), optional ``--compile``.

Both train their own copy of the same checkpoint on the same corpus (a seeded mix of the cpt, sft and
cot-sft sequences). Rounds alternate the order of the two (the machine may be shared); throughput counts
real (non-pad) input tokens per wall-clock second, and per CPU-second of this process (fairer when
other jobs share the cores). Prints ``speedup: X.XX`` (ours / baseline, wall clock).
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pauserec import checkpoint, commands, loop, stages, train
from pauserec.config import parse_args
from pauserec.corpus import Corpus, subset
from pauserec.device import autocast, name_of, resolve_device, resolve_dtype


@dataclass
class BenchArgs:
    """Plain HF training loop vs pauserec's, tokens/s side by side."""

    ckpt: str = field(default="", metadata={"help": "checkpoint (default: a fresh SmolLM2 init on ml-100k)"})
    steps: int = field(default=8, metadata={"help": "timed optimizer steps per method per round"})
    warmup: int = field(default=2, metadata={"help": "untimed steps per method first"})
    rounds: int = field(default=3, metadata={"help": "rounds, alternating which method goes first"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step"})
    n_seqs: int = field(default=1024, metadata={"help": "corpus size (a third each of cpt, sft, cot-sft)"})
    max_history: int = field(default=20, metadata={"help": "history length of the sft / cot windows"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda"})
    dtype: str = field(default="auto", metadata={"help": "ours: auto (bf16 where native), bf16, fp16, fp32",
                                                 "aliases": ("--amp",)})
    compile: bool = field(default=False, metadata={"help": "ours: torch.compile"})
    seed: int = field(default=0, metadata={"help": "corpus sample and batch order"})


def corpus_mix(ckpt: checkpoint.Checkpoint, n: int, max_history: int, seed: int) -> Corpus:
    """A third each of the cpt, sft and cot-sft corpora, built exactly as training builds them."""
    parts = []
    for stage in ("cpt", "sft", "cot-sft"):
        args = train.TrainArgs(stage=stage, from_ckpt="-", out="/tmp/bench-unused", n_train=n // 3,
                               max_history=max_history, seed=seed)
        parts.append(subset(stages.build_corpus(ckpt, args)[0], n // 3, seed))
    return Corpus([s for p in parts for s in p.ids], [s for p in parts for s in p.labels], {"kind": "mix"})


class Runner:
    """One method's model, optimizer and endless batch stream."""

    def __init__(self, model, data: Corpus, args: BenchArgs, device: torch.device, ours: bool, pad: int):
        self.model, self.data, self.args, self.device, self.ours, self.pad = model, data, args, device, ours, pad
        self.dtype = resolve_dtype(args.dtype, device)
        cfg = loop.LoopConfig(lr=1e-5, weight_decay=0.01)
        if ours:
            self.opt = loop.make_optimizer(model, cfg, device, {})
            self.net = loop.LabelledLoss(model)
            self.net = torch.compile(self.net, dynamic=True) if args.compile else self.net
        else:
            self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.batches, self.epoch = [], 0
        self.tokens = self.padded = 0
        self.seconds = self.cpu_seconds = 0.0

    def _next(self) -> np.ndarray:
        if not self.batches:
            self.batches = loop.plan(self.data.lengths(), self.args.batch_size, self.args.seed, self.epoch,
                                     bucket=self.ours)
            self.epoch += 1
        return self.batches.pop(0)

    def step(self) -> tuple[int, int]:
        """One optimizer step; returns (real tokens, padded tokens)."""
        b = loop.collate(self.data, self._next(), self.pad, self.device)
        if self.ours:
            with autocast(self.device, self.dtype):
                loss_sum, n = self.net(b["input_ids"], b["labels"], b["attention_mask"])
            loss = loss_sum / n
        else:
            mask = b["attention_mask"] if b["attention_mask"] is not None else torch.ones_like(b["input_ids"])
            loss = self.model(input_ids=b["input_ids"], attention_mask=mask, labels=b["labels"]).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return b["tokens"], b["input_ids"].numel()

    def run(self, steps: int, timed: bool) -> None:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        counts = [self.step() for _ in range(steps)]
        sync()
        if timed:
            self.seconds += time.perf_counter() - start
            self.cpu_seconds += time.process_time() - cpu
            self.tokens += sum(c[0] for c in counts)
            self.padded += sum(c[1] for c in counts)

    def report(self, name: str) -> str:
        waste = 1 - self.tokens / max(self.padded, 1)
        return (f"{name:<9} {self.tokens / self.seconds:9.1f} tokens/s  {self.tokens / self.cpu_seconds:9.1f} "
                f"tokens/CPU-s  ({self.tokens:,} tokens in {self.seconds:.1f}s, {waste:.0%} padding)")


def default_ckpt() -> str:
    path = Path("runs/bench/init")
    if not (path / checkpoint.META_FILE).is_file():
        commands.init_ckpt(["--backbone", "smollm2-135m", "--dataset", "ml-100k", "--out", str(path)])
    return str(path)


def main(argv: list[str] | None = None) -> float:
    args = parse_args(BenchArgs, argv, "bench/train.py")
    device = resolve_device(args.device)
    ckpt = checkpoint.load(args.ckpt or default_ckpt())
    data = corpus_mix(ckpt, args.n_seqs, args.max_history, args.seed)
    pad = ckpt.tokenizer.pad_token_id if ckpt.tokenizer.pad_token_id is not None else 0
    runners = {}
    for name, ours in (("baseline", False), ("ours", True)):
        model = copy.deepcopy(ckpt.model).to(device).train()
        runners[name] = Runner(model, data, args, device, ours, pad)
        runners[name].run(args.warmup, timed=False)
    print(f"device {name_of(device)}; backbone {ckpt.meta.get('backbone')}; corpus {len(data)} "
          f"sequences (cpt/sft/cot-sft mix, mean {data.lengths().mean():.0f} tokens); batch "
          f"{args.batch_size}; {args.rounds} rounds x {args.steps} steps; ours: dtype {resolve_dtype(args.dtype, device)}, "
          f"compile {args.compile}")
    for r in range(args.rounds):
        order = ("baseline", "ours") if r % 2 == 0 else ("ours", "baseline")
        for name in order:
            runners[name].run(args.steps, timed=True)
        print(f"round {r + 1}: " + "  ".join(f"{n} {x.tokens / x.seconds:.0f} tok/s" for n, x in runners.items()))
    for name, runner in runners.items():
        print(runner.report(name))
    base, ours = (runners[n].tokens / runners[n].seconds for n in ("baseline", "ours"))
    base_cpu, ours_cpu = (runners[n].tokens / runners[n].cpu_seconds for n in ("baseline", "ours"))
    print(f"speedup per CPU-second: {ours_cpu / base_cpu:.2f}  (the fairer number on a shared machine)")
    print(f"speedup: {ours / base:.2f}")
    return ours / base


if __name__ == "__main__":
    from pauserec.cli import run, setup_logging

    setup_logging(logging.WARNING)
    sys.exit(run(main))
