"""SASRec (Kang & McAuley 2018), compact: a causal Transformer over the last ``max_len`` items.

Pre-norm blocks (one-head self-attention + a ``dim -> dim -> dim`` ReLU feed-forward), learned
absolute positions over left-padded slots, item embeddings shared with the output layer, and --
unlike the paper's one sampled negative per target -- a full-softmax cross-entropy over every item.

Training covers each training target exactly once per epoch: every training sequence is cut into
windows of at most ``max_len`` targets (a random, seeded offset per sequence and epoch, so a target
sees a different amount of its history from one epoch to the next), and every window position
predicts its next item.

Early stopping. Given validation examples (``fit(..., valid=split["valid"])``), every epoch ends
with NDCG@10 on them; training stops when ``patience`` epochs in a row have not improved on the
best, or at the ``epochs`` cap, and the best epoch's weights are kept. The validation targets are
never trained on, and the run is reproducible to the bit under a seed. ``max_seconds`` is an
optional hard cap on top (checked after every step; a run it stops is not reproducible); without
validation examples the model trains for ``epochs``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pauserec import data
from pauserec.errors import UserError
from pauserec.evaluation import metrics
from pauserec.evaluation.baselines._common import (
    Examples,
    Fitted,
    batches,
    check_request,
    rank_histories,
    training_sequences,
)
from pauserec.evaluation.baselines.counts import item_counts

log = logging.getLogger(__name__)


class SASRecNet(nn.Module):
    """Token ids (item index + 1, 0 = padding) -> one hidden state per position."""

    def __init__(
        self, n_items: int, max_len: int, dim: int, layers: int, heads: int, dropout: float
    ):
        super().__init__()
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(
            dim, heads, dim, dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.heads = heads
        for emb in (self.item, self.pos):
            nn.init.xavier_normal_(emb.weight)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, pos) token ids -> (batch, pos, dim) hidden states."""
        b, t = tokens.shape
        real = tokens > 0  # (batch, pos)
        x = self.item(tokens) * self.item.embedding_dim**0.5 + self.pos.weight[:t]
        x = self.drop(x) * real.unsqueeze(-1)
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=tokens.device)
        # (batch, pos, pos); a padding slot sees itself only
        keep = causal & (real.unsqueeze(1) | eye)
        mask = ~keep.repeat_interleave(self.heads, 0)  # (batch * heads, pos, pos), True = blocked
        return self.norm(self.blocks(x, mask=mask))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., dim) hidden states -> (..., n_items) scores of every item."""
        return hidden @ self.item.weight[1:].T


def windows(seqs: Sequence[Sequence[int]], max_len: int, gen: torch.Generator) -> torch.Tensor:
    """(n_windows, max_len + 1) left-padded token ids; ``w[:, :-1]`` inputs, ``w[:, 1:]`` targets.

    Every item of every sequence but the first is a target in exactly one window; window boundaries
    move with a random offset per sequence.
    """
    offsets = torch.randint(0, max_len, (len(seqs),), generator=gen).tolist()
    rows = []
    for seq, off in zip(seqs, offsets):
        last = len(seq) - 1  # targets are seq[1..last]
        if last < 1:
            continue
        ends = [last, *range(last - off, 0, -max_len)] if off else list(range(last, 0, -max_len))
        # targets seq[s..e], inputs seq[s-1..e-1]
        for e, s in zip(ends, [*(e + 1 for e in ends[1:]), 1]):
            rows.append([0] * (max_len + s - e - 1) + [i + 1 for i in seq[s - 1 : e + 1]])
    return torch.tensor(rows, dtype=torch.long)


def pad_left(histories: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """(n, max_len) token ids of the last ``max_len`` items of each history, left-padded with 0."""
    out = torch.zeros(len(histories), max_len, dtype=torch.long)
    for u, hist in enumerate(histories):
        tail = list(hist)[-max_len:]
        if tail:
            out[u, -len(tail) :] = torch.tensor(tail) + 1
    return out


@dataclass
class SASRec(Fitted):
    """Self-attentive sequential recommendation, trained with full-softmax cross-entropy on CPU."""

    name: str = field(default="sasrec", init=False)
    dim: int = 64  # d_model, also the feed-forward width
    layers: int = 2
    heads: int = 1
    max_len: int = 20  # history items the model reads (the split's max_history)
    dropout: float = 0.2
    lr: float = 1e-3
    batch_size: int = 128  # windows per step
    epochs: int = 200  # the cap on epochs
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping
    max_seconds: float | None = None  # optional hard wall-clock cap on fit (None: none)
    exclude_history: bool = False  # never recommend an item already in the user's history
    device: str = "cpu"
    net: Any = field(default=None, init=False, repr=False)  # SASRecNet after fit
    # called as on_epoch(epoch, train_seconds) after every epoch (e.g. a learning curve); set after
    # make()
    on_epoch: Callable[[int, float], None] | None = field(default=None, init=False, repr=False)

    def fit(
        self, ds: data.Dataset, train: Examples, seed: int = 0, valid: Examples | None = None
    ) -> SASRec:
        """Train on ``train`` (early-stopped on ``valid`` when given; see the module docstring)."""
        sizes = (self.dim, self.layers, self.heads, self.max_len, self.batch_size, self.patience)
        if min(sizes) < 1 or self.epochs < 0:
            raise UserError(
                "sasrec sizes must be positive (dim, layers, heads, max_len, batch_size, patience)"
            )
        if self.dim % self.heads:
            raise UserError(f"sasrec dim {self.dim} must be divisible by heads {self.heads}")
        seqs = training_sequences(train)
        # ties: popularity
        self.order = np.argsort(-item_counts(seqs, len(ds.items)), kind="stable")
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG state is left as it was
            torch.manual_seed(seed)
            self.net = SASRecNet(
                len(ds.items), self.max_len, self.dim, self.layers, self.heads, self.dropout
            ).to(self.device)
            run = self._train(seqs, torch.Generator().manual_seed(seed), valid or [])
        self.info = {
            "baseline": self.name,
            "seed": seed,
            "train_examples": len(train),
            "train_targets": sum(len(s) - 1 for s in seqs),
            **self._options(),
            **run,
        }
        return self

    def _options(self) -> dict[str, Any]:
        keys = (
            "dim",
            "layers",
            "heads",
            "max_len",
            "dropout",
            "lr",
            "batch_size",
            "epochs",
            "patience",
            "max_seconds",
            "exclude_history",
            "device",
        )
        return {k: getattr(self, k) for k in keys}

    def _train(
        self, seqs: list[list[int]], gen: torch.Generator, valid: Examples
    ) -> dict[str, Any]:
        """Epochs until the cap, ``patience`` epochs without a better validation NDCG@10 (the best
        weights kept), or ``max_seconds`` of training (``on_epoch`` and validation not counted)."""
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, betas=(0.9, 0.98))
        seconds, steps, epoch, loss, stop = 0.0, 0, 0, float("nan"), "epochs"
        curve: list[float] = []
        best, best_state = -1.0, None
        while epoch < self.epochs:
            budget = None if self.max_seconds is None else self.max_seconds - seconds
            start = time.perf_counter()
            loss, n, out_of_time = self._epoch(seqs, gen, opt, budget)
            seconds, steps, epoch = seconds + time.perf_counter() - start, steps + n, epoch + 1
            log.info("sasrec epoch %d: loss %.4f, %.0f s", epoch, loss, seconds)
            if valid:
                curve.append(self.validate(valid))
                if curve[-1] > best:
                    best = curve[-1]
                    best_state = {k: v.clone() for k, v in self.net.state_dict().items()}
            if self.on_epoch is not None:
                self.net.eval()
                self.on_epoch(epoch, seconds)
            if out_of_time or (valid and epoch - 1 - int(np.argmax(curve)) >= self.patience):
                stop = "time" if out_of_time else "patience"
                break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        best_epoch = int(np.argmax(curve)) + 1 if curve else epoch
        return {
            "epochs_run": epoch,
            "best_epoch": best_epoch,
            "stopped_by": stop,
            "steps": steps,
            "final_loss": loss,
            "out_of_time": stop == "time",
            "fit_seconds": seconds,
            "valid_ndcg@10": curve,
        }

    def validate(self, valid: Examples) -> float:
        """Mean NDCG@10 on ``valid`` (the model left in eval mode)."""
        items = self.recommend([ex.history for ex in valid], top_k=10)
        ranks = metrics.ranks([ex.target for ex in valid], items)
        return float(metrics.ndcg_at_k(ranks, 10).mean())

    def _epoch(
        self,
        seqs: list[list[int]],
        gen: torch.Generator,
        opt: torch.optim.Optimizer,
        budget: float | None,
    ) -> tuple[float, int, bool]:
        """(mean loss, steps, ran out of time) of one pass over freshly cut windows."""
        self.net.train()
        start = time.perf_counter()
        win = windows(seqs, self.max_len, gen)  # (n_windows, max_len + 1)
        perm = torch.randperm(len(win), generator=gen)
        total, n = 0.0, 0
        for sl in batches(len(win), self.batch_size):
            w = win[perm[sl]].to(self.device)  # (batch, max_len + 1)
            loss = self._loss(w[:, :-1], w[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item(), n + 1
            if budget is not None and time.perf_counter() - start > budget:
                return total / n, n, True
        return total / max(n, 1), n, False

    def _loss(self, inp: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all items, at every position with a real input item."""
        keep = inp > 0  # (batch, pos)
        hidden = self.net(inp)[keep]  # (n_targets, dim)
        return F.cross_entropy(self.net.logits(hidden), tgt[keep] - 1)

    @torch.no_grad()
    def scores(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """(n_users, n_items) output logits after the last ``max_len`` items of each history."""
        self.net.eval()
        tokens = pad_left(histories, self.max_len).to(self.device)  # (n_users, max_len)
        return self.net.logits(self.net(tokens)[:, -1]).double().cpu().numpy()

    def recommend_scored(
        self, histories: Sequence[Sequence[int]], top_k: int = 20
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items, scores) (n_users, top_k), best first; the score is the output logit."""
        check_request(None if self.net is None else self.net.item.num_embeddings - 1, top_k)
        return rank_histories(self.scores, histories, top_k, self.order, self.exclude_history)
