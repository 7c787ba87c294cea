"""The one training loop every stage shares, fast by construction.

* Length bucketing: steps hold sequences of similar length, so padding is rare (none when equal).
* Packing (``pack``, meant for GPUs): a step's sequences share rows of ``pack_len`` tokens,
  attention kept within each sequence; the same sequences and the same loss as unpacked, without the
  padding (:mod:`pauserec.batches`).
* Steps of ``batch_size`` sequences, or of ``batch_tokens`` tokens (big steps that fill a GPU
  without running out of memory on the long ones).
* The LM head runs only on labelled positions (the vocabulary is ~49k; most positions carry no
  loss).
* bf16 autocast (``--dtype auto``: GPUs and CPUs with native bf16) with fp32 master weights, fused
  AdamW (GPU and CPU), SDPA attention, optional ``torch.compile``; fp16 (old GPUs) with loss
  scaling.
* ``torchrun`` DDP: each process takes its share of every global step; the loss is normalised by the
  global number of labelled tokens, so N processes compute the gradient of one process with the
  whole step.
* Every ``save_every`` steps the trainable weights, optimizer, scheduler and RNG state go to
  ``OUT.partial``; ``resume=True`` continues from there with the same steps, so the final weights
  are identical.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pauserec.config import arg
from pauserec.errors import UserError
from pauserec.model.device import (
    DEVICES_HELP,
    DTYPES,
    autocast,
    init_distributed,
    resolve_device,
    resolve_dtype,
)
from pauserec.model.prompts import IGNORE
from pauserec.training import trainstate
from pauserec.training.batches import collate, pack, plan
from pauserec.training.corpus import Corpus

log = logging.getLogger(__name__)


# Sane bounds, so a typo cannot run for days (the paper trains 2-5 epochs, ~10^4 steps).
MAX_EPOCHS = 1000
MAX_STEPS = 10_000_000


class Diverged(UserError):
    """The loss or gradient stopped being finite."""


@dataclass
class LoopConfig:
    """Optimisation settings every stage shares (presets: ``[train.STAGE]`` in configs/*.toml)."""

    epochs: int = arg(3, "passes over the corpus", min=1, max=MAX_EPOCHS)
    lr: float = arg(1e-4, "peak learning rate (AdamW)", gt=0.0)
    batch_size: int = arg(16, "sequences per optimizer step, all processes", min=1, max=1 << 20)
    batch_tokens: int = arg(
        0,
        "tokens per optimizer step, all processes, instead of --batch-size (0: off): a "
        "step takes sequences while they fit, counted padded to its longest (real tokens "
        "with --pack)",
        min=0,
        max=1 << 30,
    )
    pack: bool = arg(
        False,
        "pack a step's sequences into rows of --pack-len tokens, attention kept within "
        "each (same steps and loss, no padding; meant for GPUs: 1.05x on a 2-core CPU at "
        "2% padding)",
    )
    pack_len: int = arg(0, "--pack: tokens per row (0: the step's longest)", min=0, max=1 << 24)
    weight_decay: float = arg(0.01, "AdamW weight decay (not on norms)", min=0.0)
    warmup_ratio: float = arg(0.03, "linear warm-up share, then cosine", min=0.0, max=1.0)
    grad_clip: float = arg(1.0, "max gradient norm (0: off)", min=0.0)
    max_steps: int = arg(0, "cap on optimizer steps (0: epochs decide)", min=0, max=MAX_STEPS)
    seed: int = arg(0, "training seed: data order, subsamples, pause positions, init noise", min=0)
    device: str = arg("auto", DEVICES_HELP)
    dtype: str = arg(
        "auto",
        "auto (bf16 autocast where native: GPU, AVX512-BF16), bf16, fp16, fp32",
        choices=DTYPES,
        aliases=("--amp",),
    )
    compile: bool = arg(False, "torch.compile the model")
    bucket: bool = arg(True, "length bucketing (off: random batches)")
    save_every: int = arg(200, "resumable state every N steps (0: never)", min=0)
    log_every: int = arg(10, "CSV log / progress interval in steps", min=1)
    progress: bool = arg(True, "tqdm progress bar")


@dataclass
class Result:
    steps: int
    tokens: int  # input tokens trained on (no padding), all processes
    labelled: int  # tokens that carried loss
    targets: int  # next-item targets trained on
    seconds: float  # the stage's clock when the loop ended (all segments of a resumed run)
    loss: float  # mean loss of the last log interval
    log: list[dict]
    valid: list[dict]  # validation rows (see trainstate.VALID_FIELDS)
    dtype: str = "fp32"  # the autocast precision the steps ran in


class Steps:
    """Every epoch's steps, and this process's rows of each: pure functions of (seed, epoch, step).

    Under ``batch_tokens`` the number of steps differs between epochs; they are counted up front so
    the schedule knows the total and a resumed run finds its place -- up to the epoch that reaches
    ``max_steps``, so a step cap does not plan epochs that never run.
    """

    def __init__(self, lengths: np.ndarray, cfg: LoopConfig, rank: int = 0, world: int = 1):
        self.lengths, self.cfg, self.rank, self.world = lengths, cfg, rank, world
        counts: list[int] = []
        for e in range(cfg.epochs):
            counts.append(len(self.epoch(e)))
            if 0 < cfg.max_steps <= sum(counts):
                break
        self.ends = np.cumsum(counts)  # (epochs planned,) cumulative
        self._cached: tuple[int, list[np.ndarray]] = (-1, [])

    def epoch(self, epoch: int) -> list[np.ndarray]:
        c = self.cfg
        return plan(
            self.lengths, c.batch_size, c.seed, epoch, c.bucket, self.world, c.batch_tokens, c.pack
        )

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, position in it) of the global ``step``."""
        epoch = int(np.searchsorted(self.ends, step, side="right"))
        return epoch, step - (int(self.ends[epoch - 1]) if epoch else 0)

    def rows(self, step: int) -> list[list[int]]:
        """This process's share of ``step``, laid out in rows."""
        epoch, pos = self.locate(step)
        if self._cached[0] != epoch:
            self._cached = (epoch, self.epoch(epoch))
        share = self._cached[1][pos][self.rank :: self.world]
        if not self.cfg.pack:
            return pack(share, self.lengths, 0)
        return pack(share, self.lengths, self.cfg.pack_len or int(self.lengths[share].max()))


class LabelledLoss(nn.Module):
    """Summed next-token cross-entropy over labelled positions; the LM head sees only those."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids, labels, attention_mask=None, position_ids=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if (
            position_ids is not None
            and attention_mask is None
            and "flash" in str(self.model.config._attn_implementation)
        ):
            # flash-attention finds the sequences of a packed batch (varlen) only in a single row;
            # the rows joined end to end stay exact: each row starts a sequence, whose first token
            # is no target
            input_ids, labels, position_ids = (
                t.reshape(1, -1) for t in (input_ids, labels, position_ids)
            )
        hidden = self.model.get_decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state  # (B, T, d_model)
        target = labels[:, 1:]  # (B, T-1): position t predicts token t+1
        keep = target != IGNORE
        logits = self.model.get_output_embeddings()(hidden[:, :-1][keep])  # (N, d_vocab)
        loss = F.cross_entropy(logits.float(), target[keep], reduction="sum")
        return loss, keep.sum()


# ---------------------------------------------------------------- optimiser


def make_optimizer(
    model: nn.Module, cfg: LoopConfig, device: torch.device, row_masks: dict[str, torch.Tensor]
) -> torch.optim.AdamW:
    """Fused AdamW with decay on matrices (not norms, not row-masked ones: their rows decay by
    hand).

    The parameters stay fp32 under autocast (master weights), so the fused kernels step fp32 tensors
    on CUDA and CPU alike; fp16 steps go through the loss scaler (``GradScaler.step`` unscales
    first).
    """
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and name not in row_masks else plain).append(p)
    groups = [
        {"params": ps, "weight_decay": wd}
        for ps, wd in ((decay, cfg.weight_decay), (plain, 0.0))
        if ps
    ]
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


def fit(
    model: nn.Module,
    corpus: Corpus,
    cfg: LoopConfig,
    *,
    out: str | Path,
    pad_id: int,
    row_masks: dict[str, torch.Tensor] | None = None,
    resume: bool = False,
    fingerprint: dict | None = None,
    clock: trainstate.Clock | None = None,
    validate: Callable[[nn.Module], dict] | None = None,
    valid_every: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> Result:
    """Train ``model`` in place on ``corpus``; resumable state lives in ``OUT.partial``.

    ``row_masks`` maps a parameter name to a bool vector over its rows: only those rows train.
    ``clock``: the stage's clock (started when the stage began, so saved states carry the wall time
    spent so far and a resumed stage reports the wall time of all its segments).
    ``validate(model)`` (rank 0) measures the model every ``valid_every`` steps and after the last
    one; its rows go to ``OUT.partial/valid_log.csv`` and :attr:`Result.valid`.
    ``on_step(step)`` runs after every optimizer step (tests use it to kill a run mid-way).
    """
    clock = clock or trainstate.Clock()
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    rank, world = init_distributed(device)
    masks = {k: v.to(device) for k, v in (row_masks or {}).items()}
    steps = Steps(corpus.lengths(), cfg, rank, world)
    if steps.ends[-1] == 0:
        size = f"{cfg.batch_tokens} tokens" if cfg.batch_tokens else f"{cfg.batch_size}"
        raise UserError(f"corpus of {len(corpus)} sequences gives no batch of {size}")
    total = int(steps.ends[-1]) if cfg.max_steps <= 0 else min(int(steps.ends[-1]), cfg.max_steps)
    model.to(device).train()
    net = wrap(model, cfg, device, world)
    opt = make_optimizer(model, cfg, device, masks)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(total, cfg.warmup_ratio))
    # bf16 / fp32 need no scaling
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    named = dict(model.named_parameters())
    partial = trainstate.partial_dir(out)
    prog = trainstate.start(partial, model, opt, sched, resume, fingerprint or {}, clock, rank)
    if prog.scaler:
        scaler.load_state_dict(prog.scaler)
    logger = trainstate.CsvLog(partial / trainstate.LOG_FILE, prog.log, enabled=rank == 0)
    valid_log = trainstate.CsvLog(
        partial / trainstate.VALID_FILE,
        prog.valid,
        trainstate.VALID_FIELDS,
        enabled=rank == 0 and validate is not None,
    )
    bar = tqdm(
        total=total,
        initial=prog.step,
        disable=not (cfg.progress and rank == 0),
        unit="step",
        dynamic_ncols=True,
        desc=Path(out).name,
    )
    window = [0.0, 0.0]
    while prog.step < total:
        epoch = steps.locate(prog.step)[0]
        rows = steps.rows(prog.step)
        batch = collate(corpus, rows, pad_id, device)
        with autocast(device, dtype):  # forward: summed loss over this process's labelled tokens
            loss_sum, _ = net(
                batch["input_ids"], batch["labels"], batch["attention_mask"], batch["position_ids"]
            )
        n_targets = sum(corpus.targets[i] for row in rows for i in row) if corpus.targets else 0
        g_loss, g_lab, g_tok, g_tgt = _all_sum(
            [loss_sum.item(), batch["labelled"], batch["tokens"], n_targets], device
        )
        _check_finite("loss", g_loss, prog, partial)
        opt.zero_grad(set_to_none=True)
        # DDP averages: sum over all / count
        scaler.scale(loss_sum * world / max(g_lab, 1.0)).backward()
        scaler.unscale_(opt)
        grad_norm = _clip(model, named, masks, cfg.grad_clip)
        if not scaler.is_enabled():  # fp16: an overflow skips the step and lowers the scale
            _check_finite("gradient norm", grad_norm, prog, partial)
        _update(named, opt, sched, masks, cfg.weight_decay, scaler)
        prog.step, prog.tokens = prog.step + 1, prog.tokens + int(g_tok)
        prog.labelled, prog.targets = prog.labelled + int(g_lab), prog.targets + int(g_tgt)
        window = [window[0] + g_loss, window[1] + g_lab]
        bar.update(1)
        if prog.step % cfg.log_every == 0 or prog.step == total:
            row = _log_row(prog, epoch, window, sched, grad_norm, clock())
            logger.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            window = [0.0, 0.0]
        if (
            validate is not None
            and rank == 0
            and (prog.step == total or valid_every and prog.step % valid_every == 0)
        ):
            valid_log.append(_valid_row(model, validate, prog, epoch, clock))
        if cfg.save_every and prog.step % cfg.save_every == 0 and prog.step < total:
            prog.scaler = scaler.state_dict() if scaler.is_enabled() else None
            trainstate.save(partial, model, opt, sched, prog, clock, rank)
        if on_step is not None:
            on_step(prog.step)
    bar.close()
    last = prog.log[-1]["loss"] if prog.log else float("nan")
    return Result(
        prog.step,
        prog.tokens,
        prog.labelled,
        prog.targets,
        clock(),
        last,
        prog.log,
        prog.valid,
        dtype,
    )


def _valid_row(
    model: nn.Module,
    validate: Callable[[nn.Module], dict],
    prog: trainstate.Progress,
    epoch: int,
    clock: trainstate.Clock,
) -> dict:
    """One validation measurement, the model back in training mode afterwards."""
    start = clock()
    model.eval()
    try:
        measured = validate(model)
    finally:
        model.train()
    return {
        "step": prog.step,
        "epoch": epoch + 1,
        "targets": prog.targets,
        **measured,
        "seconds": clock() - start,
        "elapsed_s": clock(),
    }


def wrap(model: nn.Module, cfg: LoopConfig, device: torch.device, world: int) -> nn.Module:
    """The module a step calls: the labelled-positions loss, under DDP when several processes train,
    compiled when asked."""
    net: nn.Module = LabelledLoss(model)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device] if device.type == "cuda" else None
        )
    return torch.compile(net, dynamic=True) if cfg.compile else net


def _check_finite(what: str, value: float, prog: trainstate.Progress, partial: Path) -> None:
    if math.isfinite(value):
        return
    where = f"training stopped: {what} is {value} at step {prog.step + 1}"
    if prog.saved_step:
        raise Diverged(
            f"{where}; the last good state (step {prog.saved_step}) is kept in {partial} "
            "(--resume retries from it); lower --lr and rerun to start over"
        )
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


def _update(named, opt, sched, row_masks, weight_decay: float, scaler) -> None:
    """AdamW step (through the loss scaler: a plain step unless fp16), scheduler step, and decoupled
    decay of the trainable rows of row-masked matrices.

    A row whose gradient is always zero keeps zero Adam moments, so AdamW leaves it bit-identical.
    """
    lr = sched.get_last_lr()[0]
    scaler.step(opt)
    scaler.update()
    sched.step()
    if weight_decay and row_masks:
        with torch.no_grad():
            for name, mask in row_masks.items():
                named[name][mask] *= 1 - lr * weight_decay


def _log_row(
    prog: trainstate.Progress,
    epoch: int,
    window: list[float],
    sched,
    grad_norm: float,
    elapsed: float,
) -> dict:
    return {
        "step": prog.step,
        "epoch": epoch + 1,
        "loss": window[0] / max(window[1], 1.0),
        "lr": sched.get_last_lr()[0],
        "grad_norm": grad_norm,
        "tokens": prog.tokens,
        "targets": prog.targets,
        "tokens_per_s": prog.tokens / max(elapsed, 1e-9),
        "elapsed_s": elapsed,
    }
