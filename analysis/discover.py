"""Find result files and checkpoints under run directories; identify each checkpoint and its ancestry.

Searching is recursive and skips hidden directories (atomic-write temp dirs such as ``.x.tmp``). A seed
comes from a path component ``seed<N>`` (``runs/N/seed0/<cell>/<stage>``), else the stage's config,
else 0.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)
CONDITION = ["dataset", "backbone", "split", "variant", "stage", "k", "pause_init", "rationale_source",
             "rationale_leaky"]
INFO = ["ckpt_path", "run", "seed", *[c for c in CONDITION if c != "split"], "parent", "also_from"]
_SEED = re.compile(r"^seed[-_]?(\d+)$")

Roots = str | Path | Sequence[str | Path]


def roots_of(root: Roots) -> list[Path]:
    return [Path(r) for r in ([root] if isinstance(root, (str, Path)) else root)]


def find(root: Roots, name: str) -> list[Path]:
    """Every file called ``name`` under the roots, skipping hidden directories; sorted, no duplicates."""
    found: set[Path] = set()
    for r in roots_of(root):
        if r.is_file() and r.name == name:
            found.add(r.resolve())
            continue
        for p in r.rglob(name):
            if not any(part.startswith(".") for part in p.relative_to(r).parts):
                found.add(p.resolve())
    return sorted(found)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        log.warning("skipping %s: %s", path, err)
        return None
    return obj if isinstance(obj, dict) else None


def maybe_json(path: Path) -> dict[str, Any]:
    return (read_json(path) if path.is_file() else None) or {}


def seed_from_path(path: Path) -> int | None:
    for part in reversed(Path(path).parts):
        m = _SEED.match(part)
        if m:
            return int(m.group(1))
    return None


def _config_seed(meta: dict[str, Any], stage: str) -> int | None:
    cfg = (meta.get("configs") or {}).get(stage)
    seed = cfg.get("seed") if isinstance(cfg, dict) else None
    return seed if isinstance(seed, int) else None


def ckpt_info(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The identifying columns of one checkpoint (see ``INFO``)."""
    rationale = meta.get("rationale") or {}
    dataset = meta.get("dataset")
    stage = meta.get("stage", "init")
    seed = seed_from_path(path)
    return {
        "ckpt_path": str(path), "run": path.parent.name, "stage": stage,
        "seed": seed if seed is not None else (_config_seed(meta, stage) or 0),
        "variant": meta.get("variant", "base"), "k": int(meta.get("k") or 0),
        "pause_init": meta.get("pause_init") or "", "backbone": str(meta.get("backbone") or ""),
        "dataset": str(dataset.get("name", "") if isinstance(dataset, dict) else dataset or ""),
        "rationale_source": str(rationale.get("source") or "") if isinstance(rationale, dict) else "",
        "rationale_leaky": bool(rationale.get("leaky")) if isinstance(rationale, dict) else False,
        "parent": str(meta.get("parent") or ""), "also_from": _also_from(meta, stage),
    }


def _also_from(meta: dict[str, Any], stage: str) -> str:
    """A second ancestor besides ``parent``: the stage config's ``pause_from`` (the pause-pretrain
    checkpoint whose pause embeddings a ``pause-sft`` started from), else empty."""
    cfg = (meta.get("configs") or {}).get(stage)
    ref = cfg.get("pause_from") if isinstance(cfg, dict) else None
    return str(ref) if ref else ""


def metas(root: Roots) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for p in find(root, "pauserec.json"):
        meta = read_json(p)
        if meta is not None:
            out.append((p.parent, meta))
    return out


def index_checkpoints(root: Roots) -> pd.DataFrame:
    """One row per checkpoint directory found: the ``INFO`` columns."""
    return pd.DataFrame([ckpt_info(path, meta) for path, meta in metas(root)], columns=INFO)


def resolve(ref: str | Path | None, index: pd.DataFrame, near: Path | None = None) -> dict | None:
    """The index row of a checkpoint named by a path (absolute, cwd- or ``near``-relative, or a suffix)."""
    if not ref or not len(index):
        return None
    ref = Path(ref)
    by_path = {row["ckpt_path"]: row for row in index.to_dict("records")}
    for cand in ([ref] if ref.is_absolute() else [Path.cwd() / ref] + ([near / ref] if near else [])):
        hit = by_path.get(str(cand.resolve()))
        if hit:
            return hit
    tail = ref.parts[-3:] if not ref.is_absolute() else ref.parts[-2:]
    matches = [r for p, r in by_path.items() if Path(p).parts[-len(tail):] == tail]
    if len(matches) > 1 and near is not None:  # a bare stage name: prefer the one beside ``near``
        matches = [r for r in matches if Path(r["ckpt_path"]).is_relative_to(near.resolve())]
    return matches[0] if len(matches) == 1 else None


def lineage_timings(timings: pd.DataFrame, index: pd.DataFrame, ckpt_path: str) -> pd.DataFrame:
    """Timing rows of a checkpoint and its ancestors (``parent`` and ``also_from``, e.g. the
    pause-pretrain checkpoint a pause-sft took its pause embeddings from): one row per stage, the
    nearest checkpoint's record first."""
    rows: list[pd.DataFrame] = []
    seen: set[str] = set()
    queue: list[tuple[str, Path | None]] = [(ckpt_path, None)]
    while queue:
        ref, near = queue.pop(0)
        info = resolve(ref, index, near) if ref else None
        if info is None or info["ckpt_path"] in seen:
            continue
        seen.add(info["ckpt_path"])
        own = timings[timings["ckpt_path"] == info["ckpt_path"]]
        rows.append(own[~own["timing_stage"].isin({r for f in rows for r in f["timing_stage"]})])
        near = Path(info["ckpt_path"]).parent
        queue += [(info["parent"], near), (info.get("also_from", ""), near)]
    return pd.concat(rows, ignore_index=True) if rows else timings.iloc[:0]
