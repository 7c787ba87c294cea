"""Our Semantic IDs beside a published index for the same catalog, on the levels both have.

Per side: collisions before de-duplication (the share of items whose SID another item also has, and
``1 - unique SIDs / items``, the share a de-dup level must separate), unique SIDs, and per level the
entropy (bits, of its maximum), the codes used, and the *pair cosine*: the mean cosine similarity of
the text embeddings of item pairs that share their codes up to that level. Entropy rewards spreading
items out; pair cosine checks that codes still group similar items (random codes would score the
catalog's mean pair cosine, printed for reference).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pauserec import sid
from pauserec.data import Item


def pair_cosine(codes: np.ndarray, emb: np.ndarray) -> list[float]:
    """Mean cosine over item pairs sharing their codes up to each level; ``codes`` is
    ``(n, levels)``."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)  # (n, d)
    out = []
    for level in range(codes.shape[1]):
        _, group = np.unique(codes[:, : level + 1], axis=0, return_inverse=True)
        group = group.reshape(-1)
        sums = np.zeros((group.max() + 1, x.shape[1]))
        np.add.at(sums, group, x)
        sizes = np.bincount(group).astype(float)
        pairs = (sizes * (sizes - 1)).sum()  # ordered pairs i != j in the same group
        dots = ((sums**2).sum(1) - sizes).sum()  # sum over those pairs of x_i . x_j (|x_i| = 1)
        out.append(float(dots / pairs) if pairs else math.nan)
    return out


def mean_pair_cosine(emb: np.ndarray) -> float:
    """The catalog's mean cosine over all item pairs (what random codes would score)."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    n = len(x)
    return float(((x.sum(0) ** 2).sum() - n) / (n * (n - 1)))


def summarise(codes: np.ndarray, emb: np.ndarray) -> dict:
    """:func:`pauserec.sid.report` of ``codes`` ``(n, levels)`` (no de-dup level) plus pair
    cosines."""
    report = sid.report(sid.add_dedup_level(codes))
    return {**report, "pair_cosine": pair_cosine(codes, emb)}


def compare(items: list[Item], ours: np.ndarray, path: str | Path, cfg: sid.SIDConfig) -> dict:
    """Side-by-side figures; ``ours`` ends in a de-dup level (as :func:`pauserec.sid.ids`
    returns)."""
    theirs, dedup = sid.load_index(path, items)
    if dedup:
        theirs = theirs[:, :-1]
    depth = min(ours.shape[1] - 1, theirs.shape[1])
    emb = sid.embeddings(items, cfg)
    return {
        "depth": depth,
        "items": len(items),
        "published": str(path),
        "random_pair_cosine": mean_pair_cosine(emb),
        "ours": summarise(ours[:, :depth], emb),
        "theirs": summarise(theirs[:, :depth], emb),
    }


def format_comparison(c: dict, ours_name: str) -> str:
    a, b = c["ours"], c["theirs"]
    rows = [
        ("collisions before de-dup", f"{a['collision_rate']:.2%}", f"{b['collision_rate']:.2%}"),
        ("  1 - unique/items", _excess(a), _excess(b)),
        (
            "unique SIDs before de-dup",
            f"{a['unique_before_dedup']:,}",
            f"{b['unique_before_dedup']:,}",
        ),
        ("de-dup codes needed", f"{a['dedup_codes']}", f"{b['dedup_codes']}"),
    ]
    for lv in range(c["depth"]):
        la, lb = a["per_level"][lv], b["per_level"][lv]
        rows.append((f"level {lv} entropy bits (of max)", _bits(la), _bits(lb)))
        rows.append(
            (f"level {lv} codes used", f"{la['used']}/{la['codes']}", f"{lb['used']}/{lb['codes']}")
        )
        rows.append(
            (
                f"level {lv} pair cosine",
                f"{a['pair_cosine'][lv]:.3f}",
                f"{b['pair_cosine'][lv]:.3f}",
            )
        )
    name_b = Path(c["published"]).name
    width = max(len(ours_name), len(name_b), 12)
    lines = [
        f"comparison on the first {c['depth']} levels, {c['items']:,} items "
        f"(pair cosine of random pairs {c['random_pair_cosine']:.3f})",
        f"{'':<30}  {ours_name:>{width}}  {name_b:>{width}}",
    ]
    lines += [f"{label:<30}  {x:>{width}}  {y:>{width}}" for label, x, y in rows]
    return "\n".join(lines)


def _excess(r: dict) -> str:
    return f"{1 - r['unique_before_dedup'] / r['items']:.2%}"


def _bits(level: dict) -> str:
    return (
        f"{level['entropy_bits']:.2f}/{math.log2(level['codes']):.2f} ({level['entropy_norm']:.3f})"
    )
