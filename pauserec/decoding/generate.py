"""Greedy free text and continuation scoring, written once, on the KV cache (see
:mod:`pauserec.model.compat` for the one version-specific name).

Nothing here reads a model's ``generation_config``: decoding is greedy over log-softmax scores, with
no sampling, top-k/top-p or temperature, so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from pauserec.model.compat import forward


def model_device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def pad_left(rows: Sequence[Sequence[int]], width: int, fill: int = 0) -> torch.Tensor:
    """Rows right-aligned in a (len(rows), width) long tensor, ``fill`` on the left."""
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for b, row in enumerate(rows):
        if len(row):
            out[b, width - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
    return out


@torch.no_grad()
def prefill(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    key_masks: Sequence[Sequence[int]] | None = None,
):
    """Run left-padded ``prompts`` once: (last-position logits (B, V) fp32, cache, key mask (B, T)).

    ``key_masks`` (one 0/1 list per prompt, optional): 0 hides a prompt position as an attention key
    for every later query (position ids are unchanged), e.g. to knock out ``<pause>`` tokens.
    """
    device = model_device(model)
    width = max(len(p) for p in prompts)
    ids = pad_left(prompts, width).to(device)
    mask = pad_left([[1] * len(p) for p in prompts], width).to(device)  # (B, T) 1 = real token
    # left padding: positions start at 0 on the first real token
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    attn = mask if key_masks is None else mask * pad_left(key_masks, width).to(device)
    out, cache = forward(
        model,
        DynamicCache(),
        input_ids=ids,
        attention_mask=attn,
        position_ids=pos,
        logits_to_keep=1,
    )
    return out.logits[:, -1].float(), cache, attn


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    max_new_tokens: int = 32,
    stop_ids: Sequence[int] | None = None,
    batch_size: int = 16,
) -> list[list[int]]:
    """Greedy continuation of each prompt: the new tokens, up to (not including) the first stop id.

    ``stop_ids`` defaults to the tokenizer's EOS. Batched with left padding; deterministic.
    """
    stops = set(stop_ids if stop_ids is not None else [tokenizer.eos_token_id]) - {None}
    results: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        results += _generate_batch(
            model, prompts[start : start + batch_size], max_new_tokens, stops
        )
    return results


def _generate_batch(model, prompts, max_new_tokens: int, stops: set[int]) -> list[list[int]]:
    return generate_state(model, prompts, max_new_tokens, stops)[0]


def generate_state(model, prompts, max_new_tokens: int, stops: set[int]):
    """Greedy generation that keeps its KV cache: (new tokens per row, cache, key mask (B, T), next
    position id per row (B,)). A row that has stopped feeds no more keys: later columns of its key
    mask are 0, so the cache can be continued from as if each row had been generated alone."""
    logits, cache, attn = prefill(model, prompts)
    # next position id, per row
    pos = torch.as_tensor([len(p) for p in prompts], device=attn.device)
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
        step, cache = forward(
            model, cache, input_ids=nxt[:, None], attention_mask=attn, position_ids=pos[:, None]
        )
        logits, pos = step.logits[:, -1].float(), pos + live.long()
    return out, cache, attn, pos


@torch.no_grad()
def score_continuations(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    continuations: list[list[list[int]]],
    batch_size: int = 32,
) -> list[np.ndarray]:
    """Summed log-probability of every candidate continuation of every prompt.

    ``continuations[i]`` lists candidates (token lists) for ``prompt_ids[i]``; returns one float
    array per prompt. The prompt runs once; candidates share its KV cache in chunks of
    ``batch_size``.
    """
    scores = []
    for prompt, cands in zip(prompt_ids, continuations):
        logits, cache, _ = prefill(model, [prompt])
        first = torch.log_softmax(logits[0], -1)  # (V,)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        out = np.zeros(len(cands))
        for start in range(0, len(cands), batch_size):
            chunk = cands[start : start + batch_size]
            out[start : start + len(chunk)] = _score_chunk(model, kv, len(prompt), first, chunk)
        scores.append(out)
    return scores


def _score_chunk(
    model, kv, prompt_len: int, first: torch.Tensor, chunk: list[list[int]]
) -> np.ndarray:
    n, width = len(chunk), max(len(c) for c in chunk)
    if width == 0:
        return np.zeros(n)
    device = first.device
    ids = torch.zeros((n, width), dtype=torch.long)
    valid = torch.zeros((n, width), dtype=torch.bool)
    for j, c in enumerate(chunk):
        ids[j, : len(c)] = torch.as_tensor(c, dtype=torch.long)
        valid[j, : len(c)] = True
    ids, valid = ids.to(device), valid.to(device)
    total = first[ids[:, 0]] * valid[:, 0]  # (n,)
    if width > 1:
        cache = DynamicCache([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv])
        attn = torch.cat([valid.new_ones((n, prompt_len)), valid], 1).long()
        pos = (prompt_len + torch.arange(width - 1, device=device)).expand(n, -1)
        out, _ = forward(
            model, cache, input_ids=ids[:, :-1], attention_mask=attn[:, :-1], position_ids=pos
        )
        logits = out.logits.float()  # (n, width-1, V)
        lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]  # (n, width-1)
        total = total + (lp * valid[:, 1:]).sum(1)
    return total.double().cpu().numpy()
