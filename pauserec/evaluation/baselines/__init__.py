"""Classical sequential-recommendation baselines on the LLM's split, users and metrics.

``popularity`` (most-popular items), ``markov`` (first-order item transitions) and ``sasrec`` (a
compact
SASRec with full-softmax cross-entropy) share one interface::

    model = baselines.make("markov", window=3).fit(ds, data.split(ds)["train"], seed=0)
    items = model.recommend([ex.history for ex in test], top_k=20)  # (n_users, 20), best first
    summary, per_user = baselines.evaluate_baseline(model, test)

Decisions, so numbers stay comparable with the LLM's:

* **Training data.** A baseline learns only from the examples passed to ``fit`` -- normally
  ``data.split(ds)["train"]``, the very targets the LLM trains on (each user's sequence without its
  last two items). The sequences are rebuilt from those examples (:func:`training_sequences`), so
  counts and transitions never see a validation or test target. Passing ``train + valid`` for the
  test evaluation (refitting on the validation item, as many pipelines do) is possible but is *not*
  the default: the LLM never trains on the validation item, and the train-only fit is what
  reproduces the issue's reference numbers (Beauty markov Recall@10: 0.071 train-only vs 0.079 with
  the validation item; reference 0.069).
* **Same footing as the LLM it is compared with.** ``python -m pauserec baseline --max-history H
  --train-targets T`` cuts the split as the LLM's stage did (the experiment passes the values its
  checkpoints record): the same history length, the same training targets (``all``: every prefix of
  the training part; ``last``: one example per user). ``sasrec`` stops early on the validation split
  (``fit(..., valid=...)``), never after a number of seconds.
* **Items already in the history stay rankable** (``exclude_history=False``), as in the LLM's beam
  search, which does not exclude them either. Every baseline takes ``exclude_history=True`` to drop
  them; report both where it matters: on ml-100k (no repeat views) it lifts Recall@10 a lot (markov
  0.120 -> 0.145, SASRec 0.136 -> 0.196), on Beauty a little (markov 0.071 -> 0.073, SASRec 0.083 ->
  0.090).
* **Ties** (items a model scores equally, e.g. every item no recent history item leads to in
  ``markov``) are broken by training popularity, then by item index.
* Seeds and the device are explicit; nothing here changes torch's thread count or global RNG state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from pauserec import data
from pauserec.config import from_dict
from pauserec.errors import UserError
from pauserec.evaluation import metrics
from pauserec.evaluation.baselines._common import Examples, training_sequences
from pauserec.evaluation.baselines.counts import Markov, Popularity
from pauserec.evaluation.baselines.sasrec import SASRec

NAMES = ("popularity", "markov", "sasrec")
CLASSES = {"popularity": Popularity, "markov": Markov, "sasrec": SASRec}
__all__ = [
    "CLASSES",
    "NAMES",
    "Baseline",
    "Markov",
    "Popularity",
    "SASRec",
    "evaluate_baseline",
    "make",
    "training_sequences",
]


class Baseline(Protocol):
    """What every baseline offers (and what the CLI, experiment and report rely on)."""

    name: str

    def fit(
        self, ds: data.Dataset, train: Examples, seed: int = 0, valid: Examples | None = None
    ) -> Baseline:
        """Learn from ``train``; ``valid`` (held-out targets) only for early stopping (SASRec)."""
        ...

    def recommend(self, histories: Sequence[Sequence[int]], top_k: int = 20) -> np.ndarray:
        """(n_users, top_k) item indices, best first."""
        ...


def make(name: str, **options: Any) -> Baseline:
    """An unfitted baseline by name; ``options`` set its fields (unknown keys, wrong types:
    UserError)."""
    if name not in NAMES:
        raise UserError(f"unknown baseline '{name}' (known: {', '.join(NAMES)})")
    return from_dict(CLASSES[name], options)


def evaluate_baseline(
    model: Baseline, examples: Examples, top_k: int = 20
) -> tuple[dict[str, Any], pd.DataFrame]:
    """(summary, per-user frame) of a fitted baseline on ``examples`` (e.g. the test split).

    The summary holds Recall/NDCG@{1,5,10,20} (:func:`pauserec.metrics.summarize`), the model's
    ``info`` (name, options, seed, fit time) and the ranking time; the frame is
    :func:`pauserec.evaluate.per_user_frame` (``top_score``: the baseline's own score of its first
    item).
    """
    from pauserec.decoding import Recommendations  # imports transformers: only when evaluating
    from pauserec.evaluation.evaluate import per_user_frame

    if not examples:
        raise UserError("no examples to evaluate")
    start = time.perf_counter()
    histories = [ex.history for ex in examples]
    scored = getattr(model, "recommend_scored", None)
    if scored is not None:
        items, scores = scored(histories, top_k)
    else:
        items = model.recommend(histories, top_k)
        scores = np.full(items.shape, np.nan)
    seconds = time.perf_counter() - start
    r = metrics.ranks([ex.target for ex in examples], items)
    summary = {
        **getattr(model, "info", {"baseline": model.name}),
        "n_users": len(examples),
        "top_k": top_k,
        **metrics.summarize(r),
        "recommend_seconds": seconds,
    }
    return summary, per_user_frame(examples, r, Recommendations(items, scores, invalid_rate=0.0))
