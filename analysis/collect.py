"""Read result files into tidy pandas tables: a concatenation, because every file says what it is.

Under each root (searched recursively; hidden directories such as atomic-write temp dirs are
skipped):

- checkpoints: ``pauserec.json`` -> one row per checkpoint (its identity) and one per timed stage of
  its whole lineage (:func:`checkpoint_rows`, :func:`timing_rows`);
- evaluations (checkpoints and classical baselines alike): ``per_user.csv`` rows carry the identity
  of what was evaluated, the split and the eval seed; ``metrics.json`` the summary ->
  :func:`eval_rows`, :func:`summary_rows`;
- probes: ``results.csv`` beside a ``meta.json`` naming the probe; rows carry their checkpoint's
  identity -> :func:`probe_rows`;
- training logs: ``train_log.csv`` beside a ``pauserec.json`` -> :func:`train_log_rows`.

Paths in the tables are relative to the root they were found under.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pauserec import files
from pauserec.errors import UserError
from pauserec.evaluation.metrics import KS, ndcg_at_k, recall_at_k
from pauserec.model.checkpoint import IDENTITY, identity
from pauserec.registry import PARENT

log = logging.getLogger(__name__)
Roots = str | Path | Sequence[str | Path]
SETTINGS = {
    "n_pauses",
    "eval_seed",
    "train_seed",
    "format_version",
    "beams",
    "top_k",
    "batch_size",
    "latency_samples",
    "latency_batch_size",
    "cot_max_new_tokens",
    "n_users",
    "prompt_pauses",
    "max_history",
}  # not measurements


TEXT = [c for c in IDENTITY if c not in ("n_pauses", "train_seed", "rationale_leaky")]


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Identity columns as read back from CSV: empty text stays "" (not NaN), counts are ints, the
    training seed is a number or NaN (a deterministic baseline has none)."""
    for col in TEXT:
        if col in df.columns:
            df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    if "n_pauses" in df.columns:
        df["n_pauses"] = pd.to_numeric(df["n_pauses"], errors="coerce").fillna(0).astype(int)
    if "train_seed" in df.columns:
        df["train_seed"] = pd.to_numeric(df["train_seed"], errors="coerce")
    return df


def roots_of(root: Roots) -> list[Path]:
    return [Path(r) for r in ([root] if isinstance(root, (str, Path)) else root)]


def find(root: Roots, name: str) -> list[tuple[Path, Path]]:
    """(root, file) for every file called ``name`` under the roots, skipping hidden directories."""
    found: dict[Path, tuple[Path, Path]] = {}
    for r in roots_of(root):
        if r.is_file() and r.name == name:
            found.setdefault(r.resolve(), (r.parent, r))
            continue
        for p in sorted(r.rglob(name)):
            if not any(part.startswith(".") for part in p.relative_to(r).parts):
                found.setdefault(p.resolve(), (r, p))
    return [found[k] for k in sorted(found)]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or ``{}`` (with a warning) when it is missing, unreadable or not an
    object."""
    if not path.is_file():
        return {}
    try:
        obj = files.read_json(path)
    except (OSError, UserError) as err:
        log.warning("skipping %s: %s", path, err)
        return {}
    return obj if isinstance(obj, dict) else {}


def read_csv(path: Path, need: set[str]) -> pd.DataFrame | None:
    try:
        df = pd.read_csv(path, low_memory=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        log.warning("skipping %s: %s", path, err)
        return None
    if not need <= set(df.columns):
        log.warning(
            "skipping %s: it lacks column(s) %s", path, ", ".join(sorted(need - set(df.columns)))
        )
        return None
    return df


def rel(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` (posix), the form every table and report uses."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


RECIPE = ("epochs", "n_train", "lr", "batch_size")  # what the report's deviations section reads
SCHEDULE = ("batch_tokens", "max_steps", "warmup_ratio")  # with RECIPE: what compute matching reads
TIMING = ("wall_s", "device_hours", "tokens", "tokens_per_s", "device", "dtype")  # a timed stage


def start_of(meta: dict[str, Any]) -> str:
    """Where a checkpoint's stage started: its parent stage and the steps that parent trained."""
    parent = PARENT.get(meta.get("stage", "init"), "")
    steps = ((meta.get("timings") or {}).get(parent) or {}).get("steps")
    return f"{parent} ({steps} steps)" if parent and steps is not None else parent


def checkpoint_rows(root: Roots) -> pd.DataFrame:
    """One row per checkpoint: its identity (hash, dataset, backbone, variant, stage, cell, ...),
    path, its stage's recipe and schedule (epochs, n_train, lr, batch size, ...), the optimizer
    steps it took, where it started (:func:`start_of`), history length, how its new token rows were
    initialised (``token_init``, from the lineage's init checkpoint) and where it trained."""
    rows = []
    for base, p in find(root, "pauserec.json"):
        meta = read_json(p)
        if meta:
            stage = meta.get("stage", "init")
            cfg = (meta.get("configs") or {}).get(stage) or {}
            timing = (meta.get("timings") or {}).get(stage) or {}
            rows.append(
                {
                    **identity(meta, p.parent),
                    "ckpt_path": rel(base, p.parent),
                    **{k: cfg.get(k) for k in (*RECIPE, *SCHEDULE)},
                    "steps": timing.get("steps"),
                    "start": start_of(meta),
                    "max_history": (meta.get("dataset") or {}).get("max_history"),
                    "token_init": ((meta.get("configs") or {}).get("init") or {}).get("init"),
                    "device": timing.get("device"),
                    "dtype": timing.get("dtype"),
                }
            )
    trained = ("steps", "start", "max_history", "token_init", "device", "dtype")
    return tidy(pd.DataFrame(rows, columns=[*IDENTITY, "ckpt_path", *RECIPE, *SCHEDULE, *trained]))


def timing_rows(root: Roots) -> pd.DataFrame:
    """One row per (checkpoint, timed stage of its lineage): wall_s, device_hours, tokens,
    device."""
    rows = []
    for base, p in find(root, "pauserec.json"):
        meta = read_json(p)
        ident = identity(meta, p.parent) if meta else {}
        for stage, t in (meta.get("timings") or {}).items():
            if isinstance(t, dict):
                rows.append(
                    {
                        **ident,
                        "ckpt_path": rel(base, p.parent),
                        "timing_stage": stage,
                        **{k: t.get(k) for k in TIMING},
                    }
                )
    return tidy(pd.DataFrame(rows, columns=[*IDENTITY, "ckpt_path", "timing_stage", *TIMING]))


def per_user_metrics(frame: pd.DataFrame, ks=KS) -> pd.DataFrame:
    """``frame`` with ``recall@K`` and ``ndcg@K`` recomputed from its 1-based ``rank`` (0 =
    miss)."""
    out = frame.copy()
    rank = pd.to_numeric(out["rank"], errors="coerce").fillna(0).to_numpy()
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(rank, k)
        out[f"ndcg@{k}"] = ndcg_at_k(rank, k)
    return out


def eval_rows(root: Roots) -> pd.DataFrame:
    """Every evaluation's per-user rows (identity, split, eval_seed, user, target, rank,
    metrics)."""
    frames = []
    for base, p in find(root, "per_user.csv"):
        df = read_csv(p, {"user", "rank", "cell", "split"})
        if df is not None:
            df = per_user_metrics(
                df.drop(columns=[c for c in df.columns if c.startswith(("hit@", "ndcg@"))])
            )
            frames.append(df.assign(eval_dir=rel(base, p.parent)))
    if not frames:
        return pd.DataFrame(columns=[*IDENTITY, "split", "eval_seed", "eval_dir", "user", "rank"])
    out = tidy(pd.concat(frames, ignore_index=True))
    out["user"] = out["user"].astype(str)
    return out


def summary_rows(root: Roots) -> pd.DataFrame:
    """Summary measurements of every ``metrics.json``, long: identity, split, metric, value (numbers
    only; the per-batch latencies stay a list in ``latency_batches_ms``)."""
    rows = []
    for base, p in find(root, "metrics.json"):
        m = read_json(p)
        if "cell" not in m:
            continue
        ident = {k: m.get(k) for k in IDENTITY}
        info = {
            **ident,
            "split": m.get("split"),
            "eval_seed": m.get("eval_seed"),
            "eval_dir": rel(base, p.parent),
            "device": m.get("device", ""),
            "dtype": m.get("dtype", ""),
        }
        for key, value in m.items():
            if key in SETTINGS or key in IDENTITY or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and np.isfinite(value):
                rows.append({**info, "metric": key, "value": float(value)})
        for i, v in enumerate(m.get("latency_batches_ms") or []):
            rows.append({**info, "metric": "latency_batch_ms", "batch": i, "value": float(v)})
    cols = [
        *IDENTITY,
        "split",
        "eval_seed",
        "eval_dir",
        "device",
        "dtype",
        "metric",
        "value",
        "batch",
    ]
    return tidy(pd.DataFrame(rows, columns=cols))


def health_rows(root: Roots) -> pd.DataFrame:
    """Per evaluation: identity, split, the health flag (``user_independent``) and the share of
    users with their own top-10 list (``distinct_lists@10``)."""
    rows = []
    for base, p in find(root, "metrics.json"):
        m = read_json(p)
        if "cell" in m and "user_independent" in m:
            rows.append(
                {
                    **{k: m.get(k) for k in IDENTITY},
                    "split": m.get("split"),
                    "eval_dir": rel(base, p.parent),
                    "user_independent": bool(m["user_independent"]),
                    "distinct_lists@10": m.get("distinct_lists@10"),
                }
            )
    cols = [*IDENTITY, "split", "eval_dir", "user_independent", "distinct_lists@10"]
    return tidy(pd.DataFrame(rows, columns=cols))


def probe_rows(root: Roots) -> pd.DataFrame:
    """Every probe's tidy rows, plus ``probe`` (from its meta.json) and ``probe_dir``."""
    frames = []
    for base, p in find(root, "results.csv"):
        meta = read_json(p.parent / "meta.json")
        if "probe" not in meta:
            continue
        df = read_csv(p, {"metric", "value", "cell"})
        if df is not None:
            frames.append(df.assign(probe=meta["probe"], probe_dir=rel(base, p.parent)))
    if not frames:
        return pd.DataFrame(columns=[*IDENTITY, "metric", "value", "probe", "probe_dir"])
    return tidy(pd.concat(frames, ignore_index=True))


def log_rows(
    root: Roots, name: str = "train_log.csv", need: Sequence[str] = ("step", "loss")
) -> pd.DataFrame:
    """Every log file ``name`` beside a ``pauserec.json`` (the training log, or ``valid_log.csv``:
    the validation Recall@10 measured while the stage trained), with that checkpoint's identity."""
    frames = []
    for base, p in find(root, name):
        meta = read_json(p.parent / "pauserec.json")
        df = read_csv(p, set(need)) if meta else None
        if df is not None:
            frames.append(df.assign(**identity(meta, p.parent), ckpt_path=rel(base, p.parent)))
    return (
        tidy(pd.concat(frames, ignore_index=True))
        if frames
        else pd.DataFrame(columns=[*IDENTITY, *need])
    )


def train_log_rows(root: Roots) -> pd.DataFrame:
    """Every ``train_log.csv`` with the identity of the checkpoint beside it."""
    return log_rows(root)


def valid_log_rows(root: Roots) -> pd.DataFrame:
    """Every ``valid_log.csv`` (validation Recall@10 during training, most-popular on the same
    users)."""
    return log_rows(root, "valid_log.csv", ("step", "recall@10", "popular_recall@10"))


@dataclass
class Collected:
    """Everything found under the roots, one tidy table per kind of file."""

    ckpts: pd.DataFrame = field(default_factory=pd.DataFrame)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)  # summary metrics, long
    eval: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-user rows
    probes: pd.DataFrame = field(default_factory=pd.DataFrame)
    timings: pd.DataFrame = field(default_factory=pd.DataFrame)
    train_logs: pd.DataFrame = field(default_factory=pd.DataFrame)
    health: pd.DataFrame = field(default_factory=pd.DataFrame)
    valid_logs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def empty(self) -> bool:
        return not any(len(df) for df in (self.ckpts, self.runs, self.eval, self.probes))


def collect(root: Roots) -> Collected:
    """Read every kind of result file under the roots."""
    ckpts = checkpoint_rows(root)
    tables = [
        summary_rows(root),
        eval_rows(root),
        probe_rows(root),
        timing_rows(root),
        train_log_rows(root),
        health_rows(root),
        valid_log_rows(root),
    ]
    return Collected(ckpts, *(from_checkpoints(df, ckpts) for df in tables))


def from_checkpoints(
    df: pd.DataFrame, ckpts: pd.DataFrame, columns: Sequence[str] = ("control",)
) -> pd.DataFrame:
    """Identity columns that result files written before the column existed lack (empty there),
    filled in from the checkpoint the rows name by hash."""
    if not len(df) or not len(ckpts) or "ckpt_hash" not in df.columns:
        return df
    out = df.copy()
    for col in columns:
        if col not in out.columns:
            out[col] = ""
        known = ckpts.drop_duplicates("ckpt_hash").set_index("ckpt_hash")[col]
        blank = out[col].fillna("").astype(str) == ""
        out.loc[blank, col] = out.loc[blank, "ckpt_hash"].map(known).fillna("")
    return out


def collect_all(root: Roots) -> pd.DataFrame:
    """The one tidy table: every evaluation's summary metrics and every probe's rows (``kind`` says
    which)."""
    runs = summary_rows(root).assign(kind="metric")
    probes = probe_rows(root).assign(kind="probe")
    return pd.concat([df for df in (runs, probes) if len(df)] or [runs], ignore_index=True)
