import numpy as np
import pytest

from conftest import AMAZON_ROOT, needs_amazon
from pauserec import data, sid, tokens
from pauserec.errors import UserError
from pauserec.sid import kmeans


def test_dedup_makes_every_sid_unique():
    codes = np.array([[0, 1], [0, 1], [2, 3], [0, 1]])
    out = sid.add_dedup_level(codes)
    assert out[:, -1].tolist() == [0, 1, 0, 2]
    assert len(set(map(tuple, out))) == len(out)


def test_rq_kmeans_is_deterministic_and_reduces_residual():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16))
    x = (centres[rng.integers(0, 8, 400)] + 0.05 * rng.normal(size=(400, 16))).astype(np.float32)
    a = kmeans.rq_kmeans(x, levels=2, size=8, iters=30, seed=1)
    b = kmeans.rq_kmeans(x, levels=2, size=8, iters=30, seed=1)
    assert np.array_equal(a, b)
    # level 0 recovers the 8 planted clusters: each cluster maps to exactly one code
    truth = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), 1)
    assert all(len(set(a[truth == c, 0])) == 1 for c in range(8))


def test_report_counts_collisions_and_utilisation():
    codes = sid.add_dedup_level(np.array([[0, 0], [0, 0], [1, 1], [1, 0]]))
    r = sid.report(codes)
    assert (
        r["collision_rate"] == 0.5
        and r["unique_before_dedup"] == 3
        and r["unique_after_dedup"] == 4
    )
    assert r["per_level"][0]["utilisation"] == 1.0 and r["per_level"][0]["entropy_bits"] == 1.0
    assert r["max_items_sharing_prefix"] == [2, 2]


def test_codebook_scales_down_for_small_catalogs():
    assert sid.effective_codebook_size(12_101, 256) == 256
    assert sid.effective_codebook_size(1_682, 256) == 128
    assert sid.effective_codebook_size(40, 256) == 4


def test_movielens_sids_are_unique_and_cached():
    ds = data.load_dataset("ml-100k")
    cfg = sid.SIDConfig()
    codes = sid.build(ds.items, cfg)
    assert codes.shape == (1682, 4) and len(set(map(tuple, codes))) == 1682
    assert np.array_equal(codes, sid.build(ds.items, cfg))


def test_index_round_trip_and_errors(tmp_path):
    ds = data.load_dataset("ml-100k")
    codes = sid.add_dedup_level(np.arange(1682)[:, None] % 7)
    sid.write_index(tmp_path / "sids.json", ds.items, codes, sid.SIDConfig())
    again, dedup = sid.load_index(tmp_path / "sids.json", ds.items)
    assert dedup and np.array_equal(again, codes)
    (tmp_path / "bad.json").write_text('{"1": ["<a_1>"]}')
    with pytest.raises(UserError, match="no entry for item"):
        sid.load_index(tmp_path / "bad.json", ds.items)
    with pytest.raises(UserError, match="not found"):
        sid.load_index(tmp_path / "missing.json", ds.items)
    with pytest.raises(UserError, match="unknown item text field"):
        ds.items[0].text(("title", "colour"))


@needs_amazon
def test_published_beauty_index_gets_a_dedup_level():
    ds = data.load_dataset("beauty", str(AMAZON_ROOT))
    path = AMAZON_ROOT / "Beauty" / "Beauty.index.rqvae.json"
    codes = sid.build(ds.items, sid.SIDConfig(source=str(path)))
    assert codes.shape == (12_101, 5) and len(set(map(tuple, codes))) == 12_101
    assert tokens.sid_string(codes[0][:4]) == "<a_114><b_32><c_79><d_183>"
