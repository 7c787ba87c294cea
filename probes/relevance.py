"""Does attention concentrate on the history items that are relevant to the target?

Relevance of history item ``J`` to a user's target: the number of leading SID codes they share
(``relation="prefix"``, de-duplication level excluded) or the Jaccard overlap of their categories
(``relation="category"``). The statistic is the Pearson correlation between attention mass and
relevance over all (user, history item) pairs, both centred within each user -- so it asks which
items *of one history* get more attention. Baseline: the same with targets re-paired across users.

Position alone shapes attention (recent items, the first item) and relevance (recent items are more
often relevant), which the re-pairing baseline does not remove; ``relevance_corr_partial`` therefore
first subtracts, from attention and relevance alike, their mean over the users whose history has the
same length at the same position -- what is left is the part no positional pattern can explain.
"""

from __future__ import annotations

import numpy as np
import torch

from pauserec import data
from pauserec.model.catalog import Catalog
from probes.activations import permutation


def within_user_corr(att: np.ndarray, rel: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Pooled correlation of (..., users, items) attention with (users, items) relevance after
    centring both within each user over the valid items; returns one value per leading index."""
    n = valid.sum(-1, keepdims=True).clip(min=1)
    a = (att - (att * valid).sum(-1, keepdims=True) / n) * valid
    r = (rel - (rel * valid).sum(-1, keepdims=True) / n) * valid
    num = (a * r).sum((-2, -1))
    den = np.sqrt((a * a).sum((-2, -1)) * (r * r).sum())
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


class Relevance:
    """Relevance of each user's history items to any target, vectorised over users."""

    def __init__(self, catalog: Catalog, examples: list[data.Example], width: int):
        self.codes = catalog.codes[:, :-1] if catalog.n_levels > 1 else catalog.codes  # drop de-dup
        names = sorted({c for it in catalog.items for c in _cats(it.categories)})
        index = {c: i for i, c in enumerate(names)}
        self.cats = np.zeros((len(catalog), max(1, len(names))), dtype=np.float32)
        for i, it in enumerate(catalog.items):
            self.cats[i, [index[c] for c in _cats(it.categories)]] = 1.0
        self.hist = np.zeros((len(examples), width), dtype=np.int64)
        self.valid = np.zeros((len(examples), width), dtype=bool)
        for u, ex in enumerate(examples):
            self.hist[u, : len(ex.history)] = ex.history
            self.valid[u, : len(ex.history)] = True

    def prefix(self, targets: np.ndarray) -> np.ndarray:
        same = self.codes[self.hist] == self.codes[targets][:, None, :]  # (users, items, levels)
        return np.cumprod(same, -1).sum(-1).astype(float)

    def category(self, targets: np.ndarray) -> np.ndarray:
        h, t = self.cats[self.hist], self.cats[targets][:, None, :]  # (users, items, n_cats)
        both = (h * t).sum(-1)
        union = h.sum(-1) + t.sum(-1) - both
        return np.where(union > 0, both / np.where(union > 0, union, 1), 0.0)


def by_position(x: np.ndarray, cell: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``x`` (..., users, items) minus its mean over the valid entries of the same ``cell`` (users,
    items) -- here (history length, position): a cell's mean is the purely positional part."""
    out = x.copy()
    for c in np.unique(cell[valid]):
        sel = valid & (cell == c)
        out[..., sel] -= x[..., sel].mean(-1, keepdims=True)
    return out


def _cats(text: str) -> set[str]:
    return {c.strip().lower() for c in text.split(",") if c.strip()}


def history_attention(hist: dict[int, list[torch.Tensor]], width: int) -> np.ndarray:
    """Per-batch (batch, nq, n_hist) masses -> (n_layers, users, nq, width), zero-padded."""
    out = []
    for layer in sorted(hist):
        parts = [torch.nn.functional.pad(h.cpu(), (0, width - h.shape[-1])) for h in hist[layer]]
        out.append(torch.cat(parts).numpy())
    return np.stack(out)


def relevance_rows(
    hist: dict[int, list[torch.Tensor]],
    examples: list[data.Example],
    catalog: Catalog,
    k: int,
    n_perm: int,
    seed: int,
) -> list[dict]:
    """``relevance_corr`` (+ ``_baseline``, ``_p``) per relation, query group and layer (and over
    the layer-mean attention, ``layer`` empty). Query groups: ``pause`` (mean over pauses), ``sid``
    (the position that generates the first SID token)."""
    width = max(len(ex.history) for ex in examples)
    att = history_attention(hist, width)  # (n_layers, users, nq, width)
    groups = {"sid": att[:, :, k]}
    if k:
        groups["pause"] = att[:, :, :k].mean(2)
    rel = Relevance(catalog, examples, width)
    targets = np.array([ex.target for ex in examples])
    rng = np.random.default_rng(seed)
    perms = [permutation(len(targets), rng) for _ in range(n_perm)]
    cell = rel.valid.sum(1, keepdims=True) * width + np.arange(width)[None]  # (length, position)
    rows = []
    for relation in ("prefix", "category"):
        score = getattr(rel, relation)
        observed, shuffled = score(targets), [score(targets[p]) for p in perms]
        for query, a in groups.items():  # a: (n_layers, users, width)
            a = np.concatenate([a, a.mean(0, keepdims=True)])  # last entry: layer-mean attention
            for metric, adjust in (
                ("relevance_corr", lambda x: x),
                ("relevance_corr_partial", lambda x: by_position(x, cell, rel.valid)),
            ):
                rows += _corr_rows(
                    metric,
                    adjust(a),
                    adjust(observed),
                    [adjust(s) for s in shuffled],
                    rel.valid,
                    {"relation": relation, "query": query},
                )
    return rows


def _corr_rows(
    metric: str,
    att: np.ndarray,
    observed: np.ndarray,
    shuffled: list[np.ndarray],
    valid: np.ndarray,
    common: dict,
) -> list[dict]:
    obs = within_user_corr(att, observed, valid)  # (n_layers + 1,)
    base = (
        np.stack([within_user_corr(att, s, valid) for s in shuffled])
        if shuffled
        else np.full((1, len(obs)), np.nan)
    )
    p = (1 + (base >= obs).sum(0)) / (1 + len(shuffled))
    rows = []
    for i in range(len(obs)):
        at = {**common, "layer": i if i < len(obs) - 1 else None}
        rows += [
            {**at, "metric": metric, "value": float(obs[i])},
            {**at, "metric": f"{metric}_baseline", "value": float(np.mean(base[:, i]))},
            {**at, "metric": f"{metric}_p", "value": float(p[i])},
        ]
    return rows
