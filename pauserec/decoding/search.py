"""The beam search that decodes under the catalog trie.

Beam search runs the prompt once per user and never copies its KV cache across beams. Each step
feeds every beam's last token as one more block of query positions ("tree attention"): a custom 4-D
mask lets a beam token see its user's prompt, its own ancestors and itself, and position ids
continue the prompt's. A CoT model's search continues from the KV cache its generated rationale left
(:func:`think_then_search`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from pauserec.decoding.generate import generate_state, prefill
from pauserec.decoding.trie import Trie
from pauserec.model.compat import forward
from pauserec.model.prompts import PromptBuilder


def _tree_mask(prompt_keys: torch.Tensor, seen: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (B, 1, W, T + K + W): beam j sees its prompt keys, its ancestors' slots,
    itself."""
    b, w, _ = seen.shape
    own = torch.eye(w, dtype=torch.bool, device=seen.device).expand(b, w, w)
    keys = torch.cat([prompt_keys.bool()[:, None, :].expand(b, w, -1), seen, own], 2)
    return torch.zeros(keys.shape, dtype=dtype, device=seen.device).masked_fill_(
        ~keys, torch.finfo(dtype).min
    )[:, None]


def _select(cand: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``width`` of (B, N) candidate scores, best first; ties keep the lower index (stable)."""
    scores, idx = torch.sort(cand, dim=1, descending=True, stable=True)
    return scores[:, :width], idx[:, :width]


@torch.no_grad()
def beam_search(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    trie: Trie,
    beams: int,
    constrained: bool = True,
    key_masks: Sequence[Sequence[int]] | None = None,
    state=None,
):
    """One batch of prompts -> (tokens (B, W, L), item indices or -1 (B, W), scores (B, W)), best
    first.

    Constrained: only trie paths, so the number of live beams at level s is min(beams, prefixes of
    s+1 tokens) and every final beam is an item. Unconstrained: ``beams`` best paths over the vocab.
    ``state``: (last logits (B, V), cache, key mask (B, T), next position ids (B,)) to continue from
    instead of running ``prompts`` (e.g. after a generated rationale).
    """
    if state is None:
        logits, cache, keys = prefill(model, prompts, key_masks)
        pos = keys.new_tensor([len(p) for p in prompts])[:, None]  # (B, 1) next position id
    else:
        logits, cache, keys, pos = state
        pos = pos[:, None]
    n, device, dtype = len(prompts), logits.device, model.dtype
    score = logits.new_zeros((n, 1))  # (B, W) summed log-probs of the live beams
    prefix = torch.zeros((n, 1), dtype=torch.long, device=device)  # (B, W) trie prefix index
    toks = torch.zeros((n, 1, 0), dtype=torch.long, device=device)  # (B, W, s)
    seen = torch.zeros((n, 1, 0), dtype=torch.bool, device=device)  # (B, W, K) visible tree slots
    logp = torch.log_softmax(logits, -1)[:, None]  # (B, 1, V)
    for s in range(trie.n_levels):
        if s:  # feed every live beam's last token as one block of queries
            out, cache = forward(
                model,
                cache,
                input_ids=toks[:, :, -1],
                attention_mask=_tree_mask(keys, seen, dtype),
                position_ids=(pos + s - 1).expand(-1, toks.shape[1]),
            )
            logp = torch.log_softmax(out.logits.float(), -1)  # (B, W, V)
            seen = torch.cat(
                [seen, torch.eye(toks.shape[1], dtype=torch.bool, device=device).expand(n, -1, -1)],
                2,
            )
        if constrained:
            cand_tok = trie.tok[s][prefix]  # (B, W, C)
            lp = logp.gather(-1, cand_tok).masked_fill_(~trie.ok[s][prefix], -torch.inf)
            width = min(beams, trie.sizes[s + 1])
        else:
            cand_tok, lp, width = None, logp, beams
        c = lp.shape[-1]
        score, idx = _select((score[:, :, None] + lp).flatten(1), width)  # (B, W')
        parent, child = idx // c, idx % c
        new_tok = child if cand_tok is None else cand_tok.flatten(1).gather(1, idx)
        if constrained:
            prefix = trie.nxt[s][prefix.gather(1, parent), child]
        toks = torch.cat(
            [toks.gather(1, parent[..., None].expand(-1, -1, s)), new_tok[..., None]], 2
        )
        seen = seen.gather(1, parent[..., None].expand(-1, -1, seen.shape[2]))
    items = prefix if constrained else torch.full_like(score, -1, dtype=torch.long)
    return toks, items, score


@torch.no_grad()
def think_then_search(
    model: PreTrainedModel,
    builder: PromptBuilder,
    starts: Sequence[Sequence[int]],
    trie: Trie,
    beams: int,
    max_new_tokens: int,
    constrained: bool = True,
):
    """CoT decoding without re-reading the prompt: generate each rationale greedily after
    ``<think>`` (until ``</think>``, EOS or ``max_new_tokens``), feed ``</think>``, and run the SID
    beam search on the same KV cache. Returns beam_search's result and the rationale tokens of each
    row."""

    stops = {builder.think_close} | ({builder.tok.eos_token_id} - {None})
    made, cache, keys, pos = generate_state(model, starts, max_new_tokens, stops)
    close = torch.full((len(starts), 1), builder.think_close, dtype=torch.long, device=keys.device)
    keys = torch.cat([keys, keys.new_ones((len(starts), 1))], 1)
    step, cache = forward(
        model, cache, input_ids=close, attention_mask=keys, position_ids=pos[:, None]
    )
    state = (step.logits[:, -1].float(), cache, keys, pos + 1)
    return beam_search(model, starts, trie, beams, constrained, state=state), made
