"""Costs of the conditions: whole-lineage training device-hours, inference latency per batch.

Every checkpoint's ``pauserec.json`` records the timings of its whole lineage (its parent's stages,
the pause-pretrain checkpoint a pause-sft took its pause row from, and its own stage; wall time
accumulated across resumes), so a condition's training cost is the sum over its own record -- shared
stages included and shown separately, never guessed from directory layouts.
"""

from __future__ import annotations

import pandas as pd

SHARED = ("init", "cpt", "sft")  # stages the pause and cot lineages share


def training_rows(timings: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Timing rows of each labelled condition's checkpoints: role, cell, train_seed, timing_stage,
    device_hours, device, shared (the stage is one of :data:`SHARED`)."""
    frames = []
    for role, cell in labels.items():
        rows = (
            timings[(timings["cell"] == cell) & (timings["stage"] != "init")]
            if len(timings)
            else timings
        )
        if len(rows):
            frames.append(rows.assign(role=role, shared=rows["timing_stage"].isin(SHARED)))
    cols = ["role", "cell", "train_seed", "timing_stage", "device_hours", "device", "shared"]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]


def per_seed_hours(train: pd.DataFrame, role: str, shared: bool | None = None) -> dict[int, float]:
    """{train_seed: device-hours} of a role's lineage (``shared``: only shared / only own
    stages)."""
    rows = train[train["role"] == role]
    if shared is not None:
        rows = rows[rows["shared"] == shared]
    hours = pd.to_numeric(rows["device_hours"], errors="coerce")
    return {int(s): float(h) for s, h in hours.groupby(rows["train_seed"].fillna(0)).sum().items()}


def latency_rows(runs: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Per-batch latency (ms per sample) of each labelled condition: role, cell, train_seed, batch,
    value, device, dtype."""
    rows = runs[runs["metric"] == "latency_batch_ms"] if len(runs) else runs
    frames = [rows[rows["cell"] == cell].assign(role=role) for role, cell in labels.items()]
    cols = ["role", "cell", "train_seed", "batch", "value", "device", "dtype"]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def devices(train: pd.DataFrame, latency: pd.DataFrame) -> str:
    """Where the costs were measured, e.g. ``cpu, 2 thread(s) (bf16)``; several are listed."""
    where = set(train["device"].dropna().astype(str)) if len(train) else set()
    where |= {
        f"{d} ({t})" for d, t in zip(latency.get("device", []), latency.get("dtype", [])) if d
    }
    return "; ".join(sorted(w for w in where if w)) or "—"
