"""The recommendation prompt, defined once and used by training, decoding and every probe -- and
every other fixed text the workbench puts to a model (grounding questions, template rationales).

Two formats (``|`` marks segment boundaries, which probes read back from :attr:`Encoded.segments`)::

    prompt: [bos] | HEAD | sid_1 | SEP | sid_2 | ... | sid_n | TAIL | T | target SID
    stream: [bos] | HEAD | sid_1 | SEP | T | sid_2 | SEP | T | ... | sid_n | SEP | T | target SID

``T`` is the think block: empty for ``plain``, ``<think>`` n x ``<pause>`` ``</think>`` for
``pause``, ``<think>`` rationale ``</think>`` for ``cot`` (``prompt`` format only). The ``prompt``
format is the paper's; ``stream`` is what a model trained on whole histories (every item a target,
the layout ``stream``) reads, so the prompt for a history is exactly the prefix it was trained on.
Token ids are concatenated from pieces tokenised once, so encoding is cheap and identical
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from pauserec import registry, tokens
from pauserec.model.catalog import Catalog
from pauserec.registry import PAPER_PAUSES

HEAD = "A user bought these items, oldest first:"
SEP = ","
TAIL = ". Recommend the next item.\nAnswer:"
IGNORE = -100  # label of positions that carry no loss
FORMATS = ("prompt", "stream")
# Grounding (cpt): (question before the SID, question after the SID), the text -> SID question, and
# the item text it teaches (its fields; the description cut to DESC_WORDS words by default).
SID_TO_TEXT = ("Describe the item", ".")
TEXT_TO_SID = "Which item is this?"
GROUNDING_FIELDS = ("title", "categories", "year", "description")
DESC_WORDS = 32
# Template rationales (the leak-free and the leaky one, see pauserec.teacher.rationales).
RATIONALE = (
    "The user recently bought items in {top}; the latest was {latest}. "
    "The next item should fit these interests."
)
RATIONALE_LEAK = " It is likely in {leaf}."
NO_CATEGORY, NO_LEAF = "varied products", "the same kind of product"


def fixed_texts() -> list[str]:
    """Every fixed text the workbench shows a model (the words a from-scratch tokenizer must
    know)."""
    return [
        HEAD,
        SEP,
        TAIL,
        *SID_TO_TEXT,
        TEXT_TO_SID,
        RATIONALE,
        RATIONALE_LEAK,
        NO_CATEGORY,
        NO_LEAF,
        registry.FILLER_TEXT,
    ]


def format_of(layout: str | None) -> str:
    """The prompt format a training layout's checkpoint reads (``stream`` for ``stream``, else the
    paper's)."""
    return "stream" if layout == "stream" else "prompt"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE except where the loss applies
    # per token: bos, instruction, history:J, sep, think, pause, rationale, target
    segments: list[str]
    prompt_len: int  # tokens before the target SID: what the decoder is given
    target_len: int = 0
    extra: dict = field(default_factory=dict)


class PromptBuilder:
    """Encodes (history, target) for one tokenizer, catalog and prompt format."""

    def __init__(
        self,
        tok: PreTrainedTokenizerBase,
        catalog: Catalog,
        pause_token: str | None = None,
        format: str = "prompt",
    ):
        """``pause_token``: the token the think block repeats (default ``<pause>``; the filler
        control repeats an ordinary text token). ``format``: ``prompt`` (the paper's) or
        ``stream``."""
        if format not in FORMATS:
            raise ValueError(f"unknown prompt format {format!r} (known: {', '.join(FORMATS)})")
        self.tok = tok
        self.catalog = catalog
        self.format = format
        self.item_ids = [tok.convert_tokens_to_ids(list(it.sid)) for it in catalog.items]
        enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
        self.head, self.sep, self.tail = enc(" " + HEAD), enc(SEP), enc(TAIL)
        probe = tok("x")["input_ids"]
        self.bos = (
            [tok.bos_token_id]
            if tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
            else []
        )
        self.pause_id = tok.convert_tokens_to_ids(pause_token or tokens.PAUSE)
        self.think_open = tok.convert_tokens_to_ids(tokens.THINK_OPEN)
        self.think_close = tok.convert_tokens_to_ids(tokens.THINK_CLOSE)

    @classmethod
    def for_checkpoint(cls, ckpt) -> PromptBuilder:
        """The builder a checkpoint was trained with (its tokenizer, catalog, think-block token and
        the prompt format of its training layout)."""
        return cls(
            ckpt.tokenizer,
            ckpt.catalog,
            ckpt.meta.get("pause_token"),
            format_of(ckpt.meta.get("layout")),
        )

    def think(
        self,
        variant: str,
        n_pauses: int = PAPER_PAUSES,
        rationale: str | list[int] | None = None,
        rationale_loss: bool = True,
        where: str = "",
    ) -> tuple[list[int], list[str], list[int]]:
        """(ids, segments, labels) of the think block of ``variant``; ``where`` (``:J``) marks a
        block inside a stream's history (segments ``think:J``, ``pause:J``), so exact matches see
        only the last."""
        if variant == "plain":
            return [], [], []
        if variant == "pause":
            ids = [self.think_open] + [self.pause_id] * n_pauses + [self.think_close]
            seg = [f"think{where}"] + [f"pause{where}"] * n_pauses + [f"think{where}"]
            return ids, seg, [IGNORE] * len(ids)
        if variant == "cot":
            r_ids = (
                rationale
                if isinstance(rationale, list)
                else self.tok.encode(" " + (rationale or "").strip(), add_special_tokens=False)
            )
            ids = [self.think_open] + r_ids + [self.think_close]
            seg = [f"think{where}"] + [f"rationale{where}"] * len(r_ids) + [f"think{where}"]
            labels = [IGNORE] + (
                (r_ids + [self.think_close]) if rationale_loss else [IGNORE] * (len(r_ids) + 1)
            )
            return ids, seg, labels
        raise ValueError(f"unknown variant {variant!r}")

    def prompt(
        self,
        history: tuple[int, ...] | list[int],
        variant: str = "plain",
        n_pauses: int = PAPER_PAUSES,
    ) -> tuple[list[int], list[str]]:
        """Token ids and segments of the instruction with the history's SIDs, up to (not including)
        the think block before the target. In the ``stream`` format every history item after the
        first has its own think block (``variant`` and ``n_pauses`` say which)."""
        if self.format == "stream" and variant == "cot":
            raise ValueError(
                "the stream format has no rationale per history item: cot uses the prompt format"
            )
        ids, seg = list(self.bos), ["bos"] * len(self.bos)
        ids += self.head
        seg += ["instruction"] * len(self.head)
        for j, item in enumerate(history):
            if j:
                ids += self.sep
                seg += ["sep"] * len(self.sep)
                if self.format == "stream":
                    block, bseg, _ = self.think(variant, n_pauses, where=f":{j}")
                    ids += block
                    seg += bseg
            ids += self.item_ids[item]
            seg += [f"history:{j}"] * len(self.item_ids[item])
        end = self.tail if self.format == "prompt" else self.sep
        ids += end
        seg += ["instruction" if self.format == "prompt" else "sep"] * len(end)
        return ids, seg

    def encode(
        self,
        history,
        target: int | None = None,
        variant: str = "plain",
        n_pauses: int = PAPER_PAUSES,
        rationale: str | list[int] | None = None,
        rationale_loss: bool = True,
    ) -> Encoded:
        """One example. ``variant`` is ``plain``, ``pause`` (``n_pauses`` pauses) or ``cot``
        (``rationale`` text).

        Labels cover the target SID (and, for ``cot`` with ``rationale_loss``, the rationale and
        ``</think>``); prompt, pause and think-open positions never carry loss.
        """
        ids, seg = self.prompt(history, variant, n_pauses)
        labels = [IGNORE] * len(ids)
        block, bseg, blab = self.think(variant, n_pauses, rationale, rationale_loss)
        ids, seg, labels = ids + block, seg + bseg, labels + blab
        prompt_len = len(ids)
        target_len = 0
        if target is not None:
            t_ids = self.item_ids[target]
            ids += t_ids
            seg += ["target"] * len(t_ids)
            labels += t_ids
            target_len = len(t_ids)
        return Encoded(ids, labels, seg, prompt_len, target_len)


def chat_ids(tok: PreTrainedTokenizerBase, text: str, system: str | None = None) -> list[int]:
    """An instruction as prompt ids: the tokenizer's chat template (with ``system`` first) when it
    has one, else ``system`` + ``Question: TEXT`` + ``Answer:`` after the BOS token. The one way any
    free-text question is put to a model (rationales, paraphrases, knowledge probes)."""
    if getattr(tok, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": text}
        ]
        rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tok.encode(rendered, add_special_tokens=False)
    lead = f"{system}\n\n" if system else ""
    return tok.encode(f"{lead}Question: {text}\nAnswer:")
