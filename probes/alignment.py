"""Are SID tokens in the same space as words? Token-, item- and geometry-level alignment of
SID-token embeddings with the words of the items' titles, plus SID-vs-title hidden states layer by
layer.

Writes ``results.csv`` (tidy; columns ``ckpt, stage, variant, metric, value`` plus ``matrix`` (input
/ output embeddings), ``level``, ``layer``, ``item_id``, ``token``, ``rank``, ``word``, ``group``,
``space`` where they apply), ``meta.json`` and ``figures/``. Every agreement metric ``m`` has a
permutation baseline ``m_baseline`` (items re-paired at random) and, where it is a test, ``m_p``;
item-level metrics also get ``m_random``: the value with every SID token's row replaced by a random
vector, i.e. what the SID code structure alone (items sharing codes have similar titles) produces.

    python -m probes.alignment CKPT [CKPT ...] --out DIR [--no-umap]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pauserec import tokens
from pauserec.config import arg
from pauserec.errors import UserError
from pauserec.model import backbone
from pauserec.model.checkpoint import Checkpoint
from probes import activations as act
from probes import similarity as sim
from probes._common import ProbeArgs, cli, entry, label
from probes.alignment_context import contextual, umap_rows

log = logging.getLogger(__name__)
__all__ = ["Args", "compute", "main", "run"]


@dataclass
class Args(ProbeArgs):
    """SID-token vs word-token embedding alignment (token, item, geometry and contextual levels)."""

    n_neighbours: int = arg(10, "words per SID token; k of mutual k-NN", min=1, deprecated=("--k",))
    n_perm: int = arg(20, "permutations for each baseline", min=1)
    max_words: int = arg(5000, "word tokens sampled for the geometry", min=2)
    max_items: int = arg(4000, "items sampled for CKA, k-NN, Procrustes", min=3)
    n_context: int = arg(32, "items for the contextual (hidden-state) probe", min=1)
    umap: bool = arg(True, "UMAP map of SID and word tokens (slower)")
    umap_words: int = arg(2000, "word tokens in the UMAP map", min=2)


@dataclass
class Items:
    """The items that have a title: their SID token ids and title token ids."""

    index: np.ndarray  # (n,) catalog positions
    item_ids: list[str]
    sid: torch.Tensor  # (n, n_levels) token ids
    title: list[list[int]]  # token ids of " " + title
    words: list[set[str]]  # lower-cased words of title + categories (and their readable tokens)


def item_table(ckpt: Checkpoint, readable: dict[int, str]) -> Items:
    tok, cat = ckpt.tokenizer, ckpt.catalog
    keep = np.array([i for i, it in enumerate(cat.items) if it.title.strip()])
    if len(keep) < 3:
        raise UserError(
            f"only {len(keep)} catalog item(s) have a title; the alignment probe needs 3+"
        )
    titles = [" " + cat.items[i].title for i in keep]
    title_ids = tok(titles, add_special_tokens=False)["input_ids"]
    cats = tok([" " + cat.items[i].categories for i in keep], add_special_tokens=False)["input_ids"]
    words = []
    for n, i in enumerate(keep):
        text = f"{cat.items[i].title} {cat.items[i].categories}"
        words.append(
            {w.lower() for w in act.WORD.findall(text)}
            | {readable[t] for t in title_ids[n] + cats[n] if t in readable}
        )
    sid = torch.tensor([tok.convert_tokens_to_ids(list(cat.items[i].sid)) for i in keep])
    return Items(keep, [cat.items[i].item_id for i in keep], sid, title_ids, words)


def title_view(w: torch.Tensor, title: list[list[int]]) -> torch.Tensor:
    """Mean embedding of each item's title tokens (n, d_model)."""
    flat = torch.tensor([t for ids in title for t in ids])
    offsets = torch.tensor([0] + [len(ids) for ids in title[:-1]]).cumsum(0)
    return torch.nn.functional.embedding_bag(flat, w.float(), offsets, mode="mean")


def token_level(w: torch.Tensor, items: Items, rng: np.random.Generator) -> list[dict]:
    """Cosine of each item's SID embedding (mean over levels, and per level) with its title's
    mean."""
    title = title_view(w, items.title)  # (n, d_model)
    sid = w[items.sid].float()  # (n, n_levels, d_model)
    perm = act.permutation(len(title), rng)
    obs = act.cosine_rows(sid.mean(1), title).numpy()
    base = act.cosine_rows(sid.mean(1), title[perm]).numpy()
    rows = [
        {"metric": "cosine_sid_title", "item_id": i, "value": v}
        for i, v in zip(items.item_ids, obs)
    ]
    rows += [
        {"metric": "cosine_sid_title_baseline", "item_id": i, "value": v}
        for i, v in zip(items.item_ids, base)
    ]
    for level in range(sid.shape[1]):
        rows.append(
            {
                "metric": "cosine_sid_title_level",
                "level": level,
                "value": float(act.cosine_rows(sid[:, level], title).mean()),
            }
        )
        rows.append(
            {
                "metric": "cosine_sid_title_level_baseline",
                "level": level,
                "value": float(act.cosine_rows(sid[:, level], title[perm]).mean()),
            }
        )
    return rows


def neighbours(
    w: torch.Tensor,
    items: Items,
    readable: dict[int, str],
    names: dict[int, str],
    k: int,
    rng: np.random.Generator,
) -> list[dict]:
    """Each SID token's ``k`` nearest words, and precision@k against the words of the items that
    carry it (baseline: the words of the items carrying another token of the same level)."""
    word_ids = torch.tensor(sorted(readable))
    vocab = [readable[i] for i in word_ids.tolist()]
    carriers: dict[int, list[int]] = {}
    for n, row in enumerate(items.sid.tolist()):
        for t in row:
            carriers.setdefault(t, []).append(n)
    sid_ids = sorted(carriers)
    sims = (
        torch.nn.functional.normalize(w[sid_ids].float(), dim=1)
        @ torch.nn.functional.normalize(w[word_ids].float(), dim=1).T
    )  # (n_sid, n_words)
    top = sims.topk(min(k, len(vocab)), dim=1)
    rows, found = [], []
    for r, t in enumerate(sid_ids):
        found.append([vocab[j] for j in top.indices[r].tolist()])
        rows += [
            {
                "metric": "neighbour_cosine",
                "token": names[t],
                "rank": n + 1,
                "word": word,
                "value": float(v),
            }
            for n, (word, v) in enumerate(zip(found[r], top.values[r]))
        ]
    wordsets = [set().union(*(items.words[n] for n in carriers[t])) for t in sid_ids]
    levels = np.array([tokens.parse_sid(names[t])[0][0] for t in sid_ids])
    other = np.arange(len(sid_ids))
    for level in np.unique(levels):  # baseline: the words of another token of the same level
        idx = np.flatnonzero(levels == level)
        other[idx] = idx[act.permutation(len(idx), rng)]
    prec = np.array([np.mean([x in wordsets[r] for x in found[r]]) for r in range(len(found))])
    base = np.array(
        [np.mean([x in wordsets[other[r]] for x in found[r]]) for r in range(len(found))]
    )
    for level in [None, *np.unique(levels).tolist()]:
        sel = np.ones(len(prec), bool) if level is None else levels == level
        rows.append({"metric": "word_precision", "level": level, "value": float(prec[sel].mean())})
        rows.append(
            {"metric": "word_precision_baseline", "level": level, "value": float(base[sel].mean())}
        )
    return rows


def item_level(
    w: torch.Tensor, items: Items, k: int, n_perm: int, max_items: int, rng: np.random.Generator
) -> list[dict]:
    """Linear CKA, mutual k-NN and Procrustes between the SID view and the title view of (at most
    ``max_items`` sampled) items."""
    sub = np.sort(rng.choice(len(items.title), min(max_items, len(items.title)), replace=False))
    title = title_view(w, [items.title[i] for i in sub]).numpy()  # (n, d_model)
    sid = w[items.sid[sub]].float()  # (n, n_levels, d_model)
    mean, concat = sid.mean(1).numpy(), sid.flatten(1).numpy()
    results = {
        ("cka", "mean"): sim.cka(mean, title, n_perm, rng),
        ("cka", "concat"): sim.cka(concat, title, n_perm, rng),
        ("mknn", "mean"): sim.mutual_knn(mean, title, k, n_perm, rng),
        ("procrustes_residual", "mean"): sim.procrustes(mean, title, n_perm, rng),
    }
    rand = random_rows(w, items.sid[sub], rng).mean(1).numpy()  # same code structure, random rows
    reference = {
        "cka": sim.cka(rand, title, 0, rng)[0],
        "mknn": sim.mutual_knn(rand, title, k, 0, rng)[0],
        "procrustes_residual": sim.procrustes_residual(rand, title),
    }
    rows = []
    for (metric, view), (obs, base, p) in results.items():
        rows += [
            {"metric": metric, "space": view, "value": obs},
            {"metric": f"{metric}_baseline", "space": view, "value": base},
            {"metric": f"{metric}_p", "space": view, "value": p},
        ]
        if view == "mean":
            rows.append({"metric": f"{metric}_random", "space": view, "value": reference[metric]})
    return rows


def random_rows(w: torch.Tensor, sid: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """(n, n_levels, d_model) SID embeddings with every SID token's row replaced by a random
    Gaussian row of the real rows' scale: what the item-level metrics give from the code structure
    alone."""
    ids, inverse = torch.unique(sid, return_inverse=True)
    scale = float(w[ids].float().std()) or 1.0
    fresh = torch.from_numpy(rng.normal(0.0, scale, (len(ids), w.shape[1])).astype(np.float32))
    return fresh[inverse]


def geometry(
    w: torch.Tensor,
    sid_ids: list[int],
    word_ids: list[int],
    special: dict[str, int],
    rng: np.random.Generator,
    n_perm: int,
) -> list[dict]:
    """SID cloud vs word cloud: centroids, norms, linear separability; where ``<pause>`` sits."""
    s, x = w[sid_ids].double(), w[word_ids].double()  # (n_sid, d_model), (n_words, d_model)
    cs, cw = s.mean(0), x.mean(0)
    spread = (x - cw).norm(dim=1).square().mean().sqrt()  # RMS radius of the word cloud
    dist = float((cs - cw).norm())
    pooled = torch.cat([s, x]).numpy()
    base = []
    for _ in range(n_perm):  # baseline: the same two cloud sizes drawn from the pooled tokens
        idx = rng.permutation(len(pooled))
        base.append(
            float(np.linalg.norm(pooled[idx[: len(s)]].mean(0) - pooled[idx[len(s) :]].mean(0)))
        )
    rows = [
        {"metric": "centroid_distance", "value": dist},
        {"metric": "centroid_distance_baseline", "value": float(np.mean(base))},
        {"metric": "centroid_distance_rel", "value": dist / float(spread)},
        {"metric": "centroid_cosine", "value": float(torch.cosine_similarity(cs, cw, dim=0))},
    ]
    groups = {"sid": s, "word": x, **{name: w[[i]].double() for name, i in special.items()}}
    for group, m in groups.items():
        norms = m.norm(dim=1).numpy()
        rows.append({"metric": "norm_mean", "group": group, "value": float(norms.mean())})
        for q in (5, 25, 50, 75, 95):
            rows.append(
                {
                    "metric": f"norm_q{q:02d}",
                    "group": group,
                    "value": float(np.percentile(norms, q)),
                }
            )
    acc, acc_base = separability(s.numpy(), x.numpy(), rng)
    rows += [
        {"metric": "separability_acc", "value": acc},
        {"metric": "separability_acc_baseline", "value": acc_base},
    ]
    for name, i in special.items():
        v = w[i].double()
        d_sid, d_word = float((v - cs).norm()), float((v - cw).norm())
        rows += [
            {"metric": "dist_to_sid_centroid", "group": name, "value": d_sid},
            {"metric": "dist_to_word_centroid", "group": name, "value": d_word},
            {
                "metric": "cos_to_sid_centroid",
                "group": name,
                "value": float(torch.cosine_similarity(v, cs, dim=0)),
            },
            {
                "metric": "cos_to_word_centroid",
                "group": name,
                "value": float(torch.cosine_similarity(v, cw, dim=0)),
            },
            {
                "metric": "bridge_position",
                "group": name,
                "value": d_sid / max(d_sid + d_word, 1e-12),
            },
        ]
    return rows


def separability(s: np.ndarray, x: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """5-fold accuracy of a logistic regression telling SID rows from (as many) word rows; and the
    same with shuffled labels (~0.5)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(len(s), len(x))
    data = np.concatenate(
        [s[rng.choice(len(s), n, replace=False)], x[rng.choice(len(x), n, replace=False)]]
    )
    labels = np.repeat([1, 0], n)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
    folds = min(5, n)
    acc = float(cross_val_score(clf, data, labels, cv=folds).mean())
    base = float(cross_val_score(clf, data, rng.permutation(labels), cv=folds).mean())
    return acc, base


def compute(ckpt: Checkpoint, args: Args) -> pd.DataFrame:
    """All alignment measurements of one checkpoint as tidy rows."""
    rng = np.random.default_rng(args.seed)
    tok = ckpt.tokenizer
    readable = act.readable_words(tok)
    if len(readable) < 10:
        raise UserError(f"tokenizer has only {len(readable)} readable word tokens")
    items = item_table(ckpt, readable)
    sid_ids = sorted(set(items.sid.flatten().tolist()))
    names = dict(zip(sid_ids, tok.convert_ids_to_tokens(sid_ids)))
    words = sorted(readable)
    sample = sorted(rng.choice(words, min(args.max_words, len(words)), replace=False).tolist())
    special = {t: tok.convert_tokens_to_ids(t) for t in (tokens.PAUSE, *tokens.THINK_TOKENS)}
    frames = []
    for matrix, w in backbone.embedding_matrices(ckpt.model).items():
        w = w.detach().float().cpu()
        rows = token_level(w, items, rng) + neighbours(
            w, items, readable, names, args.n_neighbours, rng
        )
        rows += item_level(w, items, args.n_neighbours, args.n_perm, args.max_items, rng)
        rows += geometry(w, sid_ids, sample, special, rng, args.n_perm)
        if args.umap:
            rows += umap_rows(
                w, sid_ids, names, sample, readable, special, args.umap_words, args.seed
            )
        frames.append(pd.DataFrame(rows).assign(matrix=matrix))
        log.info("%s embeddings: done", matrix)
    frames.append(pd.DataFrame(contextual(ckpt, items.index, args.n_context, rng)))
    df = pd.concat(frames, ignore_index=True)
    for key, value in reversed(label(ckpt).items()):
        df.insert(0, key, value)
    return df


run, main = entry(Args, compute, "alignment", language_model=True)


if __name__ == "__main__":
    cli(main)
