"""What the probes read out of a model: embedding matrices, readable vocabulary, the residual
stream, attention patterns (through a TransformerLens bridge) and a cross-check against HF eager
attentions.

Dimension names follow TransformerLens: ``batch pos d_model n_layers n_heads d_head d_vocab``. The
residual stream is indexed like HF ``hidden_states`` -- layer ``l`` is the stream after ``l`` blocks
(0 = embeddings) -- except that the last one is *raw*: HF applies the final norm to
``hidden_states[-1]``, we do not (apply :func:`final_norm` yourself, as the logit lens does).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pauserec.errors import UserError
from pauserec.model import backbone

log = logging.getLogger(__name__)
WORD = re.compile(r"[A-Za-z]{3,}")


def readable_words(tok: PreTrainedTokenizerBase, min_len: int = 3) -> dict[int, str]:
    """Text-token ids that read as a word (letters only, ``min_len``+), mapped to the lower-cased
    word.

    Where the tokenizer marks word starts (a leading space, as byte-level BPE does for most of its
    words) only word-initial tokens count, so ``" lip"`` is a word and the fragment ``"stick"`` is
    not.
    """
    text = backbone.token_groups(tok)["text"]
    strings = [tok.convert_tokens_to_string([t]) for t in tok.convert_ids_to_tokens(text)]
    ok = [
        (i, s)
        for i, s in zip(text, strings)
        if WORD.fullmatch(s.strip()) and len(s.strip()) >= min_len
    ]
    initial = [(i, s) for i, s in ok if s[:1].isspace()]
    if len(initial) >= 0.3 * len(ok):  # the tokenizer marks word starts: keep whole words only
        ok = initial
    return {i: s.strip().lower() for i, s in ok}


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise UserError(f"{type(model).__name__}: cannot find the decoder blocks (model.layers)")
    return layers


def final_norm(model: PreTrainedModel) -> nn.Module:
    norm = getattr(model.get_decoder(), "norm", None)
    if norm is None:
        raise UserError(f"{type(model).__name__}: cannot find the final norm (model.norm)")
    return norm


def pad_right(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (batch, pos) and lengths (batch,). Causal attention never lets a real token
    see the padding after it, so no attention mask is needed for the real positions."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows])


@torch.no_grad()
def residual_stream(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    """Raw residual stream (n_layers + 1, batch, pos, d_model): embeddings, then each block's
    output.

    Read with forward hooks on the blocks (no final norm), so ``out[-1]`` differs from HF's
    ``hidden_states[-1]``, which has the final norm applied.
    """
    layers = decoder_layers(model)
    acts: list[torch.Tensor] = []
    grab = (  # noqa: E731
        lambda _m, _a, out: acts.append((out[0] if isinstance(out, tuple) else out).detach())
    )
    handles = [model.get_input_embeddings().register_forward_hook(grab)]
    handles += [layer.register_forward_hook(grab) for layer in layers]
    try:
        model(input_ids=ids.to(model.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(acts).float()  # (n_layers + 1, batch, pos, d_model)


@torch.no_grad()
def hf_attentions(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    """Eager attention patterns (n_layers, batch, n_heads, pos, pos) from HF, for cross-checks.

    Needs a model loaded with ``attn_implementation="eager"`` (sdpa returns no weights).
    """
    out = model(input_ids=ids.to(model.device), output_attentions=True, use_cache=False)
    n_layers = model.config.num_hidden_layers
    if out.attentions is None or len(out.attentions) != n_layers or out.attentions[0] is None:
        raise UserError(
            f"expected {n_layers} attention patterns; load with attn_implementation='eager'"
        )
    return torch.stack(out.attentions).float()


def boot_bridge(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, device: str | torch.device = "cpu"
):
    """A TransformerLens ``TransformerBridge`` around a *copy* of ``model`` (booting wraps in
    place).

    Hook names: ``blocks.{L}.attn.hook_pattern`` (batch, n_heads, pos, pos) and
    ``blocks.{L}.hook_resid_post`` (batch, pos, d_model), raw like :func:`residual_stream`.
    """
    from transformer_lens.model_bridge import TransformerBridge

    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    log.info("booting a TransformerLens bridge around a copy of the model")
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=copy.deepcopy(model), tokenizer=tok, device=str(device)
    )
    bridge.eval()
    return bridge


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of (n, d) and (n, d) -> (n,)."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def permutation(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``n`` with no fixed point (every item is paired with another one)."""
    if n < 2:
        return np.arange(n)
    perm = rng.permutation(n)
    for i in np.flatnonzero(perm == np.arange(n)):
        if perm[i] == i:  # swap a fixed point with its neighbour: creates no new one
            j = (i + 1) % n
            perm[i], perm[j] = perm[j], perm[i]
    return perm
