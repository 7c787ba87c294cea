"""Training throughput: a plain Hugging Face loop vs the workbench loop side by side in one run, and
the workbench's model FLOPs utilisation (MFU) against a matmul peak measured on the same machine in
the same run; with ``--layouts``, the training layouts side by side in targets per second.

    python bench/train.py [--ckpt CKPT] [--steps 8] [--rounds 3] [--batch-size 16]
                          [--batch-tokens N] [--pack] [--pack-len N] [--compile] [--dtype auto]
                          [--device auto] [--threads N]
    python bench/train.py --layouts [--variant plain] [--ckpt CKPT] ...

* baseline -- what a plain HF fine-tuning loop does: random batches padded to the batch max, fp32,
  ``model(input_ids, attention_mask, labels=...)`` (logits for every position), torch's default
  AdamW.
* ours -- :mod:`pauserec.loop`: length bucketing, the LM head only on labelled positions, autocast
  in ``--dtype`` (auto: bf16 where native, else fp32), fused AdamW, optional ``--compile``; steps of
  ``--batch-size`` sequences or of ``--batch-tokens`` tokens.
* packed (``--pack``) -- ours with the same steps packed into rows of ``--pack-len`` tokens.
* peak -- the best GFLOP/s of n x n matmuls in fp32 and bf16 (n doubles from 256 until one matmul
  takes a tenth of ``--peak-seconds``), measured at the start of every round, so load from other
  jobs hits the peak and the trainers alike.

Model FLOPs of a training step (forward + backward = 3 x forward), on real tokens only (padding is
waste):
  * dense: 6 x N x tokens, N = non-embedding parameters (attention and MLP matrices, norms);
  * attention: 6 x n_layers x d_attn x L (L + 1) per sequence of length L -- scores and values over
    the causal triangle within the sequence (d_attn = n_heads x head_dim), whatever the row layout;
  * LM head: 6 x d_model x d_vocab x labelled tokens (ours runs it only there).
Not counted: embedding lookups, elementwise work (norms, activations, softmax, RoPE), the optimizer.
MFU = model FLOPs per second / the measured matmul peak of the precision ours trains in.

On a GPU give steps that fill it (``--batch-size 256``, the paper preset's, or ``--batch-tokens``):
at 16 sequences a step is bound by kernel launches, not FLOPs. There each line also gives the peak
GPU memory (every method's weights and optimizer states included).

``--layouts``: the same next-item targets (a seeded sample of ``--n-seqs`` windows of ml-100k's
training part, ``--train-targets windows``: every item a target once) laid out three ways --
``example`` (one sequence per target, the paper's), ``exact`` (a window's targets in one pass, the
paper's prompt) and ``stream`` (the history as one sequence, loss on every item) -- each trained by
the workbench loop on its own copy of the model. Prints targets/s, tokens per target and tokens/s
per layout, and the ratios ``exact / example`` and ``stream / example`` in targets per second.

Both (all three) train their own copy of the same checkpoint on the same corpus (a seeded mix of the
cpt, sft and cot-sft sequences). Rounds alternate the order (the machine may be shared); throughput
counts real input tokens per wall-clock second, and per CPU-second of this process (fairer when
other jobs share the cores). Prints ``mfu: X.XX of the measured <dtype> matmul peak (N GFLOP/s)``,
``packing: X.XX`` (with ``--pack``: packed / ours), ``speedup per CPU-second: X.XX`` and
``speedup: X.XX`` (ours / baseline).
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pauserec.config import arg, parse_args
from pauserec.model import checkpoint, init_ckpt
from pauserec.model.device import (
    autocast,
    name_of,
    resolve_device,
    resolve_dtype,
    synchronize,
    torch_dtype,
)
from pauserec.training import batches, loop, stages, train
from pauserec.training.corpus import LAYOUTS, Corpus, subset


@dataclass
class BenchArgs:
    """Plain HF training loop vs pauserec's: tokens/s side by side, MFU against a measured matmul
    peak."""

    ckpt: str = arg("", "checkpoint (default: a fresh SmolLM2 init on ml-100k)")
    steps: int = arg(8, "timed optimizer steps per method per round")
    warmup: int = arg(2, "untimed steps per method first")
    rounds: int = arg(3, "rounds, alternating which method goes first")
    batch_size: int = arg(16, "sequences per step")
    batch_tokens: int = arg(0, "ours: tokens per step instead (0: off)")
    pack: bool = arg(False, "also run ours packed, and print the ratio")
    pack_len: int = arg(0, "packed: tokens per row (0: the step's longest)")
    n_seqs: int = arg(1024, "corpus size (a third each of cpt, sft, cot-sft)")
    max_history: int = arg(20, "history length of the sft / cot windows")
    device: str = arg("auto", "auto, cpu, cuda")
    dtype: str = arg("auto", "ours: auto (bf16 where native), bf16, fp16, fp32", aliases=("--amp",))
    compile: bool = arg(False, "ours: torch.compile")
    threads: int = arg(0, "torch CPU threads (0: torch's default)")
    peak_seconds: float = arg(1.0, "time per matmul-peak measurement")
    seed: int = arg(0, "corpus sample and batch order")
    layouts: bool = arg(False, "compare the training layouts (targets/s) instead")
    variant: str = arg("plain", "--layouts: plain or pause (5 pauses)", choices=("plain", "pause"))


def corpus_mix(ckpt: checkpoint.Checkpoint, n: int, max_history: int, seed: int) -> Corpus:
    """A third each of the cpt, sft and cot-sft corpora, built exactly as training builds them."""
    parts = []
    for stage in ("cpt", "sft", "cot-sft"):
        args = train.TrainArgs(
            stage=stage,
            from_ckpt="-",
            out="/tmp/bench-unused",
            n_train=n // 3,
            max_history=max_history,
            seed=seed,
        )
        parts.append(subset(stages.build_corpus(ckpt, args)[0], n // 3, seed))
    return Corpus(
        [s for p in parts for s in p.ids], [s for p in parts for s in p.labels], {"kind": "mix"}
    )


def matmul_peak(
    dtype: torch.dtype, device: torch.device, seconds: float
) -> tuple[float, float, int]:
    """(GFLOP/s, GFLOP per CPU-second, n): the best of n x n matmuls repeated for ``seconds``."""
    cap = 8192 if device.type == "cuda" else 4096
    n = 256
    while True:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        a @ b  # warm-up at this size
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if time.perf_counter() - start >= seconds / 10 or n >= cap:
            break
        n *= 2
    best, flops, cpu, end = 0.0, 0.0, time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
        flops += 2 * n**3
    return best, flops / 1e9 / max(time.process_time() - cpu, 1e-9), n


class FlopCounter:
    """Model FLOPs of one training step (see the module docstring for what counts)."""

    def __init__(self, model: torch.nn.Module):
        c = model.config
        skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
        self.dense = sum(p.numel() for p in model.parameters() if id(p) not in skip)
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.attn = c.num_hidden_layers * c.num_attention_heads * head_dim
        self.head = c.hidden_size * model.get_output_embeddings().weight.shape[0]

    def __call__(self, lengths: np.ndarray, labelled: int) -> float:
        lengths = lengths.astype(np.float64)
        return 6.0 * (
            self.dense * lengths.sum()
            + self.attn * (lengths * (lengths + 1)).sum()
            + self.head * labelled
        )


class Runner:
    """One method's model, optimizer and endless step stream."""

    def __init__(
        self, model, data: Corpus, args: BenchArgs, device: torch.device, kind: str, pad: int
    ):
        self.model, self.data, self.args, self.device, self.kind, self.pad = (
            model,
            data,
            args,
            device,
            kind,
            pad,
        )
        self.ours = kind != "baseline"
        self.dtype = resolve_dtype(args.dtype, device) if self.ours else "fp32"
        self.lengths = data.lengths()
        self.packed = kind == "packed"
        self.flops = FlopCounter(model)
        cfg = loop.LoopConfig(lr=1e-5, weight_decay=0.01)
        if self.ours:
            self.opt = loop.make_optimizer(model, cfg, device, {})
            self.net = loop.LabelledLoss(model)
            self.net = torch.compile(self.net, dynamic=True) if args.compile else self.net
        else:
            self.opt = torch.optim.AdamW(
                model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
            )
        self.batches, self.epoch = [], 0
        self.tokens = self.padded = self.targets = 0
        self.seconds = self.cpu_seconds = self.model_flops = self.memory = 0.0

    def _next(self) -> np.ndarray:
        if not self.batches:
            a = self.args
            self.batches = batches.plan(
                self.lengths,
                a.batch_size,
                a.seed,
                self.epoch,
                bucket=self.ours,
                batch_tokens=a.batch_tokens if self.ours else 0,
                pack=self.packed,
            )
            self.epoch += 1
        return self.batches.pop(0)

    def step(self) -> tuple[int, int, float, int]:
        """One optimizer step; returns (real tokens, padded tokens, model FLOPs, next-item
        targets)."""
        idx = self._next()
        width = (self.args.pack_len or int(self.lengths[idx].max())) if self.packed else 0
        b = batches.collate(
            self.data, batches.pack(idx, self.lengths, width), self.pad, self.device
        )
        if self.ours:
            with autocast(self.device, self.dtype):
                loss_sum, _ = self.net(
                    b["input_ids"], b["labels"], b["attention_mask"], b["position_ids"]
                )
            loss = loss_sum / max(b["labelled"], 1)
        else:
            mask = (
                b["attention_mask"]
                if b["attention_mask"] is not None
                else torch.ones_like(b["input_ids"])
            )
            loss = self.model(
                input_ids=b["input_ids"], attention_mask=mask, labels=b["labels"]
            ).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        targets = sum(self.data.targets[i] for i in idx) if self.data.targets else 0
        return (
            b["tokens"],
            b["input_ids"].numel(),
            self.flops(self.lengths[idx], b["labelled"]),
            targets,
        )

    def run(self, steps: int, timed: bool) -> None:
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start, cpu = time.perf_counter(), time.process_time()
        counts = [self.step() for _ in range(steps)]
        synchronize(self.device)
        if self.device.type == "cuda":  # what a step needs, to size --batch-size / --batch-tokens
            self.memory = max(self.memory, torch.cuda.max_memory_allocated(self.device) / 2**30)
        if timed:
            self.seconds += time.perf_counter() - start
            self.cpu_seconds += time.process_time() - cpu
            self.tokens += sum(c[0] for c in counts)
            self.padded += sum(c[1] for c in counts)
            self.model_flops += sum(c[2] for c in counts)
            self.targets += sum(c[3] for c in counts)

    def report(self) -> str:
        waste = 1 - self.tokens / max(self.padded, 1)
        return (
            f"{self.kind:<9} {self.tokens / self.seconds:9.1f} tokens/s  "
            f"{self.tokens / self.cpu_seconds:9.1f} tokens/CPU-s  "
            f"{self.model_flops / self.seconds / 1e9:7.1f} model GFLOP/s  ({self.tokens:,} tokens "
            f"in {self.seconds:.1f}s, {waste:.0%} padding, {self.dtype}"
            + (f", peak memory {self.memory:.1f} GiB)" if self.memory else ")")
        )


def default_ckpt() -> str:
    path = Path("runs/bench/init")
    if not (path / checkpoint.META_FILE).is_file():
        init_ckpt.main(["--backbone", "smollm2-135m", "--dataset", "ml-100k", "--out", str(path)])
    return str(path)


def layout_corpora(ckpt: checkpoint.Checkpoint, args: BenchArgs) -> dict[str, Corpus]:
    """The same targets (a seeded sample of windows) in each training layout, built as training
    builds them."""
    out = {}
    for layout in LAYOUTS:
        stage = {"plain": "sft", "pause": "pause-sft"}[args.variant]
        targs = train.TrainArgs(
            stage=stage,
            from_ckpt="-",
            out="/tmp/bench-unused",
            n_train=args.n_seqs,
            max_history=args.max_history,
            seed=args.seed,
            train_targets="windows",
            layout=layout,
            pause_init="default",
        )
        out[layout] = stages.build_corpus(ckpt, targs)[0]
    return out


def compare_layouts(
    args: BenchArgs, ckpt: checkpoint.Checkpoint, device: torch.device
) -> dict[str, float]:
    """Targets per second of each layout, trained side by side (rounds alternate the order)."""
    corpora = layout_corpora(ckpt, args)
    pad = ckpt.tokenizer.pad_token_id if ckpt.tokenizer.pad_token_id is not None else 0
    runners = {}
    for layout, data in corpora.items():
        runners[layout] = Runner(
            copy.deepcopy(ckpt.model).to(device).train(), data, args, device, layout, pad
        )
        runners[layout].run(args.warmup, timed=False)
    n = sum(corpora["example"].targets)
    print(
        f"device {name_of(device)}; backbone {ckpt.meta.get('backbone')}; {args.n_seqs} windows of "
        f"ml-100k ({n:,} targets, history <= {args.max_history}, {args.variant}); steps of "
        f"{args.batch_size} sequences; {args.rounds} rounds x {args.steps} steps; dtype "
        f"{runners['example'].dtype}"
    )
    for r in range(args.rounds):
        for layout in list(runners) if r % 2 == 0 else list(reversed(runners)):
            runners[layout].run(args.steps, timed=True)
    rate = {k: x.targets / x.seconds for k, x in runners.items()}
    print(
        f"{'layout':<8} {'targets/s':>10} {'tokens/target':>14} "
        f"{'tokens/s':>10}  (targets, seconds)"
    )
    for k, x in runners.items():
        print(
            f"{k:<8} {rate[k]:10.1f} {x.tokens / max(x.targets, 1):14.1f} "
            f"{x.tokens / x.seconds:10.1f}  ({x.targets:,} in {x.seconds:.1f}s)"
        )
    for k in ("exact", "stream"):
        print(f"{k} / example: {rate[k] / rate['example']:.2f}  (targets per second)")
    return rate


def main(argv: list[str] | None = None) -> float:
    args = parse_args(BenchArgs, argv, "bench/train.py")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    ckpt = checkpoint.load(args.ckpt or default_ckpt())
    if args.layouts:
        rate = compare_layouts(args, ckpt, device)
        return rate["stream"] / rate["example"]
    data = corpus_mix(ckpt, args.n_seqs, args.max_history, args.seed)
    pad = ckpt.tokenizer.pad_token_id if ckpt.tokenizer.pad_token_id is not None else 0
    runners = {}
    for kind in ("baseline", "ours", *(("packed",) if args.pack else ())):
        model = copy.deepcopy(ckpt.model).to(device).train()
        runners[kind] = Runner(model, data, args, device, kind, pad)
        runners[kind].run(args.warmup, timed=False)
    ours = runners["ours"]
    f = ours.flops
    step = f"{args.batch_tokens} tokens" if args.batch_tokens else f"{args.batch_size} sequences"
    print(
        f"device {name_of(device)}; backbone {ckpt.meta.get('backbone')} ({f.dense / 1e6:.1f}M "
        f"non-embedding parameters, LM head {f.head / 1e6:.1f}M); corpus {len(data)} sequences "
        f"(cpt/sft/cot-sft mix, mean {data.lengths().mean():.0f} tokens); steps of {step}; "
        f"{args.rounds} rounds x {args.steps} steps; ours: dtype {ours.dtype}, compile "
        f"{args.compile}"
        + (
            f"; packed rows of {args.pack_len or 'the longest in the step'} tokens"
            if args.pack
            else ""
        )
    )
    peaks = {"fp32": [], "bf16": []}
    for r in range(args.rounds):
        for name in peaks:
            peaks[name].append(matmul_peak(torch_dtype(name), device, args.peak_seconds))
        before = {k: (x.tokens, x.seconds) for k, x in runners.items()}
        for kind in list(runners) if r % 2 == 0 else list(reversed(runners)):
            runners[kind].run(args.steps, timed=True)
        rates = {
            k: (x.tokens - before[k][0]) / (x.seconds - before[k][1]) for k, x in runners.items()
        }
        print(
            f"round {r + 1}: matmul peak "
            + ", ".join(f"{n} {p[-1][0]:.1f}" for n, p in peaks.items())
            + " GFLOP/s; "
            + "  ".join(f"{k} {v:.0f} tok/s" for k, v in rates.items())
        )
    for runner in runners.values():
        print(runner.report())
    mean = {n: [float(np.mean([x[i] for x in p])) for i in range(2)] for n, p in peaks.items()}
    print(
        "matmul peak: "
        + ", ".join(
            f"{n} {m[0]:.1f} GFLOP/s ({m[1]:.1f} per CPU-second; n = {p[0][2]})"
            for (n, m), p in zip(mean.items(), peaks.values())
        )
        + f"; mean of {args.rounds} rounds"
    )
    prec = "fp32" if ours.dtype == "fp32" else "bf16"  # fp16 (old GPUs) runs at about the bf16 rate
    peak = mean[prec]
    wall_mfu = ours.model_flops / ours.seconds / 1e9 / peak[0]
    cpu_mfu = ours.model_flops / ours.cpu_seconds / 1e9 / peak[1]
    print(f"mfu: {wall_mfu:.2f} of the measured {prec} matmul peak ({peak[0]:.0f} GFLOP/s)")
    print(f"mfu per CPU-second: {cpu_mfu:.2f}")
    if args.pack:
        packing = (
            runners["packed"].tokens / runners["packed"].seconds / (ours.tokens / ours.seconds)
        )
        print(f"packing: {packing:.2f}  (packed / ours, tokens/s)")
    base = runners["baseline"]
    print(
        "speedup per CPU-second: "
        f"{(ours.tokens / ours.cpu_seconds) / (base.tokens / base.cpu_seconds):.2f}  (the fairer "
        "number on a shared machine)"
    )
    speedup = (ours.tokens / ours.seconds) / (base.tokens / base.seconds)
    print(f"speedup: {speedup:.2f}")
    return speedup


if __name__ == "__main__":
    from pauserec.cli import run, setup_logging

    setup_logging(logging.WARNING)
    sys.exit(run(main))
