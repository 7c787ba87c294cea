"""The one training loop every stage shares, fast by construction.

* Length bucketing: batches hold sequences of similar length, so padding is rare (none when equal).
* The LM head runs only on labelled positions (the vocabulary is ~49k; most positions carry no loss).
* bf16 autocast (``--dtype auto``: GPUs and CPUs with native bf16) with fp32 master weights, fused
  AdamW (GPU and CPU), SDPA attention, optional ``torch.compile``.
* ``torchrun`` DDP: each process takes its share of every global batch; the loss is normalised by the
  global number of labelled tokens, so N processes compute the gradient of one process with the whole batch.
* Every ``save_every`` steps the trainable weights, optimizer, scheduler and RNG state go to ``OUT.partial``;
  ``resume=True`` continues from there with the same batches, so the final weights are identical.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pauserec import trainstate
from pauserec.corpus import Corpus
from pauserec.device import (
    DEVICES_HELP,
    DTYPES,
    autocast,
    init_distributed,
    resolve_device,
    resolve_dtype,
)
from pauserec.errors import UserError
from pauserec.prompts import IGNORE

log = logging.getLogger(__name__)
BUCKET_BATCHES = 64  # batches per sorting window: enough to find equal lengths, still well shuffled


class Diverged(UserError):
    """The loss or gradient stopped being finite."""


@dataclass
class LoopConfig:
    """Optimisation settings every stage shares (presets: ``[train.STAGE]`` in configs/*.toml)."""

    epochs: int = field(default=3, metadata={"help": "passes over the corpus", "min": 1})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate (AdamW)", "gt": 0.0})
    batch_size: int = field(default=16, metadata={"help": "sequences per optimizer step, all processes",
                                                   "min": 1})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on norms)",
                                                         "min": 0.0})
    warmup_ratio: float = field(default=0.03, metadata={"help": "linear warm-up share, then cosine",
                                                         "min": 0.0, "max": 1.0})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0: off)", "min": 0.0})
    max_steps: int = field(default=0, metadata={"help": "cap on optimizer steps (0: epochs decide)", "min": 0})
    seed: int = field(default=0, metadata={"help": "training seed: data order, subsamples, pause "
                                                   "positions, init noise", "min": 0})
    device: str = field(default="auto", metadata={"help": DEVICES_HELP})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 autocast where native: GPU, "
                                                       "AVX512-BF16), bf16, fp16, fp32",
                                                 "choices": DTYPES, "aliases": ("--amp",)})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    bucket: bool = field(default=True, metadata={"help": "length bucketing (off: random batches)"})
    save_every: int = field(default=200, metadata={"help": "resumable state every N steps (0: never)",
                                                   "min": 0})
    log_every: int = field(default=10, metadata={"help": "CSV log / progress interval in steps", "min": 1})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar"})


@dataclass
class Result:
    steps: int
    tokens: int  # input tokens trained on (no padding), all processes
    labelled: int  # tokens that carried loss
    train_s: float  # seconds in the loop, all segments of a resumed run
    loss: float  # mean loss of the last log interval
    log: list[dict]
    dtype: str = "fp32"  # the autocast precision the steps ran in
    wall_before: float = 0.0  # wall seconds of earlier segments of a resumed run (up to their last save)


# ---------------------------------------------------------------- batches


def plan(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, bucket: bool = True,
         world: int = 1) -> list[np.ndarray]:
    """One epoch's batches of sequence indices, a pure function of (seed, epoch).

    Bucketing shuffles, sorts windows of ``BUCKET_BATCHES`` batches by length, cuts them into batches
    and shuffles the batch order. Batches smaller than ``world`` are dropped (every process needs one).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not bucket:
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        batches = []
        window = batch_size * BUCKET_BATCHES
        for start in range(0, len(order), window):
            part = order[start:start + window]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return [b for b in batches if len(b) >= world]


def collate(corpus: Corpus, idx, pad_id: int, device: torch.device) -> dict[str, torch.Tensor | None]:
    """Right-padded tensors; ``attention_mask`` is None when every sequence has the same length."""
    width = max(len(corpus.ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(corpus.ids[i])
        ids[row, :n] = torch.tensor(corpus.ids[i])
        labels[row, :n] = torch.tensor(corpus.labels[i])
        mask[row, :n] = 1
    padded = bool((mask == 0).any())
    return {"input_ids": ids.to(device), "labels": labels.to(device),
            "attention_mask": mask.to(device) if padded else None, "tokens": int(mask.sum())}


class LabelledLoss(nn.Module):
    """Summed next-token cross-entropy over labelled positions; the LM head sees only those."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, labels, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                          use_cache=False).last_hidden_state  # (B, T, d_model)
        target = labels[:, 1:]  # (B, T-1): position t predicts token t+1
        keep = target != IGNORE
        logits = self.model.get_output_embeddings()(hidden[:, :-1][keep])  # (N, d_vocab)
        loss = F.cross_entropy(logits.float(), target[keep], reduction="sum")
        return loss, keep.sum()


# ---------------------------------------------------------------- optimiser



def make_optimizer(model: nn.Module, cfg: LoopConfig, device: torch.device,
                   row_masks: dict[str, torch.Tensor]) -> torch.optim.AdamW:
    """Fused AdamW with decay on matrices (not norms, not row-masked ones: their rows decay by hand)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and name not in row_masks else plain).append(p)
    groups = [{"params": ps, "weight_decay": wd} for ps, wd in ((decay, cfg.weight_decay), (plain, 0.0))
              if ps]
    if not groups:
        raise UserError("nothing to train: every parameter is frozen")
    fused = device.type in ("cuda", "cpu")  # CPU too: ~5x faster than foreach for a 135M model
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)


def schedule(total: int, warmup_ratio: float):
    warm = max(1, int(round(warmup_ratio * total)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return factor


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)  # NCCL reduces only GPU tensors
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------- the loop


def fit(model: nn.Module, corpus: Corpus, cfg: LoopConfig, out: str | Path, pad_id: int,
        row_masks: dict[str, torch.Tensor] | None = None, resume: bool = False,
        fingerprint: dict | None = None, on_step: Callable[[int], None] | None = None,
        started: float | None = None) -> Result:
    """Train ``model`` in place on ``corpus``; resumable state lives in ``OUT.partial``.

    ``row_masks`` maps a parameter name to a bool vector over its rows: only those rows train.
    ``on_step(step)`` runs after every optimizer step (tests use it to kill a run mid-way).
    ``started``: when this segment of the stage began (``time.perf_counter()``), so saved states carry
    the wall time spent so far and a resumed stage reports the wall time of all its segments.
    """
    started = time.perf_counter() if started is None else started
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    rank, world = init_distributed(device)
    masks = {k: v.to(device) for k, v in (row_masks or {}).items()}
    lengths = corpus.lengths()
    per_epoch = len(plan(lengths, cfg.batch_size, cfg.seed, 0, cfg.bucket, world))
    if per_epoch == 0:
        raise UserError(f"corpus of {len(corpus)} sequences gives no batch of {cfg.batch_size}")
    total = per_epoch * cfg.epochs if cfg.max_steps <= 0 else min(per_epoch * cfg.epochs, cfg.max_steps)
    model.to(device).train()
    net = wrap(model, cfg, device, world)
    opt = make_optimizer(model, cfg, device, masks)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(total, cfg.warmup_ratio))
    named = dict(model.named_parameters())
    partial = trainstate.partial_dir(out)
    st = trainstate.start(partial, model, opt, sched, resume, fingerprint or {}, rank)
    logger = trainstate.CsvLog(partial / trainstate.LOG_FILE, st["log"], enabled=rank == 0)
    bar = tqdm(total=total, initial=st["step"], disable=not (cfg.progress and rank == 0), unit="step",
               dynamic_ncols=True, desc=Path(out).name)
    window, batches, t0 = [0.0, 0.0], {}, time.perf_counter() - st["elapsed"]
    wall_before = st.get("wall", 0.0)
    while st["step"] < total:
        epoch, pos = divmod(st["step"], per_epoch)
        if epoch not in batches:
            batches = {epoch: plan(lengths, cfg.batch_size, cfg.seed, epoch, cfg.bucket, world)}
        batch = collate(corpus, batches[epoch][pos][rank::world], pad_id, device)
        with autocast(device, dtype):  # forward: summed loss over this process's labelled tokens
            loss_sum, n_lab = net(batch["input_ids"], batch["labels"], batch["attention_mask"])
        g_loss, g_lab, g_tok = _all_sum([loss_sum.item(), n_lab.item(), batch["tokens"]], device)
        _check_finite("loss", g_loss, st, partial)
        opt.zero_grad(set_to_none=True)
        (loss_sum * world / max(g_lab, 1.0)).backward()  # DDP averages: sum over all / global count
        grad_norm = _clip(model, named, masks, cfg.grad_clip)
        _check_finite("gradient norm", grad_norm, st, partial)
        _update(named, opt, sched, masks, cfg.weight_decay)
        st.update(step=st["step"] + 1, tokens=st["tokens"] + int(g_tok), labelled=st["labelled"] + int(g_lab))
        window = [window[0] + g_loss, window[1] + g_lab]
        bar.update(1)
        if st["step"] % cfg.log_every == 0 or st["step"] == total:
            row = _log_row(st, epoch, window, sched, grad_norm, time.perf_counter() - t0)
            logger.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            window = [0.0, 0.0]
        if cfg.save_every and st["step"] % cfg.save_every == 0 and st["step"] < total:
            st["elapsed"] = time.perf_counter() - t0
            st["wall"] = wall_before + time.perf_counter() - started
            trainstate.save(partial, model, opt, sched, st, rank)
        if on_step is not None:
            on_step(st["step"])
    bar.close()
    last = st["log"][-1]["loss"] if st["log"] else float("nan")
    return Result(st["step"], st["tokens"], st["labelled"], time.perf_counter() - t0, last, st["log"],
                  dtype, wall_before)


def wrap(model: nn.Module, cfg: LoopConfig, device: torch.device, world: int) -> nn.Module:
    """The module a step calls: the labelled-positions loss, under DDP when several processes train,
    compiled when asked."""
    net: nn.Module = LabelledLoss(model)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    return torch.compile(net, dynamic=True) if cfg.compile else net


def _check_finite(what: str, value: float, st: dict, partial: Path) -> None:
    if math.isfinite(value):
        return
    where = f"training stopped: {what} is {value} at step {st['step'] + 1}"
    if st.get("saved_step"):
        raise Diverged(f"{where}; the last good state (step {st['saved_step']}) is kept in {partial} "
                       "(--resume retries from it); lower --lr and rerun to start over")
    raise Diverged(f"{where}; no state was saved yet (see --save-every); lower --lr and rerun")


def _clip(model, named, row_masks, max_norm: float) -> float:
    """Zero the gradient of frozen rows, then clip. Returns the gradient norm before clipping."""
    for name, mask in row_masks.items():
        grad = named[name].grad
        if grad is not None:
            grad.mul_(mask.unsqueeze(1).to(grad.dtype))
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))


def _update(named, opt, sched, row_masks, weight_decay: float) -> None:
    """AdamW step, scheduler step, and decoupled decay of the trainable rows of row-masked matrices.

    A row whose gradient is always zero keeps zero Adam moments, so AdamW leaves it bit-identical.
    """
    lr = sched.get_last_lr()[0]
    opt.step()
    sched.step()
    if weight_decay and row_masks:
        with torch.no_grad():
            for name, mask in row_masks.items():
                named[name][mask] *= 1 - lr * weight_decay


def _log_row(st: dict, epoch: int, window: list[float], sched, grad_norm: float, elapsed: float) -> dict:
    return {"step": st["step"], "epoch": epoch + 1, "loss": window[0] / max(window[1], 1.0),
            "lr": sched.get_last_lr()[0], "grad_norm": grad_norm, "tokens": st["tokens"],
            "tokens_per_s": st["tokens"] / max(elapsed, 1e-9), "elapsed_s": elapsed}


