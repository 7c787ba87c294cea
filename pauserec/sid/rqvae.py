"""RQ-VAE Semantic IDs (TIGER, LC-Rec): an MLP autoencoder whose latent is residually quantised.

Encoder ``d -> 512 -> 256 -> 128 -> 32`` and a mirrored decoder (ReLU); ``levels`` codebooks of
``size`` vectors; loss = reconstruction (squared error) + per level ``||sg(r) - e||^2 + beta ||r -
sg(e)||^2`` with the straight-through estimator. Training is short enough for a CPU: a few
autoencoder-only epochs, then the codebooks are initialised by residual k-means on the latents (as
TIGER does), then ``epochs`` quantised epochs; after each epoch, a code no item uses is restarted at
a random item's residual. Seeded: the same embeddings, config and thread count give the same codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pauserec.sid.kmeans import kmeans


@dataclass(frozen=True)
class Params:
    """Fixed hyperparameters (part of the SID cache key through :data:`VERSION`)."""

    hidden: tuple[int, ...] = (512, 256, 128)
    latent: int = 32
    beta: float = 0.25
    lr: float = 1e-3
    warmup_epochs: int = 10
    kmeans_iters: int = 20
    steps_per_epoch: int = 8  # batch = n / 8, capped at max_batch
    max_batch: int = 1024


VERSION = f"rq-vae/1 {Params()}"


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(self, d_in: int, levels: int, size: int, p: Params = Params()):
        super().__init__()
        self.p = p
        self.encoder = _mlp([d_in, *p.hidden, p.latent])
        self.decoder = _mlp([p.latent, *p.hidden[::-1], d_in])
        self.codebooks = nn.Parameter(torch.zeros(levels, size, p.latent))  # (levels, size, latent)

    def quantise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(straight-through quantised latent (B, latent), codes (B, levels), codebook + commitment
        loss)."""
        residual, out, loss, codes = z, torch.zeros_like(z), z.new_zeros(()), []
        for book in self.codebooks:
            idx = _nearest(residual, book)
            e = book[idx]  # (B, latent)
            loss = loss + ((residual.detach() - e) ** 2).sum(1).mean()
            loss = loss + self.p.beta * ((residual - e.detach()) ** 2).sum(1).mean()
            e_st = residual + (e - residual).detach()
            out = out + e_st
            residual = residual - e_st
            codes.append(idx)
        return out, torch.stack(codes, 1), loss

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        z_q, _, quant_loss = self.quantise(self.encoder(x))
        return ((self.decoder(z_q) - x) ** 2).sum(1).mean() + quant_loss


def _nearest(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    dist = (x * x).sum(1, keepdim=True) - 2 * x @ book.T + (book * book).sum(1)[None]  # (B, size)
    return dist.argmin(1)


@torch.no_grad()
def init_codebooks(model: RQVAE, x: torch.Tensor, gen: torch.Generator) -> None:
    """Residual k-means on the encoder's latents of all items."""
    residual = model.encoder(x).double()
    for book in model.codebooks:
        centroids, assign = kmeans(residual, book.shape[0], model.p.kmeans_iters, gen)
        book[: len(centroids)] = centroids.float()
        residual = residual - centroids[assign]


@torch.no_grad()
def restart_dead_codes(model: RQVAE, x: torch.Tensor, gen: torch.Generator) -> int:
    """Move every code that no item uses to a random item's residual at that level; returns how
    many."""
    residual, moved = model.encoder(x), 0
    for book in model.codebooks:
        idx = _nearest(residual, book)
        dead = (torch.bincount(idx, minlength=book.shape[0]) == 0).nonzero().flatten()
        if len(dead):
            book[dead] = residual[torch.randint(len(x), (len(dead),), generator=gen)]
            idx, moved = _nearest(residual, book), moved + len(dead)
        residual = residual - book[idx]
    return moved


def _epoch(
    model: RQVAE,
    x: torch.Tensor,
    opt: torch.optim.Optimizer,
    batch: int,
    gen: torch.Generator,
    quantised: bool,
) -> float:
    total = 0.0
    for ids in torch.randperm(len(x), generator=gen).split(batch):
        b = x[ids]
        loss = (
            model.loss(b)
            if quantised
            else ((model.decoder(model.encoder(b)) - b) ** 2).sum(1).mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(ids)
    return total / len(x)


def train_codes(
    emb: np.ndarray, levels: int, size: int, epochs: int, seed: int, p: Params = Params()
) -> np.ndarray:
    """Train an RQ-VAE on item embeddings ``(n, d)`` and return its codes ``(n, levels)``."""
    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    batch = max(1, min(p.max_batch, len(x) // p.steps_per_epoch))
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # nn.Linear initialisation draws from the global generator
        model = RQVAE(x.shape[1], levels, min(size, len(x)), p)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr)
    for _ in range(p.warmup_epochs):
        _epoch(model, x, opt, batch, gen, quantised=False)
    init_codebooks(model, x, gen)
    for _ in range(epochs):
        _epoch(model, x, opt, batch, gen, quantised=True)
        restart_dead_codes(model, x, gen)
    with torch.no_grad():
        return model.quantise(model.encoder(x))[1].numpy().astype(np.int64)
