"""Read result files into tidy pandas tables. Reads files only; never imports ``probes``.

Under each root (searched recursively; hidden directories such as atomic-write temp dirs are skipped):

- checkpoints: ``pauserec.json`` (variant, stage, k, pause_init, rationale, backbone, dataset, metrics,
  timings, parent) -> :func:`index_checkpoints`, :func:`collect_runs`, :func:`collect_timings`;
- evaluations: ``metrics.json`` + ``per_user.csv`` (user, target, rank; 0 = miss) -> :func:`collect_eval`.
  An evaluation is matched to its checkpoint by ``metrics.json["ckpt"]``, else the nearest ancestor
  directory holding ``pauserec.json`` (``runs/N/<stage>/eval/``), else ``runs/N/<name>`` for
  ``runs/N/eval/<name>/``. Per-user ``recall@K`` / ``ndcg@K`` are recomputed from ``rank``;
- probes: ``results.csv`` beside a ``meta.json`` with a ``probe`` key, or anywhere under a ``probes/``
  directory -> :func:`collect_probes`;
- training logs: ``train_log.csv`` in checkpoint directories -> :func:`collect_train_logs`.

Seeds and checkpoint identity come from :mod:`analysis.discover`; an evaluation's own ``metrics.json``
(variant, stage, k, seed, split) and a ``seed<N>`` in its path take precedence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.discover import (
    CONDITION,
    INFO,
    Roots,
    ckpt_info,
    find,
    index_checkpoints,
    lineage_timings,
    maybe_json,
    metas,
    read_json,
    resolve,
    seed_from_path,
)
from analysis.stats import ndcg_at, recall_at

log = logging.getLogger(__name__)
KS = (1, 5, 10, 20)
PROBES = ("alignment", "attention", "verbalization", "rationale")
_PROBE_BY_METRIC = {"attn_mass": "attention", "lens_rank": "attention", "lens_top1": "attention",
                    "cosine_sid_title": "alignment", "cka": "alignment", "mknn": "alignment",
                    "delta_recall@10": "rationale", "kl": "rationale"}
_NOT_METRICS = {"k", "seed", "format_version", "beams", "top_k", "batch_size", "latency_samples",
                "latency_batch_size", "cot_max_new_tokens"}  # settings, not measurements
__all__ = ["CONDITION", "INFO", "Collected", "collect", "collect_all", "collect_eval", "collect_probes",
           "collect_runs", "collect_timings", "collect_train_logs", "find", "index_checkpoints",
           "lineage_timings", "per_user_metrics", "probe_figures", "read_json", "resolve"]


def _eval_ckpt(evaldir: Path, metrics: dict, index: pd.DataFrame) -> dict | None:
    hit = resolve(metrics.get("ckpt"), index, evaldir)
    by_path = {row["ckpt_path"]: row for row in index.to_dict("records")}
    for anc in [evaldir, *evaldir.parents]:
        if hit:
            break
        hit = by_path.get(str(anc))
    if not hit and evaldir.parent.name == "eval":
        hit = by_path.get(str(evaldir.parent.parent / evaldir.name))
    return hit


def _eval_info(evaldir: Path, metrics: dict, index: pd.DataFrame) -> dict[str, Any]:
    """Checkpoint info of an evaluation, overridden by what ``metrics.json`` says itself."""
    info = dict(_eval_ckpt(evaldir, metrics, index) or {c: "" for c in INFO})
    for key in ("variant", "stage", "k", "seed"):
        if metrics.get(key) not in (None, ""):
            info[key] = metrics[key]
    seed = seed_from_path(evaldir)
    info["seed"] = int(seed if seed is not None else (info.get("seed") or 0))
    info["k"] = int(info.get("k") or 0)
    info["variant"] = info.get("variant") or "base"
    info["split"] = metrics.get("split") or "test"
    info["eval_dir"] = str(evaldir)
    return info


def _eval_dirs(root: Roots) -> list[Path]:
    return sorted({p.parent for p in find(root, "per_user.csv") + find(root, "metrics.json")})


def per_user_metrics(frame: pd.DataFrame, ks: Iterable[int] = KS) -> pd.DataFrame:
    """``frame`` with ``recall@K`` and ``ndcg@K`` recomputed from its 1-based ``rank`` (0 = miss)."""
    out = frame.copy()
    rank = pd.to_numeric(out["rank"], errors="coerce").fillna(0).to_numpy()
    for k in ks:
        out[f"recall@{k}"] = recall_at(rank, k)
        out[f"ndcg@{k}"] = ndcg_at(rank, k)
    return out


def collect_eval(root: Roots) -> pd.DataFrame:
    """Per-user evaluation rows of every ``per_user.csv``: info columns + user, target, rank, metrics."""
    index = index_checkpoints(root)
    frames = []
    for evaldir in _eval_dirs(root):
        if not (evaldir / "per_user.csv").is_file():
            continue
        metrics = maybe_json(evaldir / "metrics.json")
        try:
            rows = pd.read_csv(evaldir / "per_user.csv")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            log.warning("skipping %s: %s", evaldir / "per_user.csv", err)
            continue
        if not {"user", "rank"} <= set(rows.columns):
            log.warning("skipping %s: no user/rank columns", evaldir / "per_user.csv")
            continue
        keep = [c for c in ("user", "target", "rank") if c in rows.columns]
        rows = per_user_metrics(rows[keep])
        for key, value in _eval_info(evaldir, metrics, index).items():
            rows[key] = value
        frames.append(rows)
    if not frames:
        return pd.DataFrame(columns=[*INFO, "split", "eval_dir", "user", "rank"])
    return _one_eval_per_condition(frames)


def _one_eval_per_condition(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Keep one evaluation per (condition, seed, split): the one with most users, then the newest."""
    def key(f: pd.DataFrame) -> tuple:
        return tuple(str(f[c].iloc[0]) for c in (*CONDITION, "seed")) if len(f) else ("",)

    def rank(f: pd.DataFrame) -> tuple:
        return len(f), (Path(f["eval_dir"].iloc[0]) / "per_user.csv").stat().st_mtime if len(f) else 0

    best: dict[tuple, pd.DataFrame] = {}
    for f in frames:
        k = key(f)
        if k in best:
            keep, drop = sorted((best[k], f), key=rank, reverse=True)
            log.warning("two evaluations of one condition: using %s, ignoring %s",
                        keep["eval_dir"].iloc[0], drop["eval_dir"].iloc[0])
            f = keep
        best[k] = f
    return pd.concat(best.values(), ignore_index=True)


def _metric_rows(info: dict[str, Any], split: str, summary: dict, source: str) -> list[dict]:
    return [{**info, "split": split, "source": source, "metric": m, "value": float(v)}
            for m, v in summary.items() if m not in _NOT_METRICS
            and isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)]


def collect_runs(root: Roots) -> pd.DataFrame:
    """Summary metrics, long: one row per (checkpoint or eval dir, split, metric).

    ``source`` is ``checkpoint`` (``pauserec.json["metrics"][split]``) or ``eval`` (``metrics.json``).
    """
    rows: list[dict] = []
    for path, meta in metas(root):
        info = ckpt_info(path, meta)
        for split, summary in (meta.get("metrics") or {}).items():
            if isinstance(summary, dict):
                rows += _metric_rows({**info, "eval_dir": ""}, split, summary, "checkpoint")
    index = index_checkpoints(root)
    for evaldir in _eval_dirs(root):
        metrics = maybe_json(evaldir / "metrics.json")
        if metrics:
            info = _eval_info(evaldir, metrics, index)
            rows += _metric_rows(info, info.pop("split"), metrics, "eval")
    cols = [*INFO, "split", "eval_dir", "source", "metric", "value"]
    return pd.DataFrame(rows, columns=cols)


def collect_timings(root: Roots) -> pd.DataFrame:
    """One row per (checkpoint, timed stage): ``wall_s, device_hours, tokens, tokens_per_s, device``.

    Nested ``timings {stage: {...}}`` give one row per stage; flat numbers (``sid_build_s``, written by
    ``init-ckpt`` and carried along by later stages) are summed into one ``init`` row.
    ``device_hours`` falls back to ``wall_s / 3600``.
    """
    rows = []
    for path, meta in metas(root):
        info = ckpt_info(path, meta)
        timings = meta.get("timings") or {}
        flat = sum(v for v in timings.values() if isinstance(v, (int, float)))
        entries = {k: v for k, v in timings.items() if isinstance(v, dict)}
        if flat and "init" not in entries:
            entries["init"] = {"wall_s": flat}
        for stage, t in entries.items():
            wall = t.get("wall_s")
            hours = t.get("device_hours", wall / 3600 if isinstance(wall, (int, float)) else None)
            rows.append({**info, "timing_stage": stage, "wall_s": wall, "device_hours": hours,
                         "tokens": t.get("tokens"), "tokens_per_s": t.get("tokens_per_s"),
                         "device": str(t.get("device") or "")})
    cols = [*INFO, "timing_stage", "wall_s", "device_hours", "tokens", "tokens_per_s", "device"]
    return pd.DataFrame(rows, columns=cols)


def _probe_name(meta: dict, results: pd.DataFrame, path: Path) -> str:
    if meta.get("probe") in PROBES:
        return meta["probe"]
    parts = path.parts
    if "probes" in parts[:-1]:
        name = parts[parts.index("probes") + 1]
        if name in PROBES:
            return name
    metrics = set(results.get("metric", pd.Series(dtype=str)).astype(str))
    for m in metrics:
        if m.startswith(("gen_", "logit_")):
            return "verbalization"
        if m in _PROBE_BY_METRIC or m.endswith("_baseline"):
            return _PROBE_BY_METRIC.get(m, "alignment")
    return str(meta.get("probe") or path.name)


def _probe_dirs(root: Roots) -> list[Path]:
    dirs = []
    for p in find(root, "results.csv"):
        meta = maybe_json(p.parent / "meta.json")
        if (meta and "probe" in meta) or "probes" in p.parts[:-1]:
            dirs.append(p.parent)
    return dirs


def collect_probes(root: Roots) -> pd.DataFrame:
    """Every probe's tidy rows, plus ``probe`` (module name), ``probe_dir``, ``dataset``, ``backbone``."""
    index, frames = index_checkpoints(root), []
    for d in _probe_dirs(root):
        meta = maybe_json(d / "meta.json")
        try:
            df = pd.read_csv(d / "results.csv")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            log.warning("skipping %s: %s", d / "results.csv", err)
            continue
        if not {"variant", "metric", "value"} <= set(df.columns):
            log.warning("skipping %s: lacks variant/metric/value columns", d / "results.csv")
            continue
        df["probe"], df["probe_dir"] = _probe_name(meta, df, d), str(d)
        ckpts = [resolve(c, index, d) for c in (meta.get("args") or {}).get("ckpt") or []]
        for key in ("dataset", "backbone"):
            found = {c[key] for c in ckpts if c}
            df[key] = found.pop() if len(found) == 1 else ""
        if "seed" not in df.columns:
            df["seed"] = (meta.get("args") or {}).get("seed", 0)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["ckpt", "stage", "variant", "metric", "value", "probe", "probe_dir"])
    return pd.concat(frames, ignore_index=True)


def probe_figures(root: Roots) -> dict[str, list[Path]]:
    """PNG figures the probes saved themselves (``<probe dir>/figures/*.png``), by probe name."""
    out: dict[str, list[Path]] = {}
    for d in _probe_dirs(root):
        pngs = sorted((d / "figures").glob("*.png")) if (d / "figures").is_dir() else []
        if pngs:
            meta = maybe_json(d / "meta.json")
            out.setdefault(_probe_name(meta, pd.DataFrame(), d), []).extend(pngs)
    return out


def collect_train_logs(root: Roots) -> pd.DataFrame:
    """Every ``train_log.csv`` with its checkpoint's info columns."""
    index, frames = index_checkpoints(root), []
    for p in find(root, "train_log.csv"):
        try:
            df = pd.read_csv(p)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            log.warning("skipping %s: %s", p, err)
            continue
        info = resolve(p.parent, index) or {"variant": "base", "stage": p.parent.name, "seed": 0}
        for key in ("variant", "stage", "seed", "k", "dataset", "backbone", "ckpt_path"):
            df[key] = info.get(key, "")
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def collect_all(root: Roots) -> pd.DataFrame:
    """The one tidy table: every run's summary metrics and every probe's rows (``kind`` says which)."""
    runs = collect_runs(root).assign(kind="metric")
    probes = collect_probes(root).assign(kind="probe")
    return pd.concat([df for df in (runs, probes) if len(df)] or [runs], ignore_index=True)


@dataclass
class Collected:
    """Everything found under the roots, one tidy table per kind of file."""

    index: pd.DataFrame
    runs: pd.DataFrame
    eval: pd.DataFrame
    probes: pd.DataFrame
    timings: pd.DataFrame
    train_logs: pd.DataFrame
    probe_figures: dict[str, list[Path]] = field(default_factory=dict)

    def empty(self) -> bool:
        return not any(len(df) for df in (self.index, self.runs, self.eval, self.probes))


def collect(root: Roots) -> Collected:
    """Read every kind of result file under the roots."""
    return Collected(index_checkpoints(root), collect_runs(root), collect_eval(root), collect_probes(root),
                     collect_timings(root), collect_train_logs(root), probe_figures(root))
