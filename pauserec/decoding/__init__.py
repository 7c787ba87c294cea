"""Decoding, written once and used by evaluation, training curves, rationales and probes alike.

| module    | holds                                                                                |
|-----------|--------------------------------------------------------------------------------------|
| trie      | :class:`Trie`: the catalog's SIDs as per-level child tables                          |
| generate  | prefill, greedy generation that keeps its KV cache, continuation scoring             |
| search    | trie-constrained beam search with tree attention; CoT: search after the rationale    |
| recommend | top-K items per history for the ``plain``, ``pause`` and ``cot`` prompts, in batches |
"""

from pauserec.decoding.generate import (
    generate,
    generate_state,
    model_device,
    pad_left,
    prefill,
    score_continuations,
)
from pauserec.decoding.recommend import Recommendations, build_prompts, recommend
from pauserec.decoding.search import beam_search, think_then_search
from pauserec.decoding.trie import Trie

__all__ = [
    "Recommendations",
    "Trie",
    "beam_search",
    "build_prompts",
    "generate",
    "generate_state",
    "model_device",
    "pad_left",
    "prefill",
    "recommend",
    "score_continuations",
    "think_then_search",
]
