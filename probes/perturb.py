"""Controlled rationale perturbations and rationale-quality scores (used by :mod:`probes.rationale`
at inference time and :mod:`probes.rationale_train` at training time).

Perturbations (all seeded, all on whitespace-separated words):

* ``drop10`` / ``drop30`` / ``drop50`` (any ``dropNN``): each word dropped with probability NN%;
* ``word_shuffle``: the words in a random order; ``sentence_shuffle``: the sentences (never the
  identity when two differ);
* ``paraphrase``: rewritten by a language model (computed by the caller: local or ``openai``);
* ``swap``: another user's rationale (a random derangement);
* ``empty``: no rationale; ``filler``: neutral filler words, as many as the rationale has;
* ``oracle``: names the target's title and categories -- an upper bound, flagged
  (:data:`UPPER_BOUND`).

Quality (:func:`quality`): ``length`` (words), ``leakage`` (share of the target's title/category
content words the rationale contains) and ``agreement`` (share of the rationale's content words
found in the history's titles/categories).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from pauserec.data import Example
from pauserec.errors import UserError
from pauserec.model.catalog import Catalog
from probes.qa import words

PERTURBATIONS = (
    "drop10",
    "drop30",
    "drop50",
    "word_shuffle",
    "sentence_shuffle",
    "paraphrase",
    "swap",
    "empty",
    "filler",
    "oracle",
)
UPPER_BOUND = frozenset({"oracle"})  # not a degradation: an upper bound on what a rationale can do
FILLER = (
    "this sentence is only neutral filler text and it carries no information of any kind for "
    "the task at hand"
).split()
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or s that the their these this "
    "to was were which will with user users item items next recently bought latest should fit "
    "interests likely".split()
)


def word_dropout(text: str, p: float, rng: np.random.Generator) -> str:
    ws = text.split()
    keep = rng.random(len(ws)) >= p
    return " ".join(w for w, k in zip(ws, keep) if k)


def _shuffled(parts: list[str], rng: np.random.Generator) -> list[str]:
    """A random order of ``parts``, not the original one unless every order is the same."""
    if len(set(parts)) < 2:
        return list(parts)
    while True:
        out = [parts[i] for i in rng.permutation(len(parts))]
        if out != parts:
            return out


def word_shuffle(text: str, rng: np.random.Generator) -> str:
    return " ".join(_shuffled(text.split(), rng))


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def sentence_shuffle(text: str, rng: np.random.Generator) -> str:
    return " ".join(_shuffled(sentences(text), rng))


def swap(texts: Sequence[str], rng: np.random.Generator) -> list[str]:
    """Every text replaced by another position's text (a random cyclic derangement)."""
    n = len(texts)
    if n < 2:
        raise UserError("the swap perturbation needs at least two users")
    order = rng.permutation(n)
    out = [""] * n
    for j in range(n):
        out[order[j]] = texts[order[(j + 1) % n]]
    return out


def filler(text: str) -> str:
    """Neutral words, as many as ``text`` has."""
    n = len(text.split())
    return " ".join((FILLER * (n // len(FILLER) + 1))[:n])


def oracle(catalog: Catalog, target: int) -> str:
    item = catalog.items[target]
    cats = f", in {item.categories}" if item.categories else ""
    return f"The user will choose {item.display_title}{cats}."


def check(names: Sequence[str]) -> None:
    bad = [n for n in names if n not in PERTURBATIONS and not re.fullmatch(r"drop\d{1,2}", n)]
    if bad:
        raise UserError(
            f"unknown perturbation(s) {bad} (known: {', '.join(PERTURBATIONS)}, dropNN)"
        )


def apply(
    name: str,
    texts: Sequence[str],
    examples: Sequence[Example],
    catalog: Catalog,
    rng: np.random.Generator,
    paraphrases: Sequence[str] | None = None,
) -> list[str]:
    """Perturbation ``name`` of every text (``paraphrases``: the caller's rewrites, for
    ``paraphrase``)."""
    check([name])
    if m := re.fullmatch(r"drop(\d+)", name):
        return [word_dropout(t, int(m.group(1)) / 100, rng) for t in texts]
    if name == "word_shuffle":
        return [word_shuffle(t, rng) for t in texts]
    if name == "sentence_shuffle":
        return [sentence_shuffle(t, rng) for t in texts]
    if name == "swap":
        return swap(texts, rng)
    if name == "empty":
        return ["" for _ in texts]
    if name == "filler":
        return [filler(t) for t in texts]
    if name == "oracle":
        return [oracle(catalog, ex.target) for ex in examples]
    if paraphrases is None or len(paraphrases) != len(texts):
        raise ValueError("the paraphrase perturbation needs one paraphrase per text")
    return list(paraphrases)


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS}


def quality(text: str, example: Example, catalog: Catalog) -> dict[str, float]:
    """``length``, ``leakage`` and ``agreement`` of one rationale (see the module docstring)."""
    target = catalog.items[example.target]
    said = content_words(text)
    leak = content_words(f"{target.display_title} {target.categories}")
    history = set().union(
        *[
            content_words(f"{catalog.items[i].display_title} {catalog.items[i].categories}")
            for i in example.history
        ]
    )
    return {
        "length": float(len(text.split())),
        "leakage": len(said & leak) / len(leak) if leak else 0.0,
        "agreement": len(said & history) / len(said) if said else 0.0,
    }
