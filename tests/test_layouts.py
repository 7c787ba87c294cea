"""Training layouts: every target of a history in one pass.

* ``exact`` computes the paper's example-by-example loss and gradients (up to float noise) for
  plain, pause and cot examples, with histories truncated to ``max_history`` the same way;
* ``stream`` trains the prefix a stream-format prompt shows at decoding time, for every item;
* the target windows of :func:`pauserec.data.windows` are the examples of
  :func:`pauserec.data.split`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_lcrec
from numeric import close
from pauserec import data
from pauserec.model.prompts import IGNORE, PromptBuilder
from pauserec.training import batches, corpus, loop
from pauserec.training.corpus import Corpus

pytestmark = [pytest.mark.numeric, pytest.mark.usefixtures("one_thread")]
CPU = torch.device("cpu")


def windows_of(tiny_ckpt, max_history: int, train_targets: str, n: int = 12) -> list[data.Window]:
    ds = data.load_dataset("ml-100k")
    return data.windows(ds, max_history, train_targets)[:n]


def loss_and_grads(
    model, corpus_: Corpus, rows
) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    """Summed loss, labelled tokens and gradients of one step laid out as ``rows``."""
    net = loop.LabelledLoss(model)
    model.zero_grad(set_to_none=True)
    batch = batches.collate(corpus_, rows, 0, CPU)
    loss, n = net(
        batch["input_ids"], batch["labels"], batch["attention_mask"], batch["position_ids"]
    )
    loss.backward()
    return (
        loss.detach(),
        int(n),
        {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
    )


@pytest.mark.parametrize("variant", ["plain", "pause", "cot"])
@pytest.mark.parametrize("train_targets", ["all", "windows"])
def test_exact_layout_has_the_loss_and_gradients_of_one_example_at_a_time(
    tiny_ckpt, variant, train_targets
):
    model = tiny_ckpt.model.train()
    builder = PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog)
    # history 3: long users' later targets slide (windows of one target), early ones share start 0
    wins = windows_of(tiny_ckpt, 3, train_targets, n=10)
    n_targets = sum(len(w.items) - w.first for w in wins)
    texts = [f"reason {i} about items" for i in range(n_targets)] if variant == "cot" else None
    per = corpus.recommendation(builder, wins, variant, "example", 2, texts)
    tree = corpus.recommendation(builder, wins, variant, "exact", 2, texts)
    assert len(per) == n_targets and len(tree) == len(wins) and sum(tree.targets) == n_targets
    assert tree.lengths().sum() < per.lengths().sum()  # the shared histories are computed once
    a = loss_and_grads(model, per, list(range(len(per))))
    b = loss_and_grads(model, tree, list(range(len(tree))))
    assert a[1] == b[1] and a[1] > 0
    assert close(b[0], a[0], torch.float32, a[1])
    for name in a[2]:
        assert close(b[2][name], a[2][name], torch.float32, a[1]), name
    # the check has teeth: the same trees with a plain causal mask (branches see each other) differ
    causal = loss_and_grads(
        model, Corpus(tree.ids, tree.labels, trees=[None] * len(tree)), list(range(len(tree)))
    )
    assert any(not close(causal[2][k], a[2][k], torch.float32, 100 * a[1]) for k in a[2])


def test_exact_tree_mask_and_positions_known_answer(tiny_ckpt):
    """One window of three items, history 2: a trunk of two items, two branches."""
    builder = PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog)
    w = data.Window("u", (5, 6, 7), 1)
    c = corpus.recommendation(builder, [w], "plain", "exact")
    t = c.trees[0]
    trunk = len(t.branch) - sum(b >= 0 for b in t.branch)
    first = builder.encode((5,), 6)
    second = builder.encode((5, 6), 7)
    # trunk up to item 0's SID
    sid1 = len(builder.bos) + len(builder.head) + len(builder.item_ids[5])
    assert trunk == sid1 + len(builder.sep) + len(builder.item_ids[6])
    assert c.ids[0] == second.input_ids[:trunk] + first.input_ids[sid1:] + second.input_ids[trunk:]
    assert t.positions() == [
        *range(trunk),
        *range(sid1, len(first.input_ids)),
        *range(trunk, len(second.input_ids)),
    ]
    mask = batches.collate(c, [0], 0, CPU)["attention_mask"][0, 0] == 0  # (T, T) visible
    b0 = trunk  # first branch token
    assert mask[b0, :sid1].all() and not mask[b0, sid1:trunk].any() and mask[b0, b0]
    b1 = trunk + len(first.input_ids) - sid1
    assert mask[b1, :trunk].all() and not mask[b1, b0:b1].any()
    assert c.labels[0][b0] == IGNORE and c.labels[0][b1] == IGNORE  # a branch starts with no target


@pytest.mark.parametrize("variant", ["plain", "pause"])
def test_stream_trains_the_prefix_a_stream_prompt_shows(tiny_ckpt, variant):
    builder = PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog, format="stream")
    wins = windows_of(tiny_ckpt, 4, "windows", n=6)
    c = corpus.recommendation(builder, wins, variant, "stream", 3)
    assert len(c) == len(wins) and c.targets == [len(w.items) - w.first for w in wins]
    for w, ids, labels in zip(wins, c.ids, c.labels):
        labelled = [i for i, y in enumerate(labels) if y != IGNORE]
        assert len(labelled) == sum(len(builder.item_ids[t]) for t in w.items[w.first :])
        for j in range(w.first, len(w.items)):
            prompt = builder.encode(w.items[:j], variant=variant, n_pauses=3)
            start = len(prompt.input_ids)  # the decoder is given exactly this prefix, then the SID
            assert ids[:start] == prompt.input_ids
            sid = builder.item_ids[w.items[j]]
            assert ids[start : start + len(sid)] == sid == labels[start : start + len(sid)]


def test_stream_refuses_cot_and_the_paper_format_is_unchanged(tiny_ckpt):
    stream = PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog, format="stream")
    with pytest.raises(ValueError):
        stream.encode((1, 2), 3, variant="cot", rationale="x")
    paper = PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog)
    e = paper.encode((1, 2), 3, variant="pause", n_pauses=2)
    assert e.segments.count("pause") == 2 and e.input_ids[e.prompt_len - 4] == paper.think_open
    assert e.input_ids[: e.prompt_len - 4][-len(paper.tail) :] == paper.tail


@pytest.mark.parametrize("train_targets", ["all", "last", "windows"])
def test_windows_are_the_examples_of_the_split(tmp_path, train_targets):
    rng = np.random.default_rng(0)
    seqs = {
        str(u): rng.choice(40, size=n, replace=False).tolist()
        for u, n in enumerate([3, 4, 9, 17, 30])
    }
    ds = data.load_dataset(str(write_lcrec(tmp_path, "Mini", seqs)))
    for h in (1, 3, 8):
        wins = data.windows(ds, h, train_targets)
        examples = [ex for w in wins for ex in w.examples()]
        assert examples == data.split(ds, h, train_targets)["train"]
        assert all(len(ex.history) <= h for ex in examples)
        targets = {(ex.user, len(ex.history)) for ex in examples}
        assert len(targets) <= len(examples)
        if train_targets != "last":  # every training item but the first is a target exactly once
            assert len(examples) == sum(len(s) - 3 for s in ds.sequences.values())
        if train_targets == "windows":
            assert all(len(w.items) <= h + 1 and w.first == 1 for w in wins)
            for user, seq in ds.sequences.items():
                got = sorted(t for ex in examples if ex.user == user for t in [ex.target])
                assert got == sorted(seq[1:-2])
