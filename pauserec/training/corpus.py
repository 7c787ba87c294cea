"""Training corpora of every stage, as token-id sequences with their labels.

* :func:`grounding` -- the CPT corpus: every item in both directions, SID -> title / categories /
  (description) and text -> SID, with the loss on the answer part only.
* :func:`with_pauses` -- the same corpus with ``<pause>`` inserted at random positions (pause
  pre-training); pause positions carry no loss.
* :func:`recommendation` -- next-item targets encoded by
  :class:`~pauserec.model.prompts.PromptBuilder` (``plain``, ``pause`` or ``cot``), the one prompt
  shared with evaluation, in one of three layouts (:data:`LAYOUTS`):

  - ``example``: one sequence per (history, target) -- the paper's;
  - ``exact``: one sequence per window of targets that share a history start (see
    :func:`pauserec.data.windows`): the shared history once (the trunk), then for each target its
    own tail, think block and SID (a branch) that attends only to its own prefix of the trunk and to
    itself (a :class:`Tree`: 4-D attention mask, position ids continuing its prefix). Loss and
    gradients equal the ``example`` layout's up to float noise; every target costs its branch, not
    its history;
  - ``stream``: one sequence per window in the ``stream`` prompt format, the loss on every item's
    SID (what SASRec and TIGER train on), with or without a think block before each item. A
    checkpoint trained so reads the ``stream`` format at decoding time too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedTokenizerBase

from pauserec import data
from pauserec.data import Item, Window
from pauserec.errors import UserError
from pauserec.model import prompts
from pauserec.model.catalog import Catalog
from pauserec.model.prompts import IGNORE, PromptBuilder, format_of
from pauserec.registry import PAPER_PAUSES

LAYOUTS = ("example", "exact", "stream")


@dataclass(frozen=True)
class Tree:
    """The attention structure of an ``exact`` sequence: the trunk (``branch`` -1) is causal; a
    branch token sees the first ``seen`` trunk tokens and the tokens of its own branch up to itself,
    and its position id is ``seen`` + its offset in the branch."""

    branch: tuple[int, ...]  # per token: -1 (trunk) or the branch index
    seen: tuple[int, ...]  # per token: trunk tokens visible (a trunk token: its own index + 1)

    def positions(self) -> list[int]:
        out, start = [], {}
        for i, (b, s) in enumerate(zip(self.branch, self.seen)):
            if b < 0:
                out.append(i)
            else:
                start.setdefault(b, i)
                out.append(s + i - start[b])
        return out


@dataclass
class Corpus:
    """Training sequences (``ids[i]`` and ``labels[i]`` have equal length) and how they were made;
    ``trees[i]`` is the attention structure of an ``exact`` sequence (``None``: plain causal), and
    ``targets[i]`` the number of next-item targets it trains."""

    ids: list[list[int]]
    labels: list[list[int]]
    info: dict = field(default_factory=dict)
    trees: list[Tree | None] | None = None
    targets: list[int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.ids])

    def take(self, keep) -> Corpus:
        """The sequences ``keep`` (indices), with their trees and target counts."""
        pick = lambda xs: None if xs is None else [xs[i] for i in keep]  # noqa: E731
        return Corpus(
            pick(self.ids), pick(self.labels), dict(self.info), pick(self.trees), pick(self.targets)
        )


def grounding(
    tok: PreTrainedTokenizerBase,
    catalog: Catalog,
    items: list[Item],
    desc_words: int = prompts.DESC_WORDS,
    directions: tuple[str, ...] = ("sid2text", "text2sid"),
) -> Corpus:
    """Both directions for every item (``items[i]`` is catalog item ``i``); the loss covers the
    answer (the text and eos, or the SID)."""
    if len(items) > len(catalog):
        raise UserError(
            f"dataset has {len(items)} items but the checkpoint's catalog {len(catalog)}"
        )
    builder = PromptBuilder(tok, catalog)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    before, after, ask = (
        enc(" " + prompts.SID_TO_TEXT[0]),
        enc(prompts.SID_TO_TEXT[1]),
        enc(" " + prompts.TEXT_TO_SID),
    )
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    ids, labels = [], []
    for index, item in enumerate(items):
        sid, text = (
            builder.item_ids[index],
            enc(" " + item.text(prompts.GROUNDING_FIELDS, desc_words)),
        )
        if "sid2text" in directions:
            question, answer = builder.bos + before + sid + after, text + eos
            ids.append(question + answer)
            labels.append([IGNORE] * len(question) + answer)
        if "text2sid" in directions:
            question = builder.bos + text + ask
            ids.append(question + sid)
            labels.append([IGNORE] * len(question) + sid)
    return Corpus(
        ids,
        labels,
        {
            "kind": "grounding",
            "directions": list(directions),
            "items": len(items),
            "desc_words": desc_words,
        },
    )


def with_pauses(corpus: Corpus, pause_id: int, ratio: float, seed: int) -> Corpus:
    """Insert ``round(ratio * len)`` (at least one) pauses at random positions after the first
    token.

    Each pause carries no loss; every other token keeps its label, so the model learns to read past
    them.
    """
    if not 0 < ratio < 1:
        raise UserError(f"pause ratio must be in (0, 1), got {ratio}")
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for seq, lab in zip(corpus.ids, corpus.labels):
        n = max(1, round(ratio * len(seq)))
        # distinct insertion points in 1..len-1: one pause goes right before each
        points = set(
            rng.choice(np.arange(1, len(seq)), size=min(n, len(seq) - 1), replace=False).tolist()
        )
        new_ids, new_lab = [], []
        for pos, (t, y) in enumerate(zip(seq, lab)):
            if pos in points:
                new_ids.append(pause_id)
                new_lab.append(IGNORE)
            new_ids.append(t)
            new_lab.append(y)
        ids.append(new_ids)
        labels.append(new_lab)
    return Corpus(ids, labels, {**corpus.info, "pause_ratio": ratio})


def subset(corpus: Corpus, n: int, seed: int) -> Corpus:
    keep = data.sample(len(corpus), n, seed)
    out = corpus.take(keep)
    out.info.update(available=len(corpus), used=len(keep))
    return out


def recommendation(
    builder: PromptBuilder,
    windows: list[Window],
    variant: str,
    layout: str = "example",
    n_pauses: int = PAPER_PAUSES,
    rationales: list[str] | None = None,
    rationale_loss: bool = True,
) -> Corpus:
    """Every target of ``windows`` in ``layout``; labels on the target SIDs (and, for ``cot``, the
    rationale and ``</think>``). ``rationales`` has one text per target, in the order of the
    windows' examples. ``builder``'s format must be ``stream`` for the ``stream`` layout, ``prompt``
    otherwise."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    if (layout == "stream") != (builder.format == "stream"):
        raise ValueError(
            f"layout {layout} needs the {format_of(layout)} prompt format, got {builder.format}"
        )
    if layout == "stream" and variant == "cot":
        raise UserError(
            "the stream layout has no rationale before each history item: train cot-sft with "
            "--layout exact (every target in one pass, the paper's prompt) or example"
        )
    out = Corpus(
        [],
        [],
        {"kind": "recommendation", "variant": variant, "layout": layout, "windows": len(windows)},
        [] if layout == "exact" else None,
        [],
    )
    at = 0  # index of the window's first target among all targets (for the rationales)
    for w in windows:
        n = len(w.items) - w.first
        texts = rationales[at : at + n] if rationales is not None else [None] * n
        at += n
        if layout == "example":
            for ex, text in zip(w.examples(), texts):
                e = builder.encode(ex.history, ex.target, variant, n_pauses, text, rationale_loss)
                _add(out, e.input_ids, e.labels, 1)
        elif layout == "exact":
            ids, labels, tree = _tree(builder, w, variant, n_pauses, texts, rationale_loss)
            _add(out, ids, labels, n, tree)
        else:
            _add(out, *_stream(builder, w, variant, n_pauses), n)
    out.info["targets"] = sum(out.targets)
    return out


def _add(
    corpus: Corpus, ids: list[int], labels: list[int], targets: int, tree: Tree | None = None
) -> None:
    corpus.ids.append(ids)
    corpus.labels.append(labels)
    corpus.targets.append(targets)
    if corpus.trees is not None:
        corpus.trees.append(tree)


def _tree(
    builder: PromptBuilder,
    w: Window,
    variant: str,
    n_pauses: int,
    texts: list,
    rationale_loss: bool,
) -> tuple[list[int], list[int], Tree]:
    """One window as a trunk (its history, without the prompt's tail) and a branch per target; each
    branch is exactly the end of that target's ``example`` sequence after its history."""
    trunk, seg = builder.prompt(w.items[:-1])
    trunk = trunk[: len(trunk) - len(builder.tail)]
    ends = {}  # history item j -> trunk tokens up to and including its SID
    for pos, name in enumerate(seg[: len(trunk)]):
        if name.startswith("history:"):
            ends[int(name.split(":")[1])] = pos + 1
    ids, labels = list(trunk), [IGNORE] * len(trunk)
    branch, seen = [-1] * len(trunk), list(range(1, len(trunk) + 1))
    for b, (j, text) in enumerate(zip(range(w.first, len(w.items)), texts)):
        e = builder.encode(w.items[:j], w.items[j], variant, n_pauses, text, rationale_loss)
        shared = ends[j - 1]
        if e.input_ids[:shared] != trunk[:shared]:
            # a bug, never bad input
            raise AssertionError("a branch's history differs from the trunk")
        ids += e.input_ids[shared:]
        labels += e.labels[shared:]
        branch += [b] * (len(e.input_ids) - shared)
        seen += [shared] * (len(e.input_ids) - shared)
    return ids, labels, Tree(tuple(branch), tuple(seen))


def _stream(
    builder: PromptBuilder, w: Window, variant: str, n_pauses: int
) -> tuple[list[int], list[int]]:
    """One window in the stream format, labels on the SID of every item from ``w.first`` on."""
    e = builder.encode(w.items[:-1], w.items[-1], variant, n_pauses)
    labels = list(e.labels)
    for pos, name in enumerate(e.segments):
        if name.startswith("history:") and int(name.split(":")[1]) >= w.first:
            labels[pos] = e.input_ids[pos]
    return e.input_ids, labels
