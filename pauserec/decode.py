"""Generation, written once: greedy free text, continuation scoring and trie-constrained recommendation
(the trie and the beam search itself are in :mod:`pauserec.trie`).

Nothing here reads a model's ``generation_config``: decoding is greedy or beam search over log-softmax
scores, with no sampling, top-k/top-p or temperature, so results are deterministic.

"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from pauserec.errors import UserError
from pauserec.prompts import DEFAULT_PAUSES, PromptBuilder
from pauserec.trie import Trie, beam_search, think_then_search  # noqa: F401 -- re-exported

log = logging.getLogger(__name__)


def model_device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def pad_left(rows: Sequence[Sequence[int]], width: int, fill: int = 0) -> torch.Tensor:
    """Rows right-aligned in a (len(rows), width) long tensor, ``fill`` on the left."""
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for b, row in enumerate(rows):
        if len(row):
            out[b, width - len(row):] = torch.as_tensor(list(row), dtype=torch.long)
    return out


@torch.no_grad()
def prefill(model: PreTrainedModel, prompts: Sequence[Sequence[int]],
            key_masks: Sequence[Sequence[int]] | None = None):
    """Run left-padded ``prompts`` once: (last-position logits (B, V) fp32, cache, key mask (B, T)).

    ``key_masks`` (one 0/1 list per prompt, optional): 0 hides a prompt position as an attention key
    for every later query (position ids are unchanged), e.g. to knock out ``<pause>`` tokens.
    """
    device = model_device(model)
    width = max(len(p) for p in prompts)
    ids = pad_left(prompts, width).to(device)
    mask = pad_left([[1] * len(p) for p in prompts], width).to(device)  # (B, T) 1 = real token
    pos = (mask.cumsum(1) - 1).clamp(min=0)  # left padding: positions start at 0 on the first real token
    attn = mask if key_masks is None else mask * pad_left(key_masks, width).to(device)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, cache=DynamicCache(),
                use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].float(), out.cache, attn


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
             max_new_tokens: int = 32, stop_ids: Sequence[int] | None = None,
             batch_size: int = 16) -> list[list[int]]:
    """Greedy continuation of each prompt: the new tokens, up to (not including) the first stop id.

    ``stop_ids`` defaults to the tokenizer's EOS. Batched with left padding; deterministic.
    """
    stops = set(stop_ids if stop_ids is not None else [tokenizer.eos_token_id]) - {None}
    results: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        results += _generate_batch(model, prompts[start:start + batch_size], max_new_tokens, stops)
    return results


def _generate_batch(model, prompts, max_new_tokens: int, stops: set[int]) -> list[list[int]]:
    return generate_state(model, prompts, max_new_tokens, stops)[0]


def generate_state(model, prompts, max_new_tokens: int, stops: set[int]):
    """Greedy generation that keeps its KV cache: (new tokens per row, cache, key mask (B, T), next
    position id per row (B,)). A row that has stopped feeds no more keys: later columns of its key mask
    are 0, so the cache can be continued from as if each row had been generated alone."""
    logits, cache, attn = prefill(model, prompts)
    pos = torch.as_tensor([len(p) for p in prompts], device=attn.device)  # next position id, per row
    out: list[list[int]] = [[] for _ in prompts]
    done = [max_new_tokens <= 0] * len(prompts)
    for _ in range(max_new_tokens):
        nxt = logits.argmax(-1)  # (B,)
        for b, tok in enumerate(nxt.tolist()):
            if not done[b]:
                if tok in stops:
                    done[b] = True
                else:
                    out[b].append(tok)
                    done[b] = len(out[b]) >= max_new_tokens
        if all(done):
            break
        live = torch.as_tensor([not d for d in done], device=attn.device)
        attn = torch.cat([attn, live[:, None].to(attn.dtype)], 1)
        step = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos[:, None], cache=cache,
                     use_cache=True)
        logits, cache, pos = step.logits[:, -1].float(), step.cache, pos + live.long()
    return out, cache, attn, pos


@torch.no_grad()
def score_continuations(model: PreTrainedModel, prompt_ids: list[list[int]],
                        continuations: list[list[list[int]]], batch_size: int = 32) -> list[np.ndarray]:
    """Summed log-probability of every candidate continuation of every prompt.

    ``continuations[i]`` lists candidates (token lists) for ``prompt_ids[i]``; returns one float array per
    prompt. The prompt runs once; candidates share its KV cache in chunks of ``batch_size``.
    """
    scores = []
    for prompt, cands in zip(prompt_ids, continuations):
        logits, cache, _ = prefill(model, [prompt])
        first = torch.log_softmax(logits[0], -1)  # (V,)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        out = np.zeros(len(cands))
        for start in range(0, len(cands), batch_size):
            chunk = cands[start:start + batch_size]
            out[start:start + len(chunk)] = _score_chunk(model, kv, len(prompt), first, chunk)
        scores.append(out)
    return scores


def _score_chunk(model, kv, prompt_len: int, first: torch.Tensor, chunk: list[list[int]]) -> np.ndarray:
    n, width = len(chunk), max(len(c) for c in chunk)
    if width == 0:
        return np.zeros(n)
    device = first.device
    ids = torch.zeros((n, width), dtype=torch.long)
    valid = torch.zeros((n, width), dtype=torch.bool)
    for j, c in enumerate(chunk):
        ids[j, :len(c)] = torch.as_tensor(c, dtype=torch.long)
        valid[j, :len(c)] = True
    ids, valid = ids.to(device), valid.to(device)
    total = first[ids[:, 0]] * valid[:, 0]  # (n,)
    if width > 1:
        cache = DynamicCache([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv])
        attn = torch.cat([valid.new_ones((n, prompt_len)), valid], 1).long()
        pos = (prompt_len + torch.arange(width - 1, device=device)).expand(n, -1)
        logits = model(input_ids=ids[:, :-1], attention_mask=attn[:, :-1], position_ids=pos, cache=cache,
                       use_cache=True).logits.float()  # (n, width-1, V)
        lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]  # (n, width-1)
        total = total + (lp * valid[:, 1:]).sum(1)
    return total.double().cpu().numpy()


@dataclass
class Recommendations:
    items: np.ndarray  # (n_users, top_k) item indices, best first; -1 = not a catalog SID (unconstrained)
    scores: np.ndarray  # (n_users, top_k) summed log-probs of the SID tokens
    invalid_rate: float  # share of returned SIDs that name no catalog item (0 under the trie)
    rationales: list[str] | None = None  # cot: the rationale each user's SID was decoded after


def _segment_hit(segment: str, names: set[str]) -> bool:
    return segment in names or segment.split(":")[0] in names  # "history" matches "history:3"


def build_prompts(model: PreTrainedModel, builder: PromptBuilder, histories: Sequence[Sequence[int]],
                  variant: str = "plain", n_pauses: int = DEFAULT_PAUSES, rationales: Sequence[str] | None = None,
                  cot_max_new_tokens: int = 64, batch_size: int = 16):
    """Encoded prompts (target=None) for every history, and for ``cot`` the rationale texts used.

    ``cot`` without ``rationales``: each rationale is generated greedily after ``<think>`` until
    ``</think>`` (or EOS, or ``cot_max_new_tokens``), then ``</think>`` is appended.
    """
    if variant not in ("plain", "pause", "cot"):
        raise UserError(f"unknown variant '{variant}' (known: plain, pause, cot)")
    if variant != "cot":
        return [builder.encode(h, variant=variant, n_pauses=n_pauses) for h in histories], None
    if rationales is not None:
        if len(rationales) != len(histories):
            raise UserError(f"{len(rationales)} rationales for {len(histories)} histories")
        return [builder.encode(h, variant="cot", rationale=r) for h, r in zip(histories, rationales)], \
            list(rationales)
    starts = [builder.encode(h, variant="cot", rationale=[]).input_ids[:-1] for h in histories]  # ..<think>
    stops = [builder.think_close] + [t for t in [builder.tok.eos_token_id] if t is not None]
    made = generate(model, builder.tok, starts, cot_max_new_tokens, stops, batch_size)
    encs = [builder.encode(h, variant="cot", rationale=r) for h, r in zip(histories, made)]
    return encs, [builder.tok.decode(r).strip() for r in made]


def recommend(model: PreTrainedModel, builder: PromptBuilder, histories: Sequence[Sequence[int]], *,
              variant: str = "plain", n_pauses: int = DEFAULT_PAUSES, rationales: Sequence[str] | None = None,
              top_k: int = 10, beams: int = 20, batch_size: int = 16, cot_max_new_tokens: int = 64,
              constrained: bool = True, mask_segments: set[str] | None = None,
              device: str | torch.device | None = None, trie: Trie | None = None) -> Recommendations:
    """Top-``top_k`` items per history by beam search over the full catalog's SID trie.

    ``mask_segments``: prompt positions whose segment (see ``PromptBuilder``) is in the set are hidden
    as attention keys. ``device``: move the model there first (default: where it is). ``trie``: the
    catalog's trie on the model's device, when the caller built it already (timed loops). Users are
    decoded ``batch_size`` at a time, sorted by prompt length; if the device runs out of memory the
    batch is split, never the beams.
    """
    if top_k > beams:
        raise UserError(f"top_k ({top_k}) cannot exceed beams ({beams})")
    if beams < 1 or batch_size < 1:
        raise UserError("beams and batch_size must be at least 1")
    if device is not None:
        model.to(device)
    trie = trie if trie is not None else Trie(builder.item_ids).to(model_device(model))
    if variant == "cot" and rationales is None:
        if mask_segments:
            raise UserError("mask_segments needs given rationales for the cot variant")
        return _recommend_thinking(model, builder, histories, trie, top_k, beams, batch_size, cot_max_new_tokens,
                                   constrained)
    encs, used = build_prompts(model, builder, histories, variant, n_pauses, rationales, cot_max_new_tokens,
                               batch_size)
    prompts = [e.input_ids[:e.prompt_len] for e in encs]
    key_masks = None if not mask_segments else [
        [0 if _segment_hit(s, mask_segments) else 1 for s in e.segments[:e.prompt_len]] for e in encs]
    items = np.full((len(prompts), top_k), -1, dtype=np.int64)
    scores = np.full((len(prompts), top_k), -np.inf)
    lookup = {tuple(t): i for i, t in enumerate(builder.item_ids)}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    search = lambda rows: beam_search(model, [prompts[i] for i in rows], trie, beams, constrained,  # noqa: E731
                                      None if key_masks is None else [key_masks[i] for i in rows])
    for rows, (toks, found, score) in _batches(order, batch_size, beams, search):
        w = min(top_k, found.shape[1])
        if not constrained:
            found = torch.tensor([[lookup.get(tuple(t), -1) for t in user] for user in toks.tolist()])
        items[rows, :w], scores[rows, :w] = found[:, :w].cpu().numpy(), score[:, :w].cpu().numpy()
    return _results(items, scores, used)


def _results(items: np.ndarray, scores: np.ndarray, rationales: list[str] | None) -> Recommendations:
    real = np.isfinite(scores)
    invalid = float(((items < 0) & real).sum() / max(real.sum(), 1))
    return Recommendations(items, scores, invalid, rationales)


def _recommend_thinking(model, builder: PromptBuilder, histories, trie: Trie, top_k: int, beams: int,
                        batch_size: int, max_new_tokens: int, constrained: bool) -> Recommendations:
    """``recommend`` for the cot variant with generated rationales (see :func:`think_then_search`)."""
    starts = [builder.encode(h, variant="cot", rationale=[]).input_ids[:-1] for h in histories]  # ..<think>
    items = np.full((len(starts), top_k), -1, dtype=np.int64)
    scores = np.full((len(starts), top_k), -np.inf)
    used = [""] * len(starts)
    lookup = {tuple(t): i for i, t in enumerate(builder.item_ids)}
    order = sorted(range(len(starts)), key=lambda i: len(starts[i]))
    run = lambda rows: think_then_search(model, builder, [starts[i] for i in rows], trie, beams,  # noqa: E731
                                         max_new_tokens, constrained)
    for rows, ((toks, found, score), made) in _batches(order, batch_size, beams, run):
        w = min(top_k, found.shape[1])
        if not constrained:
            found = torch.tensor([[lookup.get(tuple(t), -1) for t in user] for user in toks.tolist()])
        items[rows, :w], scores[rows, :w] = found[:, :w].cpu().numpy(), score[:, :w].cpu().numpy()
        for i, ids in zip(rows, made):
            used[i] = builder.tok.decode(ids).strip()
    return _results(items, scores, used)


def _batches(order: list[int], batch_size: int, beams: int, fn):
    """Yield (row indices, ``fn(rows)``) over ``order`` in batches; halve the batch on out-of-memory."""
    start = 0
    while start < len(order):
        rows = order[start:start + batch_size]
        try:
            result = fn(rows)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            log.warning("out of memory: decoding %d users at a time (beams stay %d)", batch_size, beams)
            continue
        yield rows, result
        start += len(rows)
