"""Rationales for the explicit chain-of-thought baseline (``cot-sft``).

Sources:
* ``template``: history-only and leak-free -- summarises the categories of the user's recent items.
* ``template-leaky``: OneRec-Think style -- also names the target's category, so it leaks the answer
  (flagged ``leaky=True`` and recorded in checkpoint metadata).
* ``local`` / ``openai``: a language model writes the rationale (see below).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pauserec.catalog import Catalog
from pauserec.data import Example
from pauserec.errors import UserError

SOURCES = ("template", "template-leaky", "local", "openai")


@dataclass(frozen=True)
class Rationale:
    text: str
    leaky: bool  # True when the text was written knowing the target


def _leaf(categories: str) -> str:
    parts = [p.strip() for p in categories.split(",") if p.strip()]
    return parts[-1] if parts else ""


def template(catalog: Catalog, history) -> str:
    """A leak-free rationale from the history alone."""
    recent = [catalog.items[i] for i in history[-5:]]
    cats = Counter(c for it in recent if (c := _leaf(it.categories)))
    top = ", ".join(c for c, _ in cats.most_common(2)) or "varied products"
    return (f"The user recently bought items in {top}; the latest was {recent[-1].display_title}. "
            f"The next item should fit these interests.")


def template_leaky(catalog: Catalog, history, target: int) -> str:
    """Like :func:`template`, then names the target's category (leaks the answer)."""
    leaf = _leaf(catalog.items[target].categories) or "the same kind of product"
    return template(catalog, history) + f" It is likely in {leaf}."


def build(source: str, catalog: Catalog, examples: list[Example], **options) -> list[Rationale]:
    """One rationale per example from ``source``."""
    if source == "template":
        return [Rationale(template(catalog, ex.history), False) for ex in examples]
    if source == "template-leaky":
        return [Rationale(template_leaky(catalog, ex.history, ex.target), True) for ex in examples]
    if source in SOURCES:
        raise UserError(f"rationale source '{source}' is not available yet")
    raise UserError(f"unknown rationale source '{source}' (known: {', '.join(SOURCES)})")
