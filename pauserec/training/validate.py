"""Learning curves that mean something: Recall@10 on a seeded sample of validation users while a
next-item stage trains, beside the most-popular list's Recall@10 on the same users.

The validation split (each user's second-to-last item) is never trained on; the sample is fixed by
the seed, so every measurement of a stage -- and every stage of a run -- reads the same users.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from pauserec import decoding
from pauserec.evaluation import evaluate, metrics
from pauserec.model.checkpoint import Checkpoint
from pauserec.model.prompts import PromptBuilder

K = 10  # the cut-off of the curves (Recall@K)
BATCH = 64  # users decoded together


class Validator:
    """``validator(model)`` -> {users, recall@10, ndcg@10, popular_recall@10} on fixed validation
    users."""

    def __init__(
        self,
        ckpt: Checkpoint,
        builder: PromptBuilder,
        variant: str,
        n_pauses: int,
        n_users: int,
        seed: int = 0,
        beams: int = 20,
    ):
        self.examples = evaluate.examples_for(ckpt, "valid", n_users, seed)
        self.builder, self.variant, self.n_pauses, self.beams = builder, variant, n_pauses, beams
        self.targets = np.array([ex.target for ex in self.examples])
        popular = np.array([evaluate.popular_items(ckpt, K)] * len(self.examples))
        self.popular = float(metrics.recall_at_k(metrics.ranks(self.targets, popular), K).mean())
        self.trie: decoding.Trie | None = None

    def __call__(self, model: nn.Module) -> dict[str, float]:
        device = decoding.model_device(model)
        if self.trie is None:
            self.trie = decoding.Trie(self.builder.item_ids).to(device)
        recs = decoding.recommend(
            model,
            self.builder,
            [ex.history for ex in self.examples],
            variant=self.variant,
            n_pauses=self.n_pauses,
            top_k=K,
            beams=self.beams,
            batch_size=BATCH,
            trie=self.trie,
        )
        r = metrics.ranks(self.targets, recs.items)
        return {
            "users": len(self.examples),
            f"recall@{K}": float(metrics.recall_at_k(r, K).mean()),
            f"ndcg@{K}": float(metrics.ndcg_at_k(r, K).mean()),
            f"popular_recall@{K}": self.popular,
        }
