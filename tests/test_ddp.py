"""Two gloo processes under torchrun compute what one process computes with the same global
batch."""

import pandas as pd
import pytest
import torch

from conftest import train_in_two_processes
from numeric import close
from pauserec.model import checkpoint
from pauserec.training import train, trainstate

# starts processes
pytestmark = [pytest.mark.slow, pytest.mark.numeric, pytest.mark.usefixtures("one_thread")]


ARGS = [
    "--stage",
    "sft",
    "--n-train",
    "48",
    "--batch-size",
    "8",
    "--epochs",
    "1",
    "--max-steps",
    "4",
    "--lr",
    "3e-3",
    "--warmup-ratio",
    "0",
    "--dtype",
    "fp32",
    "--device",
    "cpu",
    "--no-progress",
    "--save-every",
    "0",
    "--log-every",
    "1",
]


def test_two_processes_match_one_with_the_same_global_batch(tiny_ckpt_path, tmp_path):
    ddp = [*ARGS, "--from", str(tiny_ckpt_path), "--out", str(tmp_path / "ddp")]
    proc = train_in_two_processes(ddp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train.main([*ARGS, "--from", str(tiny_ckpt_path), "--out", str(tmp_path / "one")])
    two = checkpoint.load(tmp_path / "ddp")
    assert (
        two.meta["timings"]["sft"]["world_size"] == 2 and two.meta["timings"]["sft"]["steps"] == 4
    )
    start = checkpoint.load(tiny_ckpt_path).model.state_dict()
    a, b = one.model.state_dict(), two.model.state_dict()
    moved = [name for name in a if not torch.equal(a[name], start[name])]
    assert moved and all(not torch.equal(b[name], start[name]) for name in moved)
    # Every step's loss (on weights the earlier steps updated) agrees up to float noise; the weights
    # themselves are not compared: Adam turns float noise in near-zero gradients into whole steps.
    loss_one = pd.read_csv(tmp_path / "one" / trainstate.LOG_FILE)["loss"].to_numpy()
    loss_two = pd.read_csv(tmp_path / "ddp" / trainstate.LOG_FILE)["loss"].to_numpy()
    per_step = one.meta["timings"]["sft"]["labelled_tokens"] / 4
    assert len(loss_one) == 4 and close(loss_two, loss_one, torch.float32, per_step)
    assert loss_one[-1] < loss_one[0]
