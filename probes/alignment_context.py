"""The parts of the alignment probe that run the model or a manifold learner: hidden states of an
item mentioned by SID vs by title (layer by layer), and a UMAP map of SID and word tokens."""

from __future__ import annotations

import logging

import numpy as np
import torch

from pauserec.model.checkpoint import Checkpoint
from pauserec.model.prompts import PromptBuilder
from probes import activations as act

log = logging.getLogger(__name__)


def mention_pairs(builder: PromptBuilder, item: int) -> list[tuple[list[int], tuple[int, int]]]:
    """The one-item recommendation prompt with the item as its SID, then as its title, each with the
    (start, end) span of the mention. Both come from the same :class:`PromptBuilder` template."""
    ids, seg = builder.prompt([item])
    span = [p for p, s in enumerate(seg) if s == "history:0"]
    a, b = span[0], span[-1] + 1
    title = builder.tok.encode(
        " " + builder.catalog.items[item].display_title, add_special_tokens=False
    )
    return [(ids, (a, b)), (ids[:a] + title + ids[b:], (a, a + len(title)))]


@torch.no_grad()
def contextual(
    ckpt: Checkpoint,
    index: np.ndarray,
    n_items: int,
    rng: np.random.Generator,
    batch_size: int = 32,
) -> list[dict]:
    """Per layer, cosine of the residual stream for an item mentioned by SID vs by title: averaged
    over the mention (``space="mention"``) and at the prompt's last position (``space="last"``);
    baseline: the SID of one item vs the title of another."""
    if n_items <= 0:
        return []
    builder = PromptBuilder.for_checkpoint(ckpt)
    chosen = rng.choice(index, min(n_items, len(index)), replace=False)
    seqs = [pair for i in chosen for pair in mention_pairs(builder, int(i))]
    mention, last = [], []
    pad = ckpt.tokenizer.pad_token_id or 0
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        ids, lengths = act.pad_right([s for s, _ in chunk], pad)
        resid = act.residual_stream(ckpt.model, ids).cpu()  # (n_layers + 1, batch, pos, d_model)
        for b, (_, (lo, hi)) in enumerate(chunk):
            mention.append(resid[:, b, lo:hi].mean(1))  # (n_layers + 1, d_model)
            last.append(resid[:, b, lengths[b] - 1])
    perm = act.permutation(len(chosen), rng)
    rows = []
    for space, acts in (("mention", torch.stack(mention)), ("last", torch.stack(last))):
        sid, title = acts[0::2], acts[1::2]  # (n_items, n_layers + 1, d_model) each
        obs = act.cosine_rows(sid, title).mean(0)  # (n_layers + 1,)
        base = act.cosine_rows(sid, title[perm]).mean(0)
        for layer in range(len(obs)):
            rows += [
                {
                    "metric": "context_cosine",
                    "space": space,
                    "layer": layer,
                    "value": float(obs[layer]),
                },
                {
                    "metric": "context_cosine_baseline",
                    "space": space,
                    "layer": layer,
                    "value": float(base[layer]),
                },
            ]
    log.info("contextual probe: %d items, %d layers", len(chosen), len(obs) - 1)
    return rows


def umap_rows(
    w: torch.Tensor,
    sid_ids: list[int],
    names: dict[int, str],
    words: list[int],
    readable: dict[int, str],
    special: dict[str, int],
    n_words: int,
    seed: int,
) -> list[dict]:
    """2-D UMAP (cosine) of the SID tokens, ``n_words`` of the sampled word tokens and the special
    tokens: rows ``umap_x`` / ``umap_y`` with ``token`` (also as ``item_id``) and ``space``."""
    import umap

    rng = np.random.default_rng(seed)
    words = sorted(rng.choice(words, min(n_words, len(words)), replace=False).tolist())
    points = (
        [(i, names[i], "sid") for i in sid_ids]
        + [(i, readable[i], "word") for i in words]
        + [(i, name, name.strip("<>/")) for name, i in special.items()]
    )
    x = torch.nn.functional.normalize(w[[p[0] for p in points]].float(), dim=1).numpy()
    reducer = umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed)
    xy = reducer.fit_transform(x)
    rows = []
    for (_, name, space), (ux, uy) in zip(points, xy):
        rows += [
            {
                "metric": "umap_x",
                "token": name,
                "item_id": name,
                "space": space,
                "value": float(ux),
            },
            {
                "metric": "umap_y",
                "token": name,
                "item_id": name,
                "space": space,
                "value": float(uy),
            },
        ]
    return rows
