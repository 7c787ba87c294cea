"""Questions about items and general facts, their prompt templates, and text scores.

Shared by :mod:`probes.verbalization` (knowledge readouts) and :mod:`probes.rationale` (paraphrases
through :meth:`Asker.wrap`). ``resources/facts.jsonl`` is the shipped general-knowledge set: one
fact per line with ``id, topic, question, answer, distractors`` (facts, not recommendation data).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from pauserec import decoding
from pauserec.errors import UserError
from pauserec.model.catalog import Catalog, CatalogItem
from pauserec.model.prompts import SID_TO_TEXT, PromptBuilder, chat_ids
from pauserec.teacher.rationales import clean
from pauserec.tokens import parse_sid, sid_tokens

FACTS_PATH = Path(__file__).resolve().parent / "resources" / "facts.jsonl"
LABELS = {"title": "Title", "category": "Categories", "year": "Year", "brand": "Brand"}
_NEXT_LABEL = re.compile(r"\s*\.\s*(?:title|categories|year|brand|description)?\s*:", re.IGNORECASE)
TEMPLATES = ("auto", "chat", "plain", "grounding")  # see Asker
QUESTIONS = {
    "title": "What is the title of the {noun} {ref}?",
    "category": "Which {cat} does the {noun} {ref} belong to?",
    "year": "In what year was the {noun} {ref} released?",
    "brand": "What is the brand of the {noun} {ref}?",
}


@dataclass(frozen=True)
class Question:
    query: str  # sid, title, fact
    field: str  # title, category, year, brand; a fact's topic
    item_id: str
    text: str  # the question in words
    candidates: tuple[str, ...]  # the true answer first, then distractors
    ref: str = ""  # what the question names: the SID string or the title (items only)

    @property
    def answer(self) -> str:
        return self.candidates[0]


# -- text scores
# --------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words: the unit of every text score here."""
    return re.findall(r"[a-z0-9]+", text.lower())


def token_f1(pred: str, truth: str) -> float:
    """SQuAD-style bag-of-words F1 between two strings (0 when either has no words)."""
    p, t = words(pred), words(truth)
    same = sum((Counter(p) & Counter(t)).values())
    if not same:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two word lists (O(len(a) * len(b)))."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, truth: str) -> float:
    """ROUGE-L F-measure (beta = 1) on words."""
    p, t = words(pred), words(truth)
    n = lcs(p, t)
    if not n:
        return 0.0
    precision, recall = n / len(p), n / len(t)
    return 2 * precision * recall / (precision + recall)


def truth_rank(scores) -> float:
    """1-based rank of ``scores[0]`` among ``scores`` (higher is better); ties share it (mean
    rank)."""
    s = np.asarray(scores, dtype=float)
    return float(1 + (s[1:] > s[0]).sum() + 0.5 * (s[1:] == s[0]).sum())


# -- questions
# ----------------------------------------------------------------------------------------


def tokens_of(sid: str) -> list[str]:
    """``"<a_1><b_2>"`` -> ``["<a_1>", "<b_2>"]``."""
    return sid_tokens([code for _, code in parse_sid(sid)])


def _leaf(categories: str) -> str:
    parts = [p.strip() for p in categories.split(",") if p.strip()]
    return parts[-1] if parts else ""


def _genres(value: str) -> set[str]:
    return {p.strip().lower() for p in value.split(",") if p.strip()}


def is_movie_catalog(catalog: Catalog) -> bool:
    """ml-100k style: items carry a year, categories are a genre list (not a hierarchy)."""
    return any(it.year for it in catalog.items)


def value_of(item: CatalogItem, name: str, movies: bool) -> str:
    """The true answer for ``name``: the genre list (movies) or the leaf category (products)."""
    if name == "category":
        return item.categories if movies else _leaf(item.categories)
    if name not in QUESTIONS:
        raise UserError(f"unknown field '{name}' (known: {', '.join(QUESTIONS)})")
    return getattr(item, name)


def _wrong(value: str, truth: str, name: str, movies: bool) -> bool:
    """A distractor must be unambiguously wrong: another value (for genre lists: no shared
    genre)."""
    if name == "category" and movies:
        return not (_genres(value) & _genres(truth))
    return words(value) != words(truth)


def default_fields(catalog: Catalog) -> list[str]:
    names = ["title", "category", "year" if is_movie_catalog(catalog) else "brand"]
    return [
        n for n in names if any(value_of(it, n, is_movie_catalog(catalog)) for it in catalog.items)
    ]


def item_questions(
    catalog: Catalog,
    fields: list[str],
    queries: list[str],
    n_items: int,
    n_distractors: int,
    seed: int,
) -> list[Question]:
    """SID and title questions about a seeded sample of items; distractors seeded per (field, item),
    so every checkpoint (and the SID and title form of a question) gets the same candidates."""
    movies = is_movie_catalog(catalog)
    noun, cat = ("movie", "genres") if movies else ("product", "category")
    picked = np.random.default_rng(seed).permutation(len(catalog))[:n_items]
    out = []
    for name in fields:
        # stable, whatever --fields says
        f_no = list(QUESTIONS).index(name) if name in QUESTIONS else -1
        pool = sorted({v for it in catalog.items if (v := value_of(it, name, movies))})
        for idx in sorted(int(i) for i in picked):
            item = catalog.items[idx]
            truth = value_of(item, name, movies)
            if not truth:
                continue
            order = np.random.default_rng([seed, f_no, idx]).permutation(len(pool))
            wrong = list(
                islice(
                    (pool[j] for j in order if _wrong(pool[j], truth, name, movies)), n_distractors
                )
            )
            for query in queries:
                if query == "fact" or (query == "title" and name == "title"):
                    continue
                ref = item.sid_string if query == "sid" else item.display_title
                text = QUESTIONS[name].format(noun=noun, cat=cat, ref=ref)
                out.append(Question(query, name, item.item_id, text, (truth, *wrong), ref))
    return out


def fact_questions(path: str | Path = FACTS_PATH) -> list[Question]:
    """The shipped general-knowledge facts (``id, topic, question, answer, distractors`` per
    line)."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                out.append(
                    Question(
                        "fact",
                        row["topic"],
                        f"fact:{row['id']}",
                        row["question"],
                        (row["answer"], *row["distractors"]),
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as err:
                why = err or "nested too deeply"
                raise UserError(f"corrupt facts file {path} line {n}: {why}") from None
    return out


class Asker:
    """Turns a question into prompt ids, and answers into continuation ids.

    Templates: ``chat`` (the tokenizer's chat template), ``plain`` (``Question: ...\nAnswer:``),
    ``auto`` (chat when the tokenizer has one) and ``grounding`` -- item questions in the CPT
    corpus's own format (``Describe the item <SID>. Title:`` -> `` X.``, see :mod:`pauserec.corpus`;
    facts use ``plain``).
    """

    def __init__(self, tok, catalog: Catalog, template: str = "auto"):
        if template not in TEMPLATES:
            raise UserError(f"unknown template '{template}' (known: {', '.join(TEMPLATES)})")
        has_chat = bool(getattr(tok, "chat_template", None))
        if template == "chat" and not has_chat:
            raise UserError("--template chat: this tokenizer has no chat template")
        self.tok, self.grounding = tok, template == "grounding"
        self.chat = template == "chat" or (template == "auto" and has_chat)
        self.bos = PromptBuilder(tok, catalog).bos
        end: list[int] = []  # what closes a chat answer (the turn's end marker): a stop token
        if self.chat:
            user = [{"role": "user", "content": "Q"}]
            full = tok.apply_chat_template(
                [*user, {"role": "assistant", "content": "XYZ"}], tokenize=False
            )
            suffix = full.split("XYZ", 1)[1].strip()
            end = tok.encode(suffix, add_special_tokens=False) if suffix else []
        self.stop = sorted(
            {*end[:1], *([tok.eos_token_id] if tok.eos_token_id is not None else [])}
        )

    def _enc(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def wrap(self, text: str) -> list[int]:
        """Any question or instruction as a prompt (chat or plain, see
        :func:`pauserec.prompts.chat_ids`)."""
        if self.chat:
            return chat_ids(self.tok, text)
        return self.bos + self._enc(f"Question: {text}\nAnswer:")

    def _grounded(self, q: Question) -> bool:
        return self.grounding and q.query != "fact"

    def prompt(self, q: Question) -> list[int]:
        if not self._grounded(q):
            return self.wrap(q.text)
        before, after = SID_TO_TEXT
        ref = (
            self.tok.convert_tokens_to_ids(tokens_of(q.ref))
            if q.query == "sid"
            else self._enc(" " + q.ref)
        )
        return (
            self.bos
            + self._enc(" " + before)
            + ref
            + self._enc(after)
            + self._enc(f" {LABELS[q.field]}:")
        )

    def answer(self, text: str, q: Question) -> list[int]:
        """A candidate's continuation ids. Chat answers start the assistant turn and carry no end
        marker: a small chat model rarely ends a turn on a bare answer, and that marker's
        probability then swamps the content (SmolLM2 on the shipped facts: MC accuracy 0.27 with it,
        0.42 without)."""
        if self._grounded(q):
            return self._enc(f" {text}.")
        return self._enc(("" if self.chat else " ") + text)

    def read(self, new_ids: list[int]) -> str:
        """The generated answer: its first non-empty line (grounding: up to the next ``Label:``),
        workbench tokens removed."""
        text = self.tok.decode(new_ids, skip_special_tokens=True)
        text = next((ln for ln in text.splitlines() if ln.strip()), "")
        if self.grounding:
            text = _NEXT_LABEL.split(text)[0]
        return clean(text)


def generate_answers(
    model, asker: Asker, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """Greedy answers (read by ``asker``), prompts batched shortest first."""
    # less left padding per batch
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    new = decoding.generate(
        model, asker.tok, [prompts[i] for i in order], max_new_tokens, asker.stop, batch_size
    )
    out = [""] * len(prompts)
    for i, ids in zip(order, new):
        out[i] = asker.read(ids)
    return out
