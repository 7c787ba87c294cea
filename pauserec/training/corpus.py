"""Training corpora of every stage, as token-id sequences with their labels.

* :func:`grounding` -- the CPT corpus: every item in both directions, SID -> title / categories /
  (description) and text -> SID, with the loss on the answer part only.
* :func:`with_pauses` -- the same corpus with ``<pause>`` inserted at random positions (pause pre-training);
  pause positions carry no loss.
* :func:`recommendation` -- next-item windows encoded by :class:`~pauserec.prompts.PromptBuilder`
  (``plain``, ``pause`` or ``cot``), the one prompt shared with evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedTokenizerBase

from pauserec import data
from pauserec.data import Example, Item
from pauserec.errors import UserError
from pauserec.model.catalog import Catalog
from pauserec.model.prompts import IGNORE, PromptBuilder
from pauserec.registry import PAPER_PAUSES

# The grounding templates: (question before the SID, question after the SID) and the answer's fields.
SID_TO_TEXT = ("Describe the item", ".")
TEXT_TO_SID = "Which item is this?"
GROUNDING_FIELDS = ("title", "categories", "year", "description")  # what grounding teaches about an item


@dataclass
class Corpus:
    """Training sequences (``ids[i]`` and ``labels[i]`` have equal length) and how they were made."""

    ids: list[list[int]]
    labels: list[list[int]]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.ids])




def grounding(tok: PreTrainedTokenizerBase, catalog: Catalog, items: list[Item], desc_words: int = 32,
              directions: tuple[str, ...] = ("sid2text", "text2sid")) -> Corpus:
    """Both directions for every item (``items[i]`` is catalog item ``i``); the loss covers the answer
    (the text and eos, or the SID)."""
    if len(items) > len(catalog):
        raise UserError(f"dataset has {len(items)} items but the checkpoint's catalog {len(catalog)}")
    builder = PromptBuilder(tok, catalog)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    before, after, ask = enc(" " + SID_TO_TEXT[0]), enc(SID_TO_TEXT[1]), enc(" " + TEXT_TO_SID)
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    ids, labels = [], []
    for index, item in enumerate(items):
        sid, text = builder.item_ids[index], enc(" " + item.text(GROUNDING_FIELDS, desc_words))
        if "sid2text" in directions:
            question, answer = builder.bos + before + sid + after, text + eos
            ids.append(question + answer)
            labels.append([IGNORE] * len(question) + answer)
        if "text2sid" in directions:
            question = builder.bos + text + ask
            ids.append(question + sid)
            labels.append([IGNORE] * len(question) + sid)
    return Corpus(ids, labels, {"kind": "grounding", "directions": list(directions), "items": len(items),
                                "desc_words": desc_words})


def with_pauses(corpus: Corpus, pause_id: int, ratio: float, seed: int) -> Corpus:
    """Insert ``round(ratio * len)`` (at least one) pauses at random positions after the first token.

    Each pause carries no loss; every other token keeps its label, so the model learns to read past them.
    """
    if not 0 < ratio < 1:
        raise UserError(f"pause ratio must be in (0, 1), got {ratio}")
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for seq, lab in zip(corpus.ids, corpus.labels):
        n = max(1, round(ratio * len(seq)))
        # distinct insertion points in 1..len-1: one pause goes right before each
        points = set(rng.choice(np.arange(1, len(seq)), size=min(n, len(seq) - 1), replace=False).tolist())
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
    return Corpus([corpus.ids[i] for i in keep], [corpus.labels[i] for i in keep],
                  {**corpus.info, "available": len(corpus), "used": len(keep)})


def recommendation(builder: PromptBuilder, examples: list[Example], variant: str, n_pauses: int = PAPER_PAUSES,
                   rationales: list[str] | None = None, rationale_loss: bool = True) -> Corpus:
    """Next-item windows; labels on the target SID (and, for ``cot``, the rationale and ``</think>``)."""
    ids, labels = [], []
    for i, ex in enumerate(examples):
        e = builder.encode(ex.history, ex.target, variant=variant, n_pauses=n_pauses,
                           rationale=rationales[i] if rationales is not None else None,
                           rationale_loss=rationale_loss)
        ids.append(e.input_ids)
        labels.append(e.labels)
    return Corpus(ids, labels, {"kind": "recommendation", "variant": variant, "windows": len(examples)})
