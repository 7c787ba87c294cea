"""Item embeddings -> SID codes by a named method, cached on disk by the embeddings' content and the
config.

* ``rq-kmeans``: residual k-means (:func:`pauserec.sid.kmeans.rq_kmeans`), the workbench's original
  method.
* ``rq-kmeans-balanced``: residual k-means with Sinkhorn-balanced assignment at every level
  (:mod:`pauserec.balanced`).
* ``rq-vae``: an RQ-VAE as in TIGER / LC-Rec (:mod:`pauserec.rqvae`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pauserec.errors import UserError
from pauserec.files import cache_dir

log = logging.getLogger(__name__)
METHODS = ("rq-kmeans", "rq-kmeans-balanced", "rq-vae")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"unknown SID method '{method}' (known: {', '.join(METHODS)})")


def cache_key(method: str, levels: int, size: int, iters: int, epochs: int, seed: int) -> dict:
    """The settings that determine a method's codes (fields a method ignores are left out)."""
    from pauserec.sid import balanced, rqvae

    key: dict = {"method": method, "levels": levels, "size": size, "seed": seed}
    if method == "rq-vae":
        key.update(epochs=epochs, version=rqvae.VERSION)
    else:
        key["iters"] = iters
    if method == "rq-kmeans-balanced":
        key["balance"] = [balanced.SINKHORN_EPS, balanced.SINKHORN_ITERS, balanced.BALANCED_STEPS]
    return key


def compute(
    emb: np.ndarray, method: str, levels: int, size: int, iters: int, epochs: int, seed: int
) -> np.ndarray:
    """Codes ``(n_items, levels)`` without the cache.

    The new methods run on one CPU thread: their codes then do not depend on the machine's core
    count, and on a shared 2-core machine one thread is faster than two (small matrices, no
    contention).
    """
    check_method(method)
    if method == "rq-kmeans":  # unchanged since before methods had a name
        from pauserec.sid.kmeans import rq_kmeans

        return rq_kmeans(emb, levels, size, iters, seed)
    with one_thread():
        if method == "rq-kmeans-balanced":
            from pauserec.sid.balanced import rq_kmeans_balanced

            return rq_kmeans_balanced(emb, levels, size, iters, seed)
        from pauserec.sid.rqvae import train_codes

        return train_codes(emb, levels, size, epochs, seed)


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def codes(
    emb: np.ndarray, method: str, levels: int, size: int, iters: int, epochs: int, seed: int
) -> np.ndarray:
    """Codes ``(n_items, levels)``, read from ``<cache>/sids/<hash>.npy`` when built before."""
    key = cache_key(method, levels, size, iters, epochs, seed)
    digest = hashlib.sha256(np.ascontiguousarray(emb).tobytes())
    digest.update(json.dumps([list(emb.shape), str(emb.dtype), key], sort_keys=True).encode())
    path = cache_dir("sids") / f"{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        log.info("SID codes from cache %s", path)
        return np.load(path)
    start = time.perf_counter()
    out = compute(emb, method, levels, size, iters, epochs, seed)
    log.info("%s codes for %d items in %.1f s", method, len(emb), time.perf_counter() - start)
    _save_npy(path, out)
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
