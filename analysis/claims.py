"""The paper's claims, our measurement of each, and a verdict that noise cannot fool.

Every claim compares named cells (see :mod:`analysis.conditions`) with an effect and interval from
:mod:`analysis.verdicts`: quality claims pair users within training seeds and seeds across conditions;
cost claims compare whole-lineage device-hours per seed; latency claims compare timed batches. Each claim
states its direction and minimum meaningful effect (:class:`Config`); Holm runs over the whole table.
"PauseRec beats SFT" and "pretrained pause matters" are judged against the compute-matched controls
(same start, epochs, LR and data as pause-sft). Claims are evaluated per (dataset, backbone).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from analysis import costs, verdicts
from analysis.claims_probes import Estimate, alignment_claim, rationale_claim, verbalization_claim
from analysis.collect import Collected
from analysis.conditions import (
    BASELINES,
    PRIMARY,
    main_labels,
    matching,
    seed_list,
    strongest_baseline,
    with_labels,
)
from analysis.verdicts import Effect, Rule
from pauserec.registry import PAPER_PAUSES

PAPER_COT = ("+6.22% (vs OneRec-Think: CoT-SFT + RL; the paper's best of 12 metrics; ours has no RL stage, "
             "so it is compared with CoT-SFT)")


@dataclass
class Config:
    """How claims are judged: the primary metric, the main CoT source and each claim's minimum effect."""

    metric: str = PRIMARY
    split: str = "test"
    main_rationale: str = "template"
    quality_margin: float = field(default=verdicts.REL_MARGIN, metadata={"help": "% of the baseline"})
    cost_margin: float = field(default=10.0, metadata={"help": "% of CoT-SFT's device-hours"})
    latency_margin: float = field(default=10.0, metadata={"help": "% of CoT-SFT's latency"})
    probe_margin: float = field(default=0.01, metadata={"help": "absolute, in the probe's units"})
    n_resamples: int = 2000  # bootstrap resamples of the probes' CIs over items/users
    seed: int = 0


@dataclass
class Claim:
    """One row of the claims table."""

    key: str
    claim: str
    paper: str
    compared: str = "—"
    measured: str = "—"
    ci: str = "—"
    setting: str = "—"
    verdict: str = verdicts.INCONCLUSIVE
    why: str = "not measured"
    p_holm: float = math.nan
    effect: Effect | None = field(default=None, repr=False)
    rule: Rule | None = field(default=None, repr=False)

    def row(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("effect", "rule")}
        e = self.effect or Effect()
        return {**out, "value": e.value, "lo": e.lo, "hi": e.hi, "rel": e.rel, "rel_lo": e.rel_lo,
                "rel_hi": e.rel_hi, "n_seeds": e.n_seeds, "method": e.method}


def _fmt(e: Effect, relative: bool) -> tuple[str, str]:
    """(measured, CI) as text: relative percent where defined, else the absolute difference."""
    if relative and np.isfinite(e.rel):
        ci = f"[{e.rel_lo:+.2f}%, {e.rel_hi:+.2f}%]" if np.isfinite(e.rel_lo) else "—"
        return f"{e.rel:+.2f}%", ci
    if not np.isfinite(e.value):
        return "—", "—"
    ci = f"[{e.lo:+.4g}, {e.hi:+.4g}]" if np.isfinite(e.lo) else "—"
    return f"{e.value:+.4g}", ci


def _setting(per_user: pd.DataFrame, cells: list[str]) -> str:
    rows = per_user[per_user["label"].isin(cells)]
    if not len(rows):
        return "—"
    return (f"{'/'.join(sorted(set(rows['dataset'].astype(str))))}, "
            f"{'/'.join(sorted(set(rows['backbone'].astype(str)) - {''})) or '—'}; "
            f"{rows['user'].nunique():,} users; seeds {seed_list(rows['train_seed'])}")


def with_seeds(per_user: pd.DataFrame, treat: str) -> pd.DataFrame:
    """Rows whose seed is unknown (a deterministic classical baseline) repeated for each of the
    treatment's training seeds, so they pair with every seed."""
    seeds = sorted(per_user.loc[per_user["label"] == treat, "train_seed"].dropna().unique())
    fixed = per_user["train_seed"].isna()
    if not fixed.any() or not seeds:
        return per_user.assign(train_seed=per_user["train_seed"].fillna(0))
    copies = [per_user[fixed].assign(train_seed=s) for s in seeds]
    return pd.concat([per_user[~fixed], *copies], ignore_index=True)


def quality(claim: Claim, per_user: pd.DataFrame, treat: str | None, base: str | None, cfg: Config,
            note: str = "") -> Claim:
    """Relative gain of ``treat`` over ``base`` in the primary metric, paired over users and seeds."""
    claim.rule = Rule(+1, cfg.quality_margin, abs_margin=0.001)
    if not treat or not base:
        claim.why = f"not run: needs both conditions (have {treat or '—'} and {base or '—'})"
        return claim
    claim.compared = f"{treat} vs {base}"
    try:
        claim.effect = verdicts.paired_effect(with_seeds(per_user, treat), treat, base, cfg.metric,
                                              label="label", seed="train_seed", user="user")
    except ValueError as err:
        claim.why = f"not compared: {err}"
        return claim
    claim.measured, claim.ci = _fmt(claim.effect, True)
    claim.setting = _setting(per_user, [treat, base])
    claim.why = note
    return claim


def best_other(per_user: pd.DataFrame, cells: list[str], metric: str) -> str | None:
    """The cell of ``cells`` with the highest mean ``metric``."""
    rows = per_user[per_user["label"].isin(cells)]
    return str(rows.groupby("label")[metric].mean().idxmax()) if len(rows) else None


def cost(claim: Claim, train: pd.DataFrame, margin: float) -> Claim:
    """Whole-lineage training device-hours per seed, pause vs cot (shared stages shown in the note)."""
    claim.rule = Rule(-1, margin)
    pause, cot = costs.per_seed_hours(train, "pause"), costs.per_seed_hours(train, "cot")
    if not pause or not cot:
        claim.why = "not run: no timings for both pause and cot"
        return claim
    claim.effect = verdicts.replicate_effect(pause, cot)
    claim.compared, (claim.measured, claim.ci) = "pause vs cot (whole lineage)", _fmt(claim.effect, True)
    shared = costs.per_seed_hours(train, "pause", shared=True)
    own = {r: np.mean(list(costs.per_seed_hours(train, r, shared=False).values())) for r in ("pause", "cot")}
    claim.why = (f"device-hours per seed: shared stages {np.mean(list(shared.values())):.4g}, own stages pause "
                 f"{own['pause']:.4g} vs cot {own['cot']:.4g}")
    claim.setting = f"seeds {','.join(map(str, sorted(pause)))}; {costs.devices(train, pd.DataFrame())}"
    return claim


def latency(claim: Claim, lat: pd.DataFrame, margin: float) -> Claim:
    """Per-sample latency (greedy, batch 16) from timed batches, pause vs cot."""
    claim.rule = Rule(-1, margin)
    sides = {role: {int(s): g["value"].tolist() for s, g in lat[lat["role"] == role].groupby(
        lat["train_seed"].fillna(0))} for role in ("pause", "cot")}
    if not sides["pause"] or not sides["cot"]:
        claim.why = "not run: no timed batches for both pause and cot"
        return claim
    claim.effect = verdicts.replicate_effect(sides["pause"], sides["cot"])
    claim.compared, (claim.measured, claim.ci) = "pause vs cot", _fmt(claim.effect, True)
    claim.why = ""
    n = int(lat.groupby("role").size().min()) * 16
    claim.setting = f"{costs.devices(pd.DataFrame(), lat)}; {n} timed samples per side, batch 16, greedy"
    return claim


def probe(claim: Claim, est: Estimate, cfg: Config, direction: int) -> Claim:
    """A diagnostic measured by a probe (usually one seed: a CI over items or users, no verdict)."""
    claim.rule = Rule(direction, cfg.probe_margin, relative=False)
    if est.missing:
        claim.why = est.missing
        return claim
    claim.effect = Effect(est.value, est.lo, est.hi, n_seeds=est.n_seeds, n_units=est.n_units,
                          unit=est.unit, method=f"a CI over {est.n_units:,} {est.unit}")
    claim.measured, claim.ci = _fmt(claim.effect, False)
    claim.setting, claim.why = est.setting, est.note
    return claim


def claims_for(data: Collected, cfg: Config) -> list[Claim]:
    """Every claim for data from one (dataset, backbone), before Holm."""
    per_user = with_labels(data.eval)
    per_user = per_user[per_user["split"] == cfg.split] if len(per_user) else per_user
    labels = main_labels(pd.concat([data.ckpts, per_user]), cfg.main_rationale)
    pause, cot = labels.get("pause"), labels.get("cot")
    matched = labels.get("sft-continued")
    out = [
        quality(Claim("vs_sft", "PauseRec beats next-item SFT", "gain in recall@10 / NDCG@10"), per_user, pause,
                matched or labels.get("plain"), cfg,
                "" if matched else "NOT compute-matched: sft stops before pause-sft's extra epochs"),
        quality(Claim("vs_think_only", "The pauses matter, not the extra think block", "—"), per_user, pause,
                labels.get("think-only"), cfg),
        quality(Claim("vs_cot", "PauseRec beats explicit CoT-SFT (no RL)", PAPER_COT), per_user, pause, cot, cfg),
    ]
    pauses = matching(per_user, stage="pause-sft", control="") if len(per_user) else per_user.index == 0
    others = per_user[pauses & matching(per_user, n_pauses=PAPER_PAUSES) & ~matching(per_user, pause_init="pretrained")
                      | matching(per_user, control="filler")] if len(per_user) else per_user
    inits = sorted(set(others.get("label", [])))
    out.append(quality(Claim("pretrained_pause", "A pre-trained <pause> beats other inits and filler tokens",
                             "pretrained init best"), per_user, pause, best_other(per_user, inits, cfg.metric), cfg,
                       "vs the best of " + (", ".join(inits) or "—")))
    rivals = per_user[pauses & matching(per_user, pause_init="pretrained") & ~matching(per_user, n_pauses=PAPER_PAUSES)
                      ] if len(per_user) else per_user
    counts = sorted(set(rivals.get("label", [])))
    out.append(quality(Claim("k5", f"{PAPER_PAUSES} pauses is the best count", f"best at {PAPER_PAUSES}"), per_user,
                       pause, best_other(per_user, counts, cfg.metric), cfg, "vs the best other count"))
    out.append(quality(Claim("vs_baseline", "PauseRec beats the strongest classical baseline", "—"), per_user,
                       pause, strongest_baseline(per_user, cfg.metric), cfg,
                       "baselines: " + ", ".join(b for b in BASELINES if b in labels)))
    main = {r: labels[r] for r in ("pause", "cot") if r in labels}
    out.append(cost(Claim("train_cost", "Training cost vs CoT-SFT (device-hours)", "−65% GPU-hours"),
                    costs.training_rows(data.timings, main), cfg.cost_margin))
    out.append(latency(Claim("latency", "Inference latency vs CoT-SFT", "−71.3%"),
                       costs.latency_rows(data.runs, main), cfg.latency_margin))
    out += [
        probe(Claim("misalignment", "SID-word misalignment grows with CoT training", "grows"),
              alignment_claim(data.probes, cfg), cfg, +1),
        probe(Claim("verbalization", "CoT weakens world-knowledge verbalisation (known but not said)",
                    "gap grows"), verbalization_claim(data.probes, cfg), cfg, +1),
        probe(Claim("rationale", "CoT is sensitive to rationale quality", "sensitive"),
              rationale_claim(data.probes, cfg), cfg, -1),
        probe(Claim("verbalization_sid", "... and on questions asked by SID (reported separately)", "—"),
              verbalization_claim(data.probes, cfg, ("sid",)), cfg, +1),
    ]
    return out


def dataset_groups(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The (dataset, backbone) pairs of trained checkpoints in ``frame``, sorted."""
    if not len(frame) or not {"dataset", "backbone"} <= set(frame.columns):
        return []
    rows = frame[frame["backbone"].fillna("").astype(str) != ""]  # baselines have no backbone
    pairs = rows[["dataset", "backbone"]].fillna("").astype(str).drop_duplicates()
    return sorted(map(tuple, pairs.to_numpy()))


def subset(data: Collected, dataset: str, backbone: str) -> Collected:
    """The part of ``data`` for one (dataset, backbone); baselines (no backbone) join every backbone."""
    def part(df: pd.DataFrame) -> pd.DataFrame:
        if not len(df) or "dataset" not in df.columns:
            return df
        same = df["dataset"].fillna("").astype(str) == dataset
        bb = df["backbone"].fillna("").astype(str) if "backbone" in df.columns else pd.Series("", index=df.index)
        return df[same & ((bb == backbone) | (bb == ""))]

    return Collected(*(part(getattr(data, f)) for f in ("ckpts", "runs", "eval", "probes", "timings",
                                                        "train_logs", "health", "valid_logs")))


def evaluate(data: Collected, cfg: Config | None = None) -> pd.DataFrame:
    """The claims table: one row per claim and (dataset, backbone), verdicts under Holm over the table."""
    cfg = cfg or Config()
    groups = dataset_groups(data.ckpts if len(data.ckpts) else data.eval)
    table: list[tuple[str, str, Claim]] = []
    for d, b in groups or [("", "")]:
        table += [(d, b, c) for c in claims_for(subset(data, d, b) if groups else data, cfg)]
    judged = [(c.effect, c.rule) for _, _, c in table if c.effect is not None]
    results = iter(verdicts.holm_verdicts(judged))
    rows = []
    for d, b, c in table:
        if c.effect is not None:
            c.verdict, why, c.p_holm = next(results)
            c.why = "; ".join(x for x in (why, c.why) if x)
        rows.append({"dataset": d, "backbone": b, **c.row()})
    return pd.DataFrame(rows)
