"""The paper's claims, our measurement of each, and a verdict.

Verdicts: ``reproduced`` when the 95% CI lies on the claimed side of 0, ``not reproduced`` when it lies
on the other side, ``inconclusive at this scale`` when it crosses 0 or data is missing (the ``why``
column says which). Cost claims (training device-hours, latency) are single measurements per seed: with
one seed there is no CI and the verdict follows the sign of the point estimate (``why`` says so).
Metric claims compare the *main* condition of each variant (see analysis.conditions), paired over users
after averaging seeds; training cost sums device-hours over the stages the two lineages do not share.
"k = 5 most robust" and "pretrained init best" compare the claimed setting with the best other setting
of the same sweep (everything else equal), in the primary metric. Claims are evaluated separately for
each (dataset, backbone) found.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from analysis import costs, stats
from analysis.claims_probes import Estimate, alignment_claim, rationale_claim, verbalization_claim
from analysis.collect import Collected
from analysis.conditions import PAPER_K, PRIMARY, main_labels, with_labels

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive at this scale"


@dataclass
class Claim:
    """One row of the claims table."""

    key: str
    claim: str
    paper: str
    measured: str = "—"
    ci: str = "—"
    setting: str = "—"
    verdict: str = INCONCLUSIVE
    why: str = "not measured"
    value: float = math.nan
    lo: float = math.nan
    hi: float = math.nan


def verdict(value: float, lo: float, hi: float, direction: int = 1,
            point_ok: bool = False) -> tuple[str, str]:
    """(verdict, why) for an effect claimed to have sign ``direction`` (+1 gain, -1 reduction)."""
    if value is None or not np.isfinite(value):
        return INCONCLUSIVE, "no data"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        if not point_ok:
            return INCONCLUSIVE, "no CI (a single value); point estimate only"
        ok = direction * value > 0
        return (REPRODUCED if ok else NOT_REPRODUCED), "single measurement, no CI"
    a, b = sorted((direction * lo, direction * hi))
    if a > 0:
        return REPRODUCED, "95% CI excludes 0 on the claimed side"
    if b < 0:
        return NOT_REPRODUCED, "95% CI excludes 0 on the opposite side"
    return INCONCLUSIVE, "95% CI crosses 0"


def fmt(x: float, unit: str = "%", signed: bool = True) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:+.2f}{unit}" if signed else f"{x:.3f}{unit}"


def fmt_ci(lo: float, hi: float, unit: str = "%") -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "—"
    return f"[{lo:+.2f}, {hi:+.2f}]{unit}"


def setting(frame: pd.DataFrame, labels: list[str] | None = None, users: int | None = None) -> str:
    """'dataset / backbone; N users; seeds ...' of the rows (restricted to ``labels``)."""
    if labels is not None and "label" in frame.columns:
        frame = frame[frame["label"].isin(labels)]
    if not len(frame):
        return "—"
    parts = [" / ".join(sorted({str(v) for v in frame[c].dropna() if str(v)}) or ["?"])
             for c in ("dataset", "backbone")]
    seeds = sorted({int(s) for s in frame["seed"].dropna()}) if "seed" in frame.columns else []
    n = users if users is not None else (frame["user"].nunique() if "user" in frame.columns else None)
    text = f"{parts[0]}, {parts[1]}"
    if n:
        text += f"; {n:,} users"
    return text + f"; seeds {','.join(map(str, seeds)) or '?'}"


def fill(claim: Claim, value: float, lo: float, hi: float, direction: int, unit: str = "%",
         point_ok: bool = False, paper_value: float | None = None, note: str = "",
         sign_ci: tuple[float, float] | None = None) -> Claim:
    """Set measured/CI/verdict of ``claim`` from an estimate.

    ``sign_ci``: the CI the verdict is read from when it differs from the shown one -- the absolute
    paired difference, since a relative CI degenerates when one side is all zeros (e.g. -100% everywhere).
    """
    claim.value, claim.lo, claim.hi = value, lo, hi
    claim.measured, claim.ci = fmt(value, unit), fmt_ci(lo, hi, unit)
    claim.verdict, claim.why = verdict(value, *(sign_ci or (lo, hi)), direction, point_ok)
    if paper_value is not None and np.isfinite(lo) and np.isfinite(hi):
        inside = lo <= paper_value <= hi
        claim.why += f"; paper's {paper_value:+g}{unit} is {'inside' if inside else 'outside'} the CI"
    if note:
        claim.why += f"; {note}"
    return claim


def summary_claim(claim: Claim, runs: pd.DataFrame, treat: str, base: str, cfg: dict) -> Claim:
    """Without per-user rows: the relative difference of the summary metrics, no CI (inconclusive)."""
    metric = cfg.get("metric", PRIMARY)
    rows = runs[runs["metric"] == metric] if len(runs) else runs
    means = rows.groupby("label")["value"].mean() if len(rows) else pd.Series(dtype=float)
    if treat not in means or base not in means or not means[base]:
        claim.why = "not run: no per-user rows and no summary metrics for both conditions"
        return claim
    rel = 100.0 * (means[treat] - means[base]) / means[base]
    claim.setting = setting(rows, [treat, base])
    return fill(claim, rel, math.nan, math.nan, +1, note=f"no per_user.csv, so no paired CI; {metric}: "
                f"{means[treat]:.4f} ({treat}) vs {means[base]:.4f} ({base}) from metrics summaries")


def paired_claim(claim: Claim, per_user: pd.DataFrame, treat: str | None, base: str | None,
                 paper_value: float | None, cfg: dict, runs: pd.DataFrame | None = None) -> Claim:
    """Relative improvement of ``treat`` over ``base`` in the primary metric, paired over users."""
    if not treat or not base:
        claim.why = f"not run: needs both conditions (have {treat or '—'} and {base or '—'})"
        return claim
    metric = cfg.get("metric", PRIMARY)
    rows = per_user[per_user["label"].isin([treat, base])] if len(per_user) else per_user
    if not len(rows) or not {treat, base} <= set(rows["label"]):
        return summary_claim(claim, runs if runs is not None else pd.DataFrame(), treat, base, cfg)
    avg = stats.mean_over_seeds(rows, ["label"], [metric])
    try:
        c = stats.compare(avg[avg.label == treat].set_index("user")[metric],
                          avg[avg.label == base].set_index("user")[metric], metric, (treat, base),
                          cfg.get("n_resamples", stats.N_RESAMPLES), cfg.get("seed", 0))
    except ValueError as err:
        claim.why = f"{err}"
        return claim
    claim.setting = setting(per_user, [treat, base], c.n)
    note = (f"{metric}: {c.mean_treatment:.4f} ({treat}) vs {c.mean_baseline:.4f} ({base}); "
            f"Wilcoxon p={c.p:.3g}")
    return fill(claim, c.rel, c.rel_lo, c.rel_hi, +1, paper_value=paper_value, note=note,
                sign_ci=(c.diff_lo, c.diff_hi))


def ablation_claim(claim: Claim, per_user: pd.DataFrame, main: str | None, column: str,
                   is_claimed: Callable[[object], bool], cfg: dict) -> Claim:
    """The claimed setting of ``column`` (e.g. k = 5) against the best other setting, pause variant."""
    if main is None or not len(per_user) or not (per_user["label"] == main).any():
        claim.why = "not run: no per-user evaluation of a pause condition"
        return claim
    ref = per_user[per_user["label"] == main].iloc[0]
    same = [c for c in ("dataset", "backbone", "split", "stage", "k", "pause_init", "rationale_source")
            if c != column]
    rows = per_user[(per_user["variant"] == "pause")
                    & np.logical_and.reduce([per_user[c].fillna("").astype(str) == str(ref[c])
                                             for c in same])]
    metric = cfg.get("metric", PRIMARY)
    avg = stats.mean_over_seeds(rows, ["label", column], [metric])
    means = avg.groupby("label")[metric].mean()
    setting_of = avg.groupby("label")[column].first()
    claimed = [lab for lab in means.index if is_claimed(setting_of[lab])]
    others = [lab for lab in means.index if not is_claimed(setting_of[lab])]
    if not claimed or not others:
        have = ", ".join(str(v) for v in sorted(set(setting_of), key=str)) or "none"
        claim.why = f"not run: the sweep needs the claimed and another {column} (have {have})"
        return claim
    best_claimed = max(claimed, key=means.get)
    best_other = max(others, key=means.get)
    a = avg[avg.label == best_claimed].set_index("user")[metric]
    b = avg[avg.label == best_other].set_index("user")[metric]
    try:
        c = stats.compare(a, b, metric, (best_claimed, best_other), cfg.get("n_resamples", stats.N_RESAMPLES),
                          cfg.get("seed", 0))
    except ValueError as err:
        claim.why = str(err)
        return claim
    claim.setting = setting(rows, [best_claimed, best_other], c.n)
    ranked = means.sort_values(ascending=False).index
    order = ", ".join(f"{setting_of[lab]}: {means[lab]:.4f}" for lab in ranked)
    return fill(claim, c.rel, c.rel_lo, c.rel_hi, +1, sign_ci=(c.diff_lo, c.diff_hi),
                note=f"vs best other {column}={setting_of[best_other]}; {metric} by {column}: {order}")


def relative_change_claim(claim: Claim, per_seed: dict, paper_value: float, unit_note: str,
                          frame: pd.DataFrame, labels: list[str], note: str = "") -> Claim:
    """``100 * (pause - cot) / cot`` per shared seed; a t-CI across seeds when there are several."""
    p, c = per_seed.get("pause", {}), per_seed.get("cot", {})
    seeds = sorted(s for s in set(p) & set(c) if np.isfinite(p[s]) and np.isfinite(c[s]) and c[s] > 0)
    if not seeds:
        claim.why = f"not run: no {unit_note} for both pause and cot on a shared seed"
        return claim
    rel = [100.0 * (p[s] - c[s]) / c[s] for s in seeds]
    mean, lo, hi = stats.seed_ci(rel)
    claim.setting = setting(frame, labels) if len(frame) else "—"
    mean_p, mean_c = np.mean([p[s] for s in seeds]), np.mean([c[s] for s in seeds])
    detail = f"{unit_note}: pause {mean_p:.4g} vs cot {mean_c:.4g}"
    return fill(claim, mean, lo, hi, -1, point_ok=True, paper_value=paper_value,
                note="; ".join(x for x in (detail, note) if x))


def probe_claim(claim: Claim, est: Estimate, direction: int, unit: str = "") -> Claim:
    if est.missing:
        claim.why = est.missing
        return claim
    claim.setting = est.setting
    return fill(claim, est.value, est.lo, est.hi, direction, unit=unit, note=est.note)


def all_main_labels(data: Collected, per_user: pd.DataFrame, runs: pd.DataFrame) -> dict[str, str]:
    """Main label per variant: from per-user evaluations, else summaries, else the checkpoints found
    (so cost claims work on trained-but-unevaluated variants)."""
    out = main_labels(with_labels(data.index))
    out.update(main_labels(runs))
    out.update(main_labels(per_user))
    return out


def dataset_groups(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The (dataset, backbone) pairs in ``frame``, sorted."""
    if not len(frame) or not {"dataset", "backbone"} <= set(frame.columns):
        return []
    pairs = frame[["dataset", "backbone"]].fillna("").astype(str).drop_duplicates()
    return sorted(map(tuple, pairs.to_numpy()))


def subset(data: Collected, dataset: str, backbone: str) -> Collected:
    """The part of ``data`` for one (dataset, backbone); probe rows without a dataset are kept."""
    def part(df: pd.DataFrame, loose: bool = False) -> pd.DataFrame:
        if not len(df) or "dataset" not in df.columns:
            return df
        ok = (df["dataset"].fillna("") == dataset) & (df["backbone"].fillna("") == backbone)
        return df[ok | (df["dataset"].fillna("") == "")] if loose else df[ok]

    return Collected(part(data.index), part(data.runs), part(data.eval), part(data.probes, True),
                     part(data.timings), part(data.train_logs), data.probe_figures)


def evaluate(data: Collected, n_resamples: int = stats.N_RESAMPLES, seed: int = 0,
             metric: str = PRIMARY, split: str = "test") -> pd.DataFrame:
    """The claims table: one row per claim and (dataset, backbone) found (see :class:`Claim`)."""
    groups = dataset_groups(data.eval if len(data.eval) else data.index)
    frames = [evaluate_one(subset(data, d, b), n_resamples, seed, metric, split) for d, b in groups]
    return pd.concat(frames, ignore_index=True) if frames else evaluate_one(data, n_resamples, seed,
                                                                             metric, split)


def evaluate_one(data: Collected, n_resamples: int = stats.N_RESAMPLES, seed: int = 0,
                 metric: str = PRIMARY, split: str = "test") -> pd.DataFrame:
    """The claims table for data from one (dataset, backbone)."""
    cfg = {"n_resamples": n_resamples, "seed": seed, "metric": metric}
    per_user = with_labels(data.eval)
    per_user = per_user[per_user["split"] == split] if len(per_user) else per_user
    runs = with_labels(data.runs)
    runs = runs[runs["split"] == split] if len(runs) else runs
    labels = all_main_labels(data, per_user, runs)
    claims = [
        paired_claim(Claim("vs_sft", "PauseRec beats next-item SFT", f"gain in {metric}"), per_user,
                     labels.get("pause"), labels.get("plain"), None, cfg, runs),
        paired_claim(Claim("vs_cot", "PauseRec beats explicit CoT", "+6.22%"), per_user,
                     labels.get("pause"), labels.get("cot"), 6.22, cfg, runs),
    ]
    cost, note = costs.training_cost(data, labels)
    lab = [labels.get("pause", ""), labels.get("cot", "")]
    claims.append(relative_change_claim(Claim("train_cost", "Training cost vs CoT (device-hours)", "−65%"),
                                        cost, -65.0, "device-hours", with_labels(data.index), lab, note))
    latency = runs[(runs["metric"] == "latency_ms_per_sample")] if len(runs) else runs
    lat = costs.per_seed(latency, labels, lambda g: float(g["value"].mean())) if len(latency) else {}
    claims.append(relative_change_claim(Claim("latency", "Inference latency vs CoT", "−71.3%"), lat, -71.3,
                                        "ms/sample", latency, lab))
    claims.append(ablation_claim(Claim("k5", "k = 5 pauses is most robust", f"best at k={PAPER_K}"),
                                 per_user, labels.get("pause"), "k", lambda k: int(k) == PAPER_K, cfg))
    claims.append(ablation_claim(Claim("init", "Pretrained pause init is best", "pretrained best"),
                                 per_user, labels.get("pause"), "pause_init",
                                 lambda v: "pretrain" in str(v), cfg))
    claims += [
        probe_claim(Claim("misalignment", "Embedding misalignment grows with CoT training",
                          "grows"), alignment_claim(data.probes, cfg), +1),
        probe_claim(Claim("verbalization", "Verbalisation gap after CoT", "gap > 0"),
                    verbalization_claim(data.probes, cfg), +1),
        probe_claim(Claim("rationale", "CoT is sensitive to rationale quality", "recall drops"),
                    rationale_claim(data.probes, cfg), -1),
    ]
    return pd.DataFrame([asdict(c) for c in claims])
