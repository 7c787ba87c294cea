import math

import numpy as np
import pytest

from pauserec.evaluation import metrics


def test_ranks_are_one_based_and_zero_on_a_miss():
    items = np.array([[7, 3, 9], [1, 2, 3], [5, 6, 4]])
    assert metrics.ranks([7, 3, 8], items).tolist() == [1, 3, 0]


def test_hand_computed_ndcg_and_recall():
    r = np.array([1, 3, 0, 12])
    assert metrics.ndcg_at_k(r, 10).tolist() == pytest.approx([1.0, 1 / math.log2(4), 0.0, 0.0])
    assert metrics.ndcg_at_k(r, 20)[3] == pytest.approx(1 / math.log2(13))
    assert metrics.recall_at_k(r, 1).tolist() == [1, 0, 0, 0]
    assert metrics.recall_at_k(r, 5).tolist() == [1, 1, 0, 0]
    assert metrics.recall_at_k(r, 20).tolist() == [1, 1, 0, 1]


def test_summarize_means_every_k():
    s = metrics.summarize(np.array([1, 3, 0, 12]))
    assert set(s) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (1, 5, 10, 20)}
    assert s["recall@5"] == 0.5 and s["recall@20"] == 0.75
    assert s["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert s["ndcg@1"] == s["recall@1"] == 0.25


def test_properties_on_random_ranks():
    rng = np.random.default_rng(0)
    r = rng.integers(0, 30, size=500)
    for k in (1, 5, 10, 20):
        # NDCG never beats a hit
        assert (metrics.ndcg_at_k(r, k) <= metrics.recall_at_k(r, k)).all()
    assert (np.diff([metrics.summarize(r)[f"recall@{k}"] for k in (1, 5, 10, 20)]) >= 0).all()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        metrics.ranks([1, 2], np.zeros((3, 4)))
