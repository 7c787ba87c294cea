"""The recommendation prompt, defined once and used by training, decoding and every probe.

Layout (``|`` marks segment boundaries, which probes read back from :attr:`Encoded.segments`)::

    [bos] | HEAD | sid_1 | SEP | sid_2 | ... | sid_n | TAIL | <think> (n x <pause> | rationale) </think> | target SID

``plain`` has no think block. Token ids are concatenated from pieces tokenised once, so encoding is cheap
and identical everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from pauserec import tokens
from pauserec.model.catalog import Catalog
from pauserec.registry import PAPER_PAUSES

HEAD = "A user bought these items, oldest first:"
SEP = ","
TAIL = ". Recommend the next item.\nAnswer:"
IGNORE = -100  # label of positions that carry no loss


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE except where the loss applies
    segments: list[str]  # per token: bos, instruction, history:J, sep, think, pause, rationale, target
    prompt_len: int  # tokens before the target SID: what the decoder is given
    target_len: int = 0
    extra: dict = field(default_factory=dict)


class PromptBuilder:
    """Encodes (history, target) for one tokenizer and catalog."""

    def __init__(self, tok: PreTrainedTokenizerBase, catalog: Catalog, pause_token: str | None = None):
        """``pause_token``: the token the think block repeats (default ``<pause>``; the filler control
        repeats an ordinary text token)."""
        self.tok = tok
        self.catalog = catalog
        self.item_ids = [tok.convert_tokens_to_ids(list(it.sid)) for it in catalog.items]
        enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
        self.head, self.sep, self.tail = enc(" " + HEAD), enc(SEP), enc(TAIL)
        probe = tok("x")["input_ids"]
        self.bos = [tok.bos_token_id] if tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id] else []
        self.pause_id = tok.convert_tokens_to_ids(pause_token or tokens.PAUSE)
        self.think_open = tok.convert_tokens_to_ids(tokens.THINK_OPEN)
        self.think_close = tok.convert_tokens_to_ids(tokens.THINK_CLOSE)

    @classmethod
    def for_checkpoint(cls, ckpt) -> PromptBuilder:
        """The builder a checkpoint was trained with (its tokenizer, catalog and think-block token)."""
        return cls(ckpt.tokenizer, ckpt.catalog, ckpt.meta.get("pause_token"))

    def prompt(self, history: tuple[int, ...] | list[int]) -> tuple[list[int], list[str]]:
        """Token ids and segments of the instruction with the history's SIDs (no think block)."""
        ids, seg = list(self.bos), ["bos"] * len(self.bos)
        ids += self.head
        seg += ["instruction"] * len(self.head)
        for j, item in enumerate(history):
            if j:
                ids += self.sep
                seg += ["sep"] * len(self.sep)
            ids += self.item_ids[item]
            seg += [f"history:{j}"] * len(self.item_ids[item])
        ids += self.tail
        seg += ["instruction"] * len(self.tail)
        return ids, seg

    def encode(self, history, target: int | None = None, variant: str = "plain", n_pauses: int = PAPER_PAUSES,
               rationale: str | list[int] | None = None, rationale_loss: bool = True) -> Encoded:
        """One example. ``variant`` is ``plain``, ``pause`` (``n_pauses`` pauses) or ``cot`` (``rationale`` text).

        Labels cover the target SID (and, for ``cot`` with ``rationale_loss``, the rationale and
        ``</think>``); prompt, pause and think-open positions never carry loss.
        """
        ids, seg = self.prompt(history)
        labels = [IGNORE] * len(ids)
        if variant == "pause":
            block = [self.think_open] + [self.pause_id] * n_pauses + [self.think_close]
            ids += block
            seg += ["think"] + ["pause"] * n_pauses + ["think"]
            labels += [IGNORE] * len(block)
        elif variant == "cot":
            r_ids = rationale if isinstance(rationale, list) else self.tok.encode(
                " " + (rationale or "").strip(), add_special_tokens=False)
            ids += [self.think_open]
            seg += ["think"]
            labels += [IGNORE]
            ids += r_ids + [self.think_close]
            seg += ["rationale"] * len(r_ids) + ["think"]
            labels += (r_ids + [self.think_close]) if rationale_loss else [IGNORE] * (len(r_ids) + 1)
        elif variant != "plain":
            raise ValueError(f"unknown variant {variant!r}")
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
    """An instruction as prompt ids: the tokenizer's chat template (with ``system`` first) when it has
    one, else ``system`` + ``Question: TEXT`` + ``Answer:`` after the BOS token. The one way any
    free-text question is put to a model (rationales, paraphrases, knowledge probes)."""
    if getattr(tok, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tok.encode(rendered, add_special_tokens=False)
    lead = f"{system}\n\n" if system else ""
    return tok.encode(f"{lead}Question: {text}\nAnswer:")
