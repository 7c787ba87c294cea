"""Picking tidy probe rows for figures: by metric, by optional columns, per checkpoint in order."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import theme
from analysis.figures import NoData


def ckpt_order(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(ckpt, stage) pairs in order of appearance."""
    return list(dict.fromkeys(zip(df["ckpt"], df["stage"])))


def has(df: pd.DataFrame, *metrics: str) -> bool:
    """Whether ``df`` holds rows of every one of ``metrics`` (a frame without a metric column holds
    none)."""
    return "metric" in df.columns and all((df["metric"] == m).any() for m in metrics)


def col(df: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name``, or an all-NaN column where the rows have none."""
    return df[name] if name in df.columns else pd.Series(np.nan, index=df.index)


def pick(df: pd.DataFrame, metric: str, space: str | None = None, **eq) -> pd.DataFrame:
    """Rows of ``metric`` (and ``space``) whose columns equal ``eq`` (``None``: the column is
    empty)."""
    rows = df[df["metric"] == metric]
    if space is not None:
        rows = rows[col(rows, "space") == space]
    for key, value in eq.items():
        c = col(rows, key)
        rows = rows[c.isna()] if value is None else rows[c == value]
    return rows


def of(df: pd.DataFrame, key: tuple[str, str]) -> pd.DataFrame:
    """The rows of one (ckpt, stage)."""
    return df[(df["ckpt"] == key[0]) & (df["stage"] == key[1])]


def metric_rows(probes: pd.DataFrame, metrics) -> pd.DataFrame:
    """Rows of any of ``metrics``; :class:`NoData` when there are none."""
    rows = probes[probes["metric"].isin(metrics)] if len(probes) else probes
    if not len(rows):
        raise NoData(f"no probe rows with metric {' / '.join(sorted(metrics))}")
    return rows


def stage_x(stage: str) -> int:
    """A stage's position on a training-trajectory axis."""
    return theme.STAGE_ORDER.index(stage) if stage in theme.STAGE_ORDER else len(theme.STAGE_ORDER)


def grid(n: int, height: float = 2.4):
    """A figure with ``n`` panels, three per row; returns (fig, list of axes)."""
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig, axes = theme.figure(ncols=ncols, nrows=nrows, height=height, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])
