"""Counting baselines: most-popular items, and a first-order item-transition (Markov) model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from pauserec import data
from pauserec.errors import UserError
from pauserec.evaluation.baselines._common import (
    Examples,
    Fitted,
    check_request,
    rank_histories,
    training_sequences,
)


def item_counts(seqs: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """(n_items,) how often each item occurs in ``seqs``."""
    flat = np.fromiter((i for s in seqs for i in s), dtype=np.int64)
    return np.bincount(flat, minlength=n_items)


def transition_counts(seqs: Sequence[Sequence[int]], n_items: int) -> sp.csr_matrix:
    """(n_items, n_items) sparse: entry (a, b) = how often item b directly follows item a in
    ``seqs``."""
    src = np.fromiter((a for s in seqs for a in s[:-1]), dtype=np.int64)
    dst = np.fromiter((b for s in seqs for b in s[1:]), dtype=np.int64)
    ones = np.ones(len(src), dtype=np.float64)
    return sp.csr_matrix((ones, (src, dst)), shape=(n_items, n_items))  # duplicates are summed


@dataclass
class Counted(Fitted):
    """What both counting baselines keep: the training counts and the popularity order from them
    (each baseline declares its own ``exclude_history`` option, read by ``_info``)."""

    counts: Any = field(default=None, init=False, repr=False)  # (n_items,) training counts

    def _count(self, ds: data.Dataset, train: Examples) -> list[list[int]]:
        """The training sequences; sets ``counts`` and ``order`` (most popular first, ties by
        item index)."""
        seqs = training_sequences(train)
        self.counts = item_counts(seqs, len(ds.items))
        self.order = np.argsort(-self.counts, kind="stable")
        return seqs

    def _info(self, seed: int, train: Examples, start: float, **options: Any) -> dict[str, Any]:
        """``info`` after a fit that began at ``start`` (``time.perf_counter``)."""
        return {
            "baseline": self.name,
            **options,
            "exclude_history": self.exclude_history,
            "seed": seed,
            "train_examples": len(train),
            "fit_seconds": time.perf_counter() - start,
        }

    def _check(self, top_k: int) -> None:
        check_request(None if self.counts is None else len(self.counts), top_k)


@dataclass
class Popularity(Counted):
    """Most-popular items: counts of every interaction in the training sequences; ties by item
    index."""

    name: str = field(default="popularity", init=False)
    exclude_history: bool = False  # never recommend an item already in the user's history

    def fit(
        self, ds: data.Dataset, train: Examples, seed: int = 0, valid: Examples | None = None
    ) -> Popularity:  # nothing to tune: valid unused
        start = time.perf_counter()
        self._count(ds, train)
        self.info = self._info(seed, train, start)
        return self

    def recommend_scored(
        self, histories: Sequence[Sequence[int]], top_k: int = 20
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items, scores) (n_users, top_k), best first; the score is the training count."""
        self._check(top_k)
        if not self.exclude_history:  # the same list for everyone
            items = np.tile(self.order[:top_k], (len(histories), 1))
            return items, self.counts[items].astype(np.float64)
        counts = self.counts.astype(np.float64)[None, :]
        return rank_histories(
            lambda hs: np.repeat(counts, len(hs), 0),
            histories,
            top_k,
            self.order,
            exclude_history=True,
        )


@dataclass
class Markov(Counted):
    """First-order item transitions, scored from the last ``window`` history items.

    ``P(b | a)`` = how often b directly follows a in the training sequences, over how often a is
    followed by anything. A user's score for item b is ``sum_l decay**(l-1) * P(b | h[-l])`` over
    the ``window`` most recent history items ``h[-1], h[-2], ...``; items scoring equal (including
    every item no history item leads to) are ordered by training popularity.
    """

    name: str = field(default="markov", init=False)
    window: int = 3  # most recent history items that vote
    decay: float = 0.5  # weight of the l-th most recent item: decay ** (l - 1)
    exclude_history: bool = False  # never recommend an item already in the user's history
    # (n_items, n_items) sparse counts
    transitions: Any = field(default=None, init=False, repr=False)

    def fit(
        self, ds: data.Dataset, train: Examples, seed: int = 0, valid: Examples | None = None
    ) -> Markov:  # nothing to tune: valid unused
        if self.window < 1 or not 0 < self.decay <= 1:
            raise UserError(
                f"markov needs window >= 1 and 0 < decay <= 1, got {self.window}, {self.decay}"
            )
        start = time.perf_counter()
        seqs = self._count(ds, train)
        self.transitions = transition_counts(seqs, len(ds.items))
        # (n_items,) transitions leaving each item
        out = np.asarray(self.transitions.sum(1)).ravel()
        self._probs = sp.diags(1.0 / np.maximum(out, 1.0)) @ self.transitions  # row-normalised, csr
        self.info = self._info(seed, train, start, window=self.window, decay=self.decay)
        return self

    def scores(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """(n_users, n_items) transition scores (0 where no recent history item leads)."""
        rows, cols, vals = [], [], []
        for u, hist in enumerate(histories):
            recent = list(hist)[::-1][: self.window]  # most recent first
            rows += [u] * len(recent)
            cols += recent
            vals += [self.decay**age for age in range(len(recent))]
        n = self.transitions.shape[0]
        votes = sp.csr_matrix((vals, (rows, cols)), shape=(len(histories), n))  # (n_users, n_items)
        return (votes @ self._probs).toarray()

    def recommend_scored(
        self, histories: Sequence[Sequence[int]], top_k: int = 20
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items, scores) (n_users, top_k), best first; the score is the transition score."""
        self._check(top_k)
        return rank_histories(self.scores, histories, top_k, self.order, self.exclude_history)
