"""Shared fixtures: a tiny-model checkpoint in the real format, and small LC-Rec datasets on
disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pauserec import data
from pauserec.model import (
    checkpoint,  # noqa: E402
    init_ckpt,
)

AMAZON_ROOT = next((p for p in data.default_roots() if (p / "Office").is_dir()), None)
needs_amazon = pytest.mark.skipif(
    AMAZON_ROOT is None, reason="Amazon data (../shared/data/amazon) absent"
)
ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_TRAIN = "-m torch.distributed.run --standalone --nproc-per-node 2 -m pauserec train"


def run_script(*argv: object) -> subprocess.CompletedProcess:
    """``python ARGV`` from the repository root, as a user starts it: one thread, offline, a bare
    ``PATH``, the checkout on ``PYTHONPATH``; output captured, 10 minutes at most."""
    env = {
        "OMP_NUM_THREADS": "1",
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    cmd = [sys.executable, *map(str, argv)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def probe_argv(ckpt: Path, out: Path, flags: str = "", *more: str) -> list[str]:
    """A probe's command line: ``CKPT --out OUT``, the constant ``flags`` written as on a shell line
    (split at spaces), then ``more`` word for word."""
    return [str(ckpt), "--out", str(out), *flags.split(), *more]


def train_in_two_processes(args: list[str]) -> subprocess.CompletedProcess:
    """``python -m pauserec train ARGS`` under torchrun: two CPU processes of one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, *TORCHRUN_TRAIN.split(), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def tiny_ckpt_path(tmp_path_factory) -> Path:
    """An untrained tiny-Llama checkpoint on ml-100k, written by the real ``init-ckpt`` command."""
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    flags = "--backbone tiny --dataset ml-100k --sid-method rq-kmeans-balanced".split()
    init_ckpt.main([*flags, "--out", str(out)])
    return out


@pytest.fixture()
def tiny_ckpt(tiny_ckpt_path) -> checkpoint.Checkpoint:
    return checkpoint.load(tiny_ckpt_path)


def write_lcrec(root: Path, name: str, sequences: dict, items: dict | None = None) -> Path:
    """A small dataset in LC-Rec layout (``X.inter.json`` + ``X.item.json``)."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    n_items = 1 + max(i for seq in sequences.values() for i in seq)
    items = items or {
        str(i): {
            "title": f"Item &amp; thing {i}",
            "description": "",
            "brand": "Acme",
            "categories": f"Cat {i % 3}, Sub {i % 5}",
        }
        for i in range(n_items)
    }
    (d / f"{name}.inter.json").write_text(json.dumps(sequences))
    (d / f"{name}.item.json").write_text(json.dumps(items))
    return d


@pytest.fixture()
def lcrec(tmp_path):
    """Factory: ``lcrec(sequences, items=None) -> directory``."""
    return lambda sequences, items=None, name="Mini": write_lcrec(tmp_path, name, sequences, items)


# session fixture: a real llama.cpp server (tests/servers.py)
from servers import llama_server  # noqa: E402,F401


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are all overhead: one intra-op thread is several times faster than two on a busy
    2-core machine. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
