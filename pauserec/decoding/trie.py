"""The catalog's Semantic IDs as a trie of per-level child tables, so a beam step is a gather."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class Trie:
    """The catalog's SIDs as per-level child tables, so a beam step is a gather, not a Python loop.

    Level ``s`` has ``n_s`` distinct prefixes of ``s`` tokens (level 0: the empty prefix). For
    prefix ``p``: ``tok[s][p]`` (C_s,) child token ids, ``nxt[s][p]`` the child's prefix index at
    level ``s+1`` (at the last level: the item index) and ``ok[s][p]`` which of the C_s slots are
    real.
    """

    def __init__(self, item_ids: Sequence[Sequence[int]]):
        ids = np.asarray(item_ids, dtype=np.int64)  # (n_items, n_levels)
        if ids.ndim != 2:
            raise ValueError("every SID must have the same number of levels")
        self.n_items, self.n_levels = ids.shape
        self.tok, self.nxt, self.ok, self.sizes = [], [], [], []
        # prefix index of each item at the current level
        parent = np.zeros(len(ids), dtype=np.int64)
        for s in range(self.n_levels):
            last = s == self.n_levels - 1
            child = (
                np.arange(len(ids))
                if last
                else np.unique(ids[:, : s + 1], axis=0, return_inverse=True)[1]
            )
            # sorted by parent
            pairs = np.unique(np.stack([parent, ids[:, s], child.ravel()], 1), axis=0)
            n_par = int(parent.max()) + 1
            counts = np.bincount(pairs[:, 0], minlength=n_par)
            slot = np.arange(len(pairs)) - np.repeat(np.cumsum(counts) - counts, counts)
            tok = np.zeros((n_par, counts.max()), dtype=np.int64)
            nxt, ok = np.zeros_like(tok), np.zeros(tok.shape, dtype=bool)
            tok[pairs[:, 0], slot], nxt[pairs[:, 0], slot], ok[pairs[:, 0], slot] = (
                pairs[:, 1],
                pairs[:, 2],
                True,
            )
            self.tok.append(torch.from_numpy(tok))
            self.nxt.append(torch.from_numpy(nxt))
            self.ok.append(torch.from_numpy(ok))
            self.sizes.append(n_par)
            parent = child.ravel()
        self.sizes.append(self.n_items)  # sizes[s] = number of prefixes of s tokens

    def to(self, device: torch.device) -> Trie:
        for tables in (self.tok, self.nxt, self.ok):
            tables[:] = [t.to(device) for t in tables]
        return self
