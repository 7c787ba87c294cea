"""The loop's throughput features on the tiny fixture: packing (same loss and gradients as one
sequence at a time), token-budget steps, plans that are pure functions of (seed, epoch), packed
training equal to unpacked, and torch.compile over packed rows."""

import dataclasses
import importlib.util
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_script, train_in_two_processes
from numeric import close, tolerance
from pauserec.model import checkpoint
from pauserec.model.device import autocast
from pauserec.model.prompts import IGNORE
from pauserec.training import batches, loop, train
from pauserec.training.corpus import Corpus

pytestmark = pytest.mark.numeric  # layouts of one computation: also run under AVX2 kernels

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model is all overhead: one thread is several times faster than two on shared
    cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_corpus(lengths, vocab: int, seed: int = 0) -> Corpus:
    """Random sequences labelled everywhere but a prefix, so a label leaking across sequences (the
    first token of one as a target of the one before) would add a term to the loss."""
    rng = np.random.default_rng(seed)
    ids = [rng.integers(4, vocab, size=n).tolist() for n in lengths]
    labels = [[IGNORE] * (n // 3) + s[n // 3 :] for s, n in zip(ids, lengths)]
    for lab, s in zip(labels, ids):
        lab[0] = s[0]  # a labelled first token: never a target, packed or not
    return Corpus(ids, labels)


def loss_and_grads(net, model, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, n = net(
        batch["input_ids"], batch["labels"], batch["attention_mask"], batch["position_ids"]
    )
    loss.backward()
    return loss.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_gives_the_loss_and_gradients_of_one_sequence_at_a_time(tiny_ckpt, attn):
    model = tiny_ckpt.model.train()
    model.set_attn_implementation(attn)
    net = loop.LabelledLoss(model)
    data = toy_corpus([7, 19, 4, 12], model.config.vocab_size)
    rows = batches.pack(range(4), data.lengths(), pack_len=64)
    assert rows == [[1, 3, 0, 2]]  # longest first, all in one row
    packed = batches.collate(data, rows, pad_id=0, device=CPU)
    assert packed["attention_mask"] is None and packed["input_ids"].shape == (1, 42)
    assert packed["position_ids"][0].tolist() == [*range(19), *range(12), *range(7), *range(4)]
    assert packed["labels"][0, [0, 19, 31, 38]].eq(IGNORE).all()  # no target starts a sequence
    loss, n, grads = loss_and_grads(net, model, packed)
    singles = [loss_and_grads(net, model, batches.collate(data, [[i]], 0, CPU)) for i in range(4)]
    assert (
        n
        == packed["labelled"]
        == sum(s[1] for s in singles)
        == sum(k - k // 3 for k in (7, 19, 4, 12))
    )
    assert close(loss, sum(s[0] for s in singles), torch.float32, int(n))
    for name, g in grads.items():
        assert close(g, sum(s[2][name] for s in singles), torch.float32, int(n)), name
    # the check has teeth: the same row with attention across sequences gives another loss
    crossing = net(packed["input_ids"], packed["labels"])[0].detach()
    assert abs(float(crossing - loss)) > 10 * tolerance(torch.float32, int(n)) * abs(float(loss))


def test_packed_padded_rows_equal_unpacked_padded_rows(tiny_ckpt):
    """Several rows of different widths: the padding tail of a packed row changes nothing either."""
    model = tiny_ckpt.model.train()
    net = loop.LabelledLoss(model)
    data = toy_corpus([30, 11, 9, 25, 5, 17, 3], model.config.vocab_size, seed=1)
    rows = batches.pack(range(7), data.lengths(), pack_len=32)
    assert sorted(i for r in rows for i in r) == list(range(7)) and len(rows) < 7
    assert all(data.lengths()[r].sum() <= 32 for r in rows)
    packed = batches.collate(data, rows, 0, CPU)
    plain = batches.collate(data, range(7), 0, CPU)
    assert plain["position_ids"] is None and plain["attention_mask"] is not None
    assert (
        packed["tokens"] == plain["tokens"] == 100
        and packed["input_ids"].numel() < plain["input_ids"].numel()
    )
    a, b = loss_and_grads(net, model, packed), loss_and_grads(net, model, plain)
    assert a[1] == b[1] and close(a[0], b[0], torch.float32, int(a[1]))
    assert all(close(a[2][k], b[2][k], torch.float32, int(a[1])) for k in a[2])


def test_packed_rows_joined_into_one_row_give_the_same_loss(tiny_ckpt):
    """What LabelledLoss does for flash-attention (varlen reads one row): joining rows end to end,
    padding tails included, keeps every sequence and every target."""
    model = tiny_ckpt.model.train()
    net = loop.LabelledLoss(model)
    data = toy_corpus([30, 11, 9, 25, 5, 17, 3], model.config.vocab_size, seed=2)
    rows = batches.collate(data, batches.pack(range(7), data.lengths(), 32), 0, CPU)
    assert rows["input_ids"].shape[0] > 1
    joined = {k: rows[k].reshape(1, -1) for k in ("input_ids", "labels", "position_ids")}
    a, b = net(**joined), net(rows["input_ids"], rows["labels"], position_ids=rows["position_ids"])
    assert a[1] == b[1] == rows["labelled"] and close(a[0], b[0], torch.float32, rows["labelled"])


def test_pack_fits_rows_and_is_deterministic():
    lengths = np.random.default_rng(0).integers(5, 200, size=300)
    idx = np.random.default_rng(1).permutation(300)[:100]
    rows = batches.pack(idx, lengths, 256)
    assert sorted(i for r in rows for i in r) == sorted(idx.tolist())
    assert all(lengths[r].sum() <= 256 for r in rows)
    assert sum(lengths[r].sum() for r in rows) > 0.9 * 256 * len(rows)  # rows come out nearly full
    assert rows == batches.pack(idx.copy(), lengths, 256)
    assert batches.pack([3, 1], lengths, 0) == [[3], [1]]  # unpacked: a row per sequence
    # too long: a row of its own
    assert batches.pack([0, 1], np.array([300, 10]), 256) == [[0], [1]]
    for seed in range(20):  # the loop's default width, the step's longest: never more padded tokens
        step = np.random.default_rng(seed).choice(300, size=16, replace=False)
        rows = batches.pack(step, lengths, int(lengths[step].max()))
        assert len(rows) * max(lengths[r].sum() for r in rows) <= 16 * lengths[step].max()


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("bucket", [True, False])
def test_token_budget_plan_is_a_pure_function_of_seed_and_epoch(pack, bucket):
    lengths = np.random.default_rng(0).integers(5, 200, size=1000)
    lengths[7] = 5000  # longer than the budget: a step of its own

    def plan(epoch, seed=1):
        return batches.plan(lengths, 16, seed, epoch, bucket, batch_tokens=2048, pack=pack)

    steps = plan(2)
    assert sorted(np.concatenate(steps).tolist()) == list(range(1000))
    assert all(np.array_equal(a, b) for a, b in zip(steps, plan(2))) and len(steps) == len(plan(2))
    assert [s.tolist() for s in plan(3)] != [s.tolist() for s in steps]
    assert [s.tolist() for s in plan(2, seed=2)] != [s.tolist() for s in steps]
    cost = [(lengths[s].sum() if pack else len(s) * lengths[s].max()) for s in steps]
    assert all(c <= 2048 for c, s in zip(cost, steps) if len(s) > 1)
    assert [s.tolist() for s in steps if lengths[s].max() > 2048] == [[7]]
    if bucket:  # the budget is used: steps are nearly full
        assert np.mean(cost) > 0.8 * 2048
    assert all(len(s) >= 3 for s in batches.plan(lengths, 16, 1, 0, bucket, 3, 2048, pack))


def test_batch_size_plans_are_unchanged():
    """The sequence-count plan is the one earlier runs trained with (same steps for the same
    seed)."""
    lengths = np.random.default_rng(0).integers(5, 200, size=100)
    steps = batches.plan(lengths, 16, seed=3, epoch=1)
    assert [s[:3].tolist() for s in steps[:2]] == [[54, 9, 21], [59, 45, 22]]
    assert [len(s) for s in steps] == [16, 16, 16, 16, 4, 16, 16]


def test_steps_find_their_place_across_epochs_of_different_sizes():
    lengths = np.random.default_rng(0).integers(5, 500, size=400)
    cfg = loop.LoopConfig(epochs=3, batch_tokens=1500, pack=True, pack_len=512, bucket=False)
    steps = loop.Steps(lengths, cfg)
    per_epoch = [len(steps.epoch(e)) for e in range(3)]
    assert len(set(per_epoch)) > 1 and steps.ends.tolist() == np.cumsum(per_epoch).tolist()
    flat = [s for e in range(3) for s in steps.epoch(e)]
    for step in (0, per_epoch[0] - 1, per_epoch[0], int(steps.ends[-1]) - 1):
        rows = steps.rows(step)
        assert sorted(i for r in rows for i in r) == sorted(flat[step].tolist())
        assert all(lengths[r].sum() <= 512 for r in rows)
    # rows as wide as a step's longest
    auto = loop.Steps(lengths, dataclasses.replace(cfg, pack_len=0))
    for rows in (auto.rows(step) for step in range(20)):
        assert all(lengths[r].sum() <= max(lengths[i] for r in rows for i in r) for r in rows)
    assert sum(len(r) > 1 for step in range(20) for r in auto.rows(step)) > 10
    shares = [loop.Steps(lengths, cfg, rank, 2).rows(5) for rank in (0, 1)]
    assert sorted(i for s in shares for r in s for i in r) == sorted(
        loop.Steps(lengths, cfg, 0, 2).epoch(0)[5].tolist()
    )


FAST = (
    "--stage sft --n-train 32 --epochs 1 --no-progress --device cpu --save-every 0 --log-every 1"
    " --dtype fp32 --lr 3e-3 --warmup-ratio 0"
).split()


def test_packed_training_trains_the_same_steps_with_the_same_losses(tiny_ckpt_path, tmp_path):
    """Packing changes the layout only: through the real command, the same steps train the same
    sequences, and every step's loss agrees up to float noise (the weights are compared through
    their gradients in the next test: Adam amplifies float noise in near-zero gradients, so weights
    after Adam steps are not mathematically equal quantities)."""
    runs, logs = {}, {}
    for name, extra in [("plain", []), ("packed", ["--pack", "--pack-len", "256"])]:
        where = ["--from", str(tiny_ckpt_path), "--out", str(tmp_path / name)]
        runs[name] = train.main([*FAST, "--batch-size", "8", *where, *extra])
        logs[name] = pd.read_csv(tmp_path / name / "train_log.csv")
    t = [r.meta["timings"]["sft"] for r in runs.values()]
    assert t[0]["steps"] == t[1]["steps"] == 4 and t[0]["tokens"] == t[1]["tokens"]
    assert t[0]["labelled_tokens"] == t[1]["labelled_tokens"]
    labelled_per_step = t[0]["labelled_tokens"] / 4
    a, b = logs["plain"]["loss"].to_numpy(), logs["packed"]["loss"].to_numpy()
    assert len(a) == 4 and close(a, b, torch.float32, labelled_per_step)
    assert a[-1] < a[0]  # it trained
    assert runs["packed"].meta["configs"]["sft"]["pack"] is True


def test_every_step_of_a_packed_plan_has_the_loss_and_gradients_of_the_unpacked_one(tiny_ckpt):
    """The loop's real plan (seeded steps, bucketing, packing to the step's longest sequence): on
    the same weights, each step's packed rows give the loss and gradients of its unpacked rows."""
    model = tiny_ckpt.model.train()
    net = loop.LabelledLoss(model)
    data = toy_corpus(
        np.random.default_rng(3).integers(5, 60, size=48).tolist(), model.config.vocab_size
    )
    cfg = loop.LoopConfig(epochs=1, batch_size=8, pack=True, seed=1)
    packed = loop.Steps(data.lengths(), cfg)
    plain = loop.Steps(data.lengths(), dataclasses.replace(cfg, pack=False))
    # rows really differ
    assert [len(r) for r in plain.rows(0)] == [1] * 8 and len(packed.rows(0)) < 8
    for step in range(3):
        a = loss_and_grads(net, model, batches.collate(data, packed.rows(step), 0, CPU))
        b = loss_and_grads(net, model, batches.collate(data, plain.rows(step), 0, CPU))
        n = int(a[1])
        assert a[1] == b[1] and close(a[0], b[0], torch.float32, n)
        for name in a[2]:
            assert close(a[2][name], b[2][name], torch.float32, n), (step, name)


def test_token_budget_steps_train_through_main(tiny_ckpt_path, tmp_path):
    where = ["--from", str(tiny_ckpt_path), "--out", str(tmp_path / "budget")]
    ckpt = train.main([*FAST, "--batch-tokens", "500", "--pack", *where])
    t = ckpt.meta["timings"]["sft"]
    # about 4 sequences of ~120 tokens a step
    assert t["steps"] >= 8 and t["tokens"] / t["steps"] <= 500


@pytest.mark.slow
@pytest.mark.skipif(
    bool(os.environ.get("ATEN_CPU_CAPABILITY")),
    reason=(
        "inductor generates code for the processor it finds, not for a forced ATEN_CPU_CAPABILITY: "
        "the mix gave a NaN loss on an AVX-512 machine forced to avx2; a real AVX2 machine runs "
        "this test"
    ),
)
def test_compiled_packed_step_matches_eager(tiny_ckpt):
    model = tiny_ckpt.model.train()
    data = toy_corpus([7, 19, 4, 12, 9], model.config.vocab_size)
    batch = batches.collate(data, batches.pack(range(5), data.lengths(), 24), 0, CPU)
    assert batch["position_ids"] is not None and batch["input_ids"].shape[0] == 3
    eager = loss_and_grads(loop.LabelledLoss(model), model, batch)
    compiled = loss_and_grads(torch.compile(loop.LabelledLoss(model), dynamic=True), model, batch)
    n = int(eager[1])
    assert close(eager[0], compiled[0], torch.float32, n)
    assert all(close(eager[2][k], compiled[2][k], torch.float32, n) for k in eager[2])


@pytest.mark.slow
def test_two_processes_with_packed_token_budget_steps_match_one(tiny_ckpt_path, tmp_path):
    budget = "--pack --pack-len 256 --batch-tokens 1000 --max-steps 3".split()
    args = [*FAST, *budget, "--from", str(tiny_ckpt_path)]
    proc = train_in_two_processes([*args, "--out", str(tmp_path / "ddp")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train.main([*args, "--out", str(tmp_path / "one")])
    two = checkpoint.load(tmp_path / "ddp")
    assert two.meta["timings"]["sft"]["steps"] == one.meta["timings"]["sft"]["steps"] == 3
    n = one.meta["timings"]["sft"]["labelled_tokens"] / 3
    losses = [
        pd.read_csv(tmp_path / name / "train_log.csv")["loss"].to_numpy() for name in ("one", "ddp")
    ]
    assert len(losses[0]) == 3 and close(losses[1], losses[0], torch.float32, n)


def bench_train():
    """bench/train.py as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(
        "bench_train", Path(__file__).parents[1] / "bench" / "train.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_bench_counts_model_flops_by_hand(tiny_ckpt):
    """Tiny Llama: d_model 32, 2 layers, 4 heads of 8, 2 kv heads, MLP 64, its word vocabulary
    (tied)."""
    vocab = tiny_ckpt.model.config.vocab_size
    count = bench_train().FlopCounter(tiny_ckpt.model)
    # q, o; k, v; gate, up, down; 2 norms
    per_layer = 32 * 32 * 2 + 32 * 16 * 2 + 3 * 32 * 64 + 2 * 32
    assert (count.dense, count.attn, count.head) == (2 * per_layer + 32, 2 * 4 * 8, 32 * vocab)
    dense, attn, head = 6 * 18592 * 8, 6 * 64 * (3 * 4 + 5 * 6), 6 * 32 * vocab * 4
    assert count(np.array([3, 5]), labelled=4) == dense + attn + head


@pytest.mark.slow
def test_bench_prints_mfu_packing_and_speedup(tiny_ckpt_path):
    flags = (
        "--steps 2 --rounds 1 --warmup 1 --n-seqs 48 --batch-size 8 --pack --device cpu"
        " --dtype fp32 --peak-seconds 0.2"
    )
    proc = run_script("bench/train.py", "--ckpt", tiny_ckpt_path, *flags.split())
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    mfu = re.search(
        r"^mfu: ([0-9.]+) of the measured fp32 matmul peak \(([0-9]+) GFLOP/s\)", out, re.M
    )
    assert mfu and 0 < float(mfu.group(1)) < 1 and int(mfu.group(2)) > 0, out
    for line in ("packing", "speedup per CPU-second", "speedup"):
        assert float(re.search(rf"^{line}: ([0-9.]+)", out, re.M).group(1)) > 0, out


def on_gpu(test):
    """The gpu tier (``make test-gpu``); skipped without a CUDA device."""
    return pytest.mark.gpu(
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test)
    )


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@on_gpu
def test_gpu_autocast_steps_fp32_master_weights_with_fused_adamw(tiny_ckpt, dtype):
    device = torch.device("cuda")
    model = tiny_ckpt.model.to(device).train()
    cfg = loop.LoopConfig(lr=3e-3)
    opt = loop.make_optimizer(model, cfg, device, {})
    assert all(g["fused"] for g in opt.param_groups)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == "fp16")
    net = loop.LabelledLoss(model)
    data = toy_corpus([30, 11, 9, 25, 5, 17, 3], model.config.vocab_size)
    batch = batches.collate(data, batches.pack(range(7), data.lengths(), 32), 0, device)
    losses = []
    for _ in range(5):
        with autocast(device, dtype):
            loss, _ = net(
                batch["input_ids"], batch["labels"], batch["attention_mask"], batch["position_ids"]
            )
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss / batch["labelled"]).backward()
        assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.parameters())
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


@on_gpu
def test_gpu_packed_row_equals_one_sequence_at_a_time(tiny_ckpt):
    device = torch.device("cuda")
    model = tiny_ckpt.model.to(device).train()
    net = loop.LabelledLoss(model)
    data = toy_corpus([7, 19, 4, 12], model.config.vocab_size)
    packed = batches.collate(data, batches.pack(range(4), data.lengths(), 64), 0, device)
    loss, n, grads = loss_and_grads(net, model, packed)
    singles = [
        loss_and_grads(net, model, batches.collate(data, [[i]], 0, device)) for i in range(4)
    ]
    assert close(loss, sum(s[0] for s in singles), torch.float32, int(n))
    assert all(
        close(g, sum(s[2][k] for s in singles), torch.float32, int(n)) for k, g in grads.items()
    )
