"""The one place figure style is set: a fixed colour per variant, paper-sized figures, PDF + PNG.

Figures are plain :class:`matplotlib.figure.Figure` objects, never registered with pyplot: no
backend is chosen at import, a figure returned as a notebook cell's value renders inline exactly
once, and the CLI saves files without a display.
"""

from __future__ import annotations

from pathlib import Path

import seaborn as sns
from matplotlib import rcParams
from matplotlib.figure import Figure

from pauserec.registry import STAGES

VARIANT_COLORS = {
    "baseline": "#8c564b",
    "base": "#7f7f7f",
    "plain": "#1f77b4",
    "pause": "#d62728",
    "cot": "#2ca02c",
}
VARIANT_ORDER = ["baseline", "base", "plain", "pause", "cot"]
STAGE_ORDER = ["init", *STAGES]
WIDTH = 5.5  # inches: one column of a two-column paper page is ~3.3, a full width ~6.8
CI_CAPTION = "Error bars: 95% bootstrap confidence intervals."


def apply() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.0)
    rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 160,
            "savefig.bbox": "tight",
            "axes.titlesize": 10,
            "axes.labelsize": 9,
            "legend.fontsize": 8,
        }
    )


def figure(
    ncols: int = 1, nrows: int = 1, height: float = 3.0, layout: str | None = None, **kwargs
):
    """A themed (fig, axes) pair sized for a paper; ``kwargs`` go to ``Figure.subplots``."""
    apply()
    width = WIDTH if ncols == 1 else min(0.6 * WIDTH * ncols, 14.0)
    fig = Figure(figsize=(width, height * nrows), layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def palette(variants) -> dict[str, str]:
    """Colours for the given variants (unknown names get seaborn's next colours)."""
    unknown = [v for v in variants if v not in VARIANT_COLORS]
    extra = dict(
        zip(unknown, colors(len(unknown) + 4)[4:] if len(unknown) <= 6 else colors(len(unknown)))
    )
    return {v: VARIANT_COLORS.get(v) or extra[v] for v in variants}


def save_figure(fig: Figure, path: str | Path) -> None:
    """Save ``fig`` as ``path.png`` and ``path.pdf``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(path.with_suffix(f".{ext}"))


def colors(n: int) -> list[str]:
    """``n`` distinct colours for non-variant categories (stages, perturbations), cycling tab10."""
    base = sns.color_palette("tab10", 10).as_hex()
    return [base[i % len(base)] for i in range(n)]
