"""Costs of the main conditions: training device-hours along each lineage, inference latency."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from analysis.collect import Collected, lineage_timings
from analysis.conditions import with_labels


def per_seed(frame: pd.DataFrame, labels: dict[str, str], value: Callable[[pd.DataFrame], float]) -> dict:
    """{variant: {seed: value}} for the given main labels."""
    out: dict[str, dict[int, float]] = {}
    for variant, lab in labels.items():
        rows = frame[frame["label"] == lab]
        out[variant] = {int(s): value(g) for s, g in rows.groupby("seed")}
    return out


def training_cost(data: Collected, labels: dict[str, str]) -> tuple[dict, str]:
    """Device-hours per seed of the stages not shared by the pause and cot lineages."""
    index = with_labels(data.index)
    lineages: dict[str, dict[int, pd.DataFrame]] = {}
    for variant in ("pause", "cot"):
        rows = index[index["label"] == labels.get(variant, "")]
        lineages[variant] = {int(r.seed): lineage_timings(data.timings, data.index, r.ckpt_path)
                             for r in rows.itertuples()}
    shared = set.intersection(*[set(t["timing_stage"]) for v in lineages.values() for t in v.values()]
                              or [set()])
    out = {v: {s: float(pd.to_numeric(t.loc[~t["timing_stage"].isin(shared), "device_hours"]).sum())
               if len(t) else math.nan for s, t in per.items()} for v, per in lineages.items()}
    devices = {d for per in lineages.values() for t in per.values() for d in t["device"] if d}
    note = f"excludes shared stages {', '.join(sorted(shared)) or 'none'}"
    if len(devices) > 1:
        note += f"; WARNING: timed on different devices ({', '.join(sorted(devices))})"
    return out, note


def cost_frames(data: Collected, labels: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows: variant, seed, timing_stage, device_hours, device -- each main condition's whole
    lineage; latency rows: variant, seed, value in ms per user) for the figures and the cost table."""
    index, train = with_labels(data.index), []
    for variant, lab in labels.items():
        for r in index[index["label"] == lab].itertuples():
            t = lineage_timings(data.timings, data.index, r.ckpt_path)
            train.append(t[["timing_stage", "device_hours", "device"]].assign(variant=variant, seed=r.seed))
    runs = with_labels(data.runs)
    lat = runs[runs["metric"] == "latency_ms_per_sample"] if len(runs) else runs
    lat = pd.concat([lat[lat["label"] == lab].assign(variant=v) for v, lab in labels.items()] or [lat])
    train_df = pd.concat(train, ignore_index=True) if train else pd.DataFrame(
        columns=["timing_stage", "device_hours", "device", "variant", "seed"])
    return train_df, lat.reindex(columns=["variant", "seed", "value"])
