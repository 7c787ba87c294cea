"""The health check every probe runs: once per checkpoint and process, again when the checkpoint
changes."""

from __future__ import annotations

import os
import shutil

from pauserec import decoding
from pauserec.model import checkpoint
from probes import _common


def test_health_is_computed_once_per_checkpoint_and_again_after_a_rewrite(
    tiny_ckpt_path, tmp_path, monkeypatch
):
    path = tmp_path / "sft"
    shutil.copytree(tiny_ckpt_path, path)
    calls = []
    real = decoding.recommend
    monkeypatch.setattr(decoding, "recommend", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(_common, "_HEALTH", {})
    monkeypatch.setattr(_common, "HEALTH_USERS", 4)  # the caching is under test, not the users

    ckpt = checkpoint.load(path)
    ckpt.meta["stage"] = "sft"  # a recommender stage: health applies
    first = _common.health(ckpt)
    assert set(first) >= {"coverage@10", "user_independent"} and len(calls) == 1
    assert _common.health(ckpt) == first and len(calls) == 1
    _common.health(ckpt, seed=1)  # other users: computed
    assert len(calls) == 2

    weights = next(path.glob("*.safetensors"))
    stat = weights.stat()
    # the checkpoint was rewritten
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    _common.health(ckpt)
    assert len(calls) == 3

    ckpt.meta["stage"] = "cpt"  # not a recommender: nothing to check, nothing computed
    assert _common.health(ckpt) == {} and len(calls) == 3
