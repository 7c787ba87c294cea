"""The paper's three diagnostics, measured from probe results (tidy rows, see
analysis.figures_probes).

- misalignment grows with CoT training: an alignment metric at ``cot-sft`` against the last earlier
  stage present (``sft``, else ``cpt``, else ``init``); signed so that positive = more misaligned
  (``cosine_sid_title``, ``cka``, ``mknn`` fall; ``procrustes_residual``, ``centroid_distance``
  rise);
- verbalisation gap after CoT: chance-corrected ``logit_acc_cc - gen_acc_cc`` at ``cot-sft`` on the
  world-knowledge questions (``query`` fact and title; SID questions are reported separately), minus
  the same gap at the earlier stage when present; positive = the model knows more than it can say;
- sensitivity to rationale quality: mean ``delta_recall@10`` (perturbed minus clean rationale) over
  the degrading perturbations (not ``oracle``/``upper_bound`` rows, not the ``paraphrase`` control),
  per user; negative = sensitive.

Rows are paired by ``item_id`` / ``user_id`` when both sides have the same ids; otherwise the two
sides are resampled independently; single values give a point estimate without a CI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.conditions import seed_list
from pauserec.evaluation import stats

MISALIGNMENT = {
    "cosine_sid_title": -1,
    "cka": -1,
    "mknn": -1,
    "procrustes_residual": 1,
    "centroid_distance": 1,
}
REFERENCE_STAGES = ("sft", "cpt", "init")
CLEAN = {"", "none", "clean", "original", "gold", "identity"}
UPPER_BOUNDS = {"oracle"}  # the rationale names the target: an upper bound, not a degradation
CONTROLS = {"paraphrase"}  # same meaning, other words: a control, not a degradation


@dataclass
class Estimate:
    """A measured effect (``missing`` says why there is none): one probe run per training seed gives
    ``n_seeds`` seeds; the CI is over ``n_units`` items or users."""

    value: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    setting: str = "—"
    note: str = ""
    missing: str = ""
    n_seeds: int = 1
    n_units: int = 1
    unit: str = "items"


def _n_seeds(rows: pd.DataFrame) -> int:
    return max(1, rows["train_seed"].nunique()) if "train_seed" in rows.columns else 1


def _rows(probes: pd.DataFrame, probe: str, metrics: set[str] | None = None) -> pd.DataFrame:
    if not len(probes):
        return probes
    mask = probes["probe"] == probe if "probe" in probes.columns else False
    if metrics is not None:
        mask = mask | probes["metric"].isin(metrics)
    return probes[mask]


def embedding_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Input-embedding rows: ``matrix`` empty or ``input``; ``space`` empty or ``mean`` (for the
    metrics that have several views); ``layer`` empty, else the smallest layer (per metric)."""
    if "matrix" in rows.columns and rows["matrix"].notna().any():
        rows = rows[rows["matrix"].isna() | (rows["matrix"] == "input")]
    if "space" in rows.columns and len(rows):
        named = rows["metric"].isin(set(MISALIGNMENT) | {f"{m}_baseline" for m in MISALIGNMENT})
        rows = rows[~named | rows["space"].isna() | (rows["space"] == "mean")]
    if "layer" not in rows.columns or rows["layer"].isna().all():
        return rows
    if rows["layer"].isna().any():
        return rows[rows["layer"].isna()]
    return rows[rows["layer"] == rows.groupby("metric")["layer"].transform("min")]


def _keys(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """Columns that pair rows of ``a`` and ``b`` (item/user ids, with query/field when present)."""

    def usable(col: str) -> bool:
        return (
            col in a.columns and col in b.columns and a[col].notna().all() and b[col].notna().all()
        )

    ids = [c for c in ("item_id", "user_id") if usable(c)]
    return [c for c in ("query", "field") if usable(c)] + ids if ids else []


def difference(a: pd.DataFrame, b: pd.DataFrame, cfg) -> tuple[float, float, float, str]:
    """``mean(a.value) - mean(b.value)`` with a CI: paired by item/user ids when possible."""
    n_res, seed = cfg.n_resamples, cfg.seed
    keys = _keys(a, b)
    if keys:
        sa, sb = a.groupby(keys)["value"].mean(), b.groupby(keys)["value"].mean()
        if set(sa.index) == set(sb.index):
            c = stats.compare(sa, sb, n_resamples=n_res, seed=seed)
            return c.diff, c.diff_lo, c.diff_hi, f"paired over {c.n} ({', '.join(keys)})"
        return (*stats.bootstrap_diff_ci(sa, sb, n_res, seed), f"unpaired over {', '.join(keys)}")
    return (*stats.bootstrap_diff_ci(a["value"], b["value"], n_res, seed), "over rows")


def _setting(rows: pd.DataFrame) -> str:
    def join(col: str) -> str:
        vals = sorted({str(v) for v in rows.get(col, pd.Series(dtype=str)).dropna() if str(v)})
        return "/".join(vals) or "?"

    n = next(
        (
            rows[c].nunique()
            for c in ("item_id", "user_id")
            if c in rows.columns and rows[c].notna().any()
        ),
        None,
    )
    seeds = seed_list(rows.get("train_seed", []))
    return f"{join('dataset')}, {join('backbone')}" + (f"; n={n}" if n else "") + f"; seeds {seeds}"


def _reference(rows: pd.DataFrame) -> str | None:
    return next((s for s in REFERENCE_STAGES if (rows["stage"] == s).any()), None)


def alignment_claim(probes: pd.DataFrame, cfg) -> Estimate:
    """Change in misalignment from the last pre-CoT stage to ``cot-sft`` (positive = grows)."""
    rows = embedding_rows(_rows(probes, "alignment", set(MISALIGNMENT)))
    if not len(rows):
        return Estimate(missing="not run: no alignment probe results")
    for metric, sign in MISALIGNMENT.items():
        m = rows[rows["metric"] == metric]
        cot, ref = m[m["stage"] == "cot-sft"], _reference(m)
        if not len(cot) or ref is None:
            continue
        d, lo, hi, how = difference(cot, m[m["stage"] == ref], cfg)
        lo, hi = sorted((sign * lo, sign * hi))
        ref_mean = m.loc[m["stage"] == ref, "value"].mean()
        note = (
            f"{metric}: cot-sft {cot['value'].mean():.4f} vs {ref} {ref_mean:.4f} ({how}); "
            "positive = more misaligned"
        )
        pause = m[m["stage"] == "pause-sft"]
        if len(pause):
            note += f"; pause-sft change {sign * (pause['value'].mean() - ref_mean):+.4f}"
        n = cot["item_id"].nunique() if "item_id" in cot.columns else len(cot)
        return Estimate(sign * d, lo, hi, _setting(m), note, n_seeds=_n_seeds(cot), n_units=n)
    return Estimate(
        missing="not run: alignment results need cot-sft and an earlier stage (sft/cpt/init)"
    )


def _gaps(rows: pd.DataFrame, suffix: str) -> pd.DataFrame:
    """``logit_X - gen_X`` per question (or per checkpoint) of one checkpoint, as rows with
    ``value``."""
    gen, logit = rows[rows["metric"] == f"gen_{suffix}"], rows[rows["metric"] == f"logit_{suffix}"]
    keys = _keys(gen, logit)
    if keys:
        diff = (logit.groupby(keys)["value"].mean() - gen.groupby(keys)["value"].mean()).dropna()
        return diff.rename("value").reset_index()
    return pd.DataFrame({"value": [logit["value"].mean() - gen["value"].mean()]})


WORLD = ("fact", "title")  # world-knowledge questions; SID questions are reported separately


def verbalization_rows(probes: pd.DataFrame, queries: tuple[str, ...] = WORLD) -> pd.DataFrame:
    """Per-question ``gen_*`` / ``logit_*`` rows of the given queries."""
    rows = _rows(probes, "verbalization")
    rows = rows[rows["metric"].astype(str).str.match(r"^(gen|logit)_")] if len(rows) else rows
    if "query" in rows.columns:
        rows = rows[rows["query"].isin(queries)]
    return rows


def verbalization_claim(probes: pd.DataFrame, cfg, queries: tuple[str, ...] = WORLD) -> Estimate:
    """Chance-corrected generation-vs-logit gap at ``cot-sft`` (minus the pre-CoT gap when
    measured)."""
    rows = verbalization_rows(probes, queries)
    cot = rows[rows["stage"] == "cot-sft"] if len(rows) else rows
    names = set(cot.get("metric", []))
    suffix = next((s for s in ("acc_cc", "acc") if {f"gen_{s}", f"logit_{s}"} <= names), None)
    if suffix is None:
        return Estimate(
            missing=f"not run: no gen_acc/logit_acc verbalisation results ({'/'.join(queries)}) "
            "at cot-sft"
        )
    gap_cot = _gaps(cot, suffix)
    n_units, seeds = len(gap_cot), _n_seeds(cot)
    what = f"logit_{suffix} - gen_{suffix} on {'/'.join(queries)} questions"
    ref = _reference(rows[rows["metric"].isin([f"gen_{suffix}", f"logit_{suffix}"])])
    if ref is None:
        mean, lo, hi = stats.bootstrap_mean_ci(gap_cot["value"], cfg.n_resamples, cfg.seed)
        ok = len(gap_cot) > 1
        return Estimate(
            mean,
            lo if ok else math.nan,
            hi if ok else math.nan,
            _setting(cot),
            f"{what} at cot-sft (no pre-CoT stage measured)",
            n_seeds=seeds,
            n_units=n_units,
        )
    gap_ref = _gaps(rows[rows["stage"] == ref], suffix)
    d, lo, hi, how = difference(gap_cot, gap_ref, cfg)
    note = (
        f"{what}: cot-sft {gap_cot['value'].mean():+.4f} "
        f"vs {ref} {gap_ref['value'].mean():+.4f} ({how})"
    )
    return Estimate(d, lo, hi, _setting(cot), note, n_seeds=seeds, n_units=n_units)


def degrading(rows: pd.DataFrame) -> pd.Series:
    """Rows whose perturbation lowers the rationale's quality: not clean, not an upper bound
    (``upper_bound`` true, ``oracle``), not a meaning-preserving control (``paraphrase``)."""
    if "perturbation" not in rows.columns:
        return pd.Series(True, index=rows.index)
    name = rows["perturbation"].fillna("").astype(str).str.lower()
    ok = ~name.isin(CLEAN | UPPER_BOUNDS | CONTROLS)
    if "upper_bound" in rows.columns:
        ok &= ~rows["upper_bound"].astype(str).str.lower().isin(("true", "1", "1.0"))
    return ok


def rationale_claim(probes: pd.DataFrame, cfg) -> Estimate:
    """Mean ``delta_recall@10`` over degrading perturbations (cot variant when present)."""
    rows = _rows(probes, "rationale", {"delta_recall@10"})
    rows = rows[rows["metric"] == "delta_recall@10"] if len(rows) else rows
    if (rows.get("variant", pd.Series(dtype=str)) == "cot").any():
        rows = rows[rows["variant"] == "cot"]
    kept = rows[degrading(rows)] if len(rows) else rows
    if not len(kept):
        return Estimate(missing="not run: no delta_recall@10 rationale-probe results")
    by_user = "user_id" in kept.columns and kept["user_id"].notna().all()
    values = kept.groupby("user_id")["value"].mean() if by_user else kept["value"]
    mean, lo, hi = stats.bootstrap_mean_ci(values, cfg.n_resamples, cfg.seed)
    per = (
        rows.groupby("perturbation")["value"].mean()
        if "perturbation" in rows.columns
        else pd.Series()
    )
    excluded = sorted(set(per.index) - set(kept.get("perturbation", [])))
    note = "delta = perturbed - clean, averaged over degrading perturbations; " + ", ".join(
        f"{k}: {v:+.4f}" for k, v in per.items()
    )
    if excluded:
        note += f" (not averaged: {', '.join(map(str, excluded))})"
    if not (kept["variant"] == "cot").any():
        note += (
            f"; WARNING: measured on {'/'.join(sorted(set(kept['variant'])))}, not a CoT checkpoint"
        )
    if len(values) < 2:
        lo = hi = math.nan
    return Estimate(
        mean,
        lo,
        hi,
        _setting(kept),
        note,
        n_seeds=_n_seeds(kept),
        n_units=len(values),
        unit="users",
    )
