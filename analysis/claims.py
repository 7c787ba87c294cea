"""The paper's claims, our measurement of each, and a verdict that noise cannot fool.

Every claim compares named cells (see :mod:`analysis.conditions`) with an effect and interval from
:mod:`analysis.verdicts`: quality claims pair users within training seeds and seeds across
conditions; cost claims compare whole-lineage device-hours per seed; latency claims compare timed
batches. Each claim states its direction and minimum meaningful effect (:class:`Config`); Holm runs
over the whole table. Claims are evaluated per (dataset, backbone).

Gates, before any interval is read (a gated claim leaves Holm):

- **learned**: a quality claim whose either trained side gives most users one list or scores
  below most-popular on the same users reads ``inconclusive (not learned)``;
- **fair**: the pause claims compare conditions trained from the same start for the same steps on
  the same data and schedule (:func:`analysis.conditions.unmatched`), and "PauseRec beats SFT"
  needs the ``sft-continued`` control (plain ``sft`` trains fewer steps); a classical baseline must
  read the same history and learn from the same targets (:func:`analysis.conditions.footing`).
  Otherwise: ``no verdict``, naming what differs or which control is missing;
- **held out**: best-of choices (the best other pause count, the best other init or filler) are
  made on the validation split and tested once on the claims' split; without validation
  evaluations, ``no verdict``.

Every row states its minimum detectable effect (``mde``, :mod:`analysis.power`): the smallest true
effect that would read "reproduced" in 80% of experiments of its design (quality claims: at least
3 seeds on its users; the seed level assumed where one seed cannot show it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from analysis import conditions, costs, power, verdicts
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
from pauserec.config import arg
from pauserec.registry import PAPER_PAUSES

EMPTY = "—"  # a cell with nothing to show
PAPER_COT = (
    "+6.22% (vs OneRec-Think: CoT-SFT + RL; the paper's best of 12 metrics; ours has no "
    "RL stage, so it is compared with CoT-SFT)"
)


@dataclass
class Config:
    """How claims are judged: the primary metric, the main CoT source and each claim's minimum
    effect."""

    metric: str = PRIMARY
    split: str = "test"
    main_rationale: str = "template"
    quality_margin: float = arg(verdicts.REL_MARGIN, "% of the baseline")
    cost_margin: float = arg(10.0, "% of CoT-SFT's device-hours")
    latency_margin: float = arg(10.0, "% of CoT-SFT's latency")
    probe_margin: float = arg(0.01, "absolute, in the probe's units")
    seed_sd: float = arg(power.SEED_SD, "assumed seed sd (% of baseline) where one seed can't tell")
    n_resamples: int = 2000  # bootstrap resamples of the probes' CIs over items/users
    seed: int = 0


@dataclass
class Claim:
    """One row of the claims table. ``target``: the paper's effect in percent, signed, if any."""

    key: str
    claim: str
    paper: str
    compared: str = EMPTY
    measured: str = EMPTY
    ci: str = EMPTY
    setting: str = EMPTY
    verdict: str = verdicts.INCONCLUSIVE
    why: str = "not measured"
    p_holm: float = math.nan
    mde: str = EMPTY
    mde_rel: float = math.nan
    target: float = math.nan
    gate: str = ""  # a verdict set by a gate, before any interval is read
    effect: Effect | None = field(default=None, repr=False)
    rule: Rule | None = field(default=None, repr=False)
    levels: power.Levels | None = field(default=None, repr=False)  # quality claims

    def row(self) -> dict:
        hidden = ("effect", "rule", "levels", "gate")
        out = {k: v for k, v in asdict(self).items() if k not in hidden}
        e = self.effect or Effect()
        return {
            **out,
            "value": e.value,
            "lo": e.lo,
            "hi": e.hi,
            "rel": e.rel,
            "rel_lo": e.rel_lo,
            "rel_hi": e.rel_hi,
            "n_seeds": e.n_seeds,
            "method": e.method,
        }


def _fmt(e: Effect, relative: bool) -> tuple[str, str]:
    """(measured, CI) as text: relative percent where defined, else the absolute difference."""
    if relative and np.isfinite(e.rel):
        ci = f"[{e.rel_lo:+.2f}%, {e.rel_hi:+.2f}%]" if np.isfinite(e.rel_lo) else EMPTY
        return f"{e.rel:+.2f}%", ci
    if not np.isfinite(e.value):
        return EMPTY, EMPTY
    ci = f"[{e.lo:+.4g}, {e.hi:+.4g}]" if np.isfinite(e.lo) else EMPTY
    return f"{e.value:+.4g}", ci


def _setting(per_user: pd.DataFrame, cells: list[str]) -> str:
    rows = per_user[per_user["label"].isin(cells)]
    if not len(rows):
        return EMPTY
    return (
        f"{'/'.join(sorted(map(str, rows['dataset'].unique())))}, "
        f"{'/'.join(sorted(set(map(str, rows['backbone'].unique())) - {''})) or '—'}; "
        f"{rows['user'].nunique():,} users; seeds {seed_list(rows['train_seed'])}"
    )


def with_seeds(per_user: pd.DataFrame, treat: str) -> pd.DataFrame:
    """Rows whose seed is unknown (a deterministic classical baseline) repeated for each of the
    treatment's training seeds, so they pair with every seed."""
    seeds = sorted(per_user.loc[per_user["label"] == treat, "train_seed"].dropna().unique())
    fixed = per_user["train_seed"].isna()
    if not fixed.any() or not seeds:
        return per_user.assign(train_seed=per_user["train_seed"].fillna(0))
    copies = [per_user[fixed].assign(train_seed=s) for s in seeds]
    return pd.concat([per_user[~fixed], *copies], ignore_index=True)


@dataclass
class Inputs:
    """What the quality claims read: per-user rows of the claims' split and of the validation split,
    the health flags of the claims' split, the checkpoints' training records, and the config."""

    per_user: pd.DataFrame
    valid: pd.DataFrame
    health: pd.DataFrame
    ckpts: pd.DataFrame
    cfg: Config


def quality_rule(cfg: Config) -> Rule:
    """A quality claim's rule: a gain of at least ``quality_margin`` percent of the baseline."""
    return Rule(+1, cfg.quality_margin, abs_margin=0.001)


def _gate(inputs: Inputs, treat: str, base: str, fair: str) -> tuple[str, str]:
    """(gate verdict, why) of a measured pair: not learned first, then an unfair comparison."""
    sick = [
        conditions.not_learned(inputs.per_user, inputs.health, c, inputs.cfg.metric)
        for c in (treat, base)
        if c not in BASELINES
    ]
    if any(sick):
        return verdicts.NOT_LEARNED, "; ".join(w for w in sick if w)
    if fair == "compute" and (diff := conditions.unmatched(inputs.ckpts, treat, base)):
        return verdicts.NO_VERDICT, f"not compute-matched: {diff}"
    if fair == "footing" and (diff := conditions.footing(inputs.per_user, treat, base)):
        return verdicts.NO_VERDICT, f"baseline not on the same footing: {diff}"
    return "", ""


def quality(
    claim: Claim,
    inputs: Inputs,
    treat: str | None,
    base: str | None,
    fair: str = "compute",
    note: str = "",
) -> Claim:
    """Relative gain of ``treat`` over ``base`` in the primary metric, paired over users and seeds,
    behind the gates (``fair``: ``compute``, ``footing`` or ``""``)."""
    cfg, per_user = inputs.cfg, inputs.per_user
    claim.rule = quality_rule(cfg)
    if not treat or not base:
        claim.why = f"not run: needs both conditions (have {treat or '—'} and {base or '—'})"
        return claim
    claim.compared = f"{treat} vs {base}"
    rows = with_seeds(per_user, treat)
    keys = {"label": "label", "seed": "train_seed", "user": "user"}
    try:
        claim.effect = verdicts.paired_effect(rows, treat, base, cfg.metric, **keys)
        cols, same_users, _ = verdicts.paired_columns(rows, treat, base, cfg.metric, **keys)
    except ValueError as err:
        claim.why = f"not compared: {err}"
        return claim
    claim.levels = power.levels(cols, same_users, seed_sd=cfg.seed_sd)
    claim.measured, claim.ci = _fmt(claim.effect, True)
    claim.setting = _setting(per_user, [treat, base])
    claim.gate, why = _gate(inputs, treat, base, fair)
    if not per_user["label"].eq("popularity").any():
        note = "; ".join(x for x in (note, "most-popular not evaluated: its gate not applied") if x)
    claim.why = "; ".join(x for x in (why, note) if x)
    return claim


def best_of(claim: Claim, inputs: Inputs, treat: str | None, rivals: list[str]) -> Claim:
    """``treat`` against the best of ``rivals``, chosen on the validation split, tested once."""
    best, why = conditions.best_on_valid(inputs.valid, rivals, inputs.cfg.metric)
    if len(rivals) > 1 and inputs.cfg.split == "valid":
        best, why = None, "the claims read the valid split: a best-of choice there is not held out"
    if rivals and best is None:
        claim.rule = quality_rule(inputs.cfg)
        claim.gate, claim.why = verdicts.NO_VERDICT, why
        return claim
    named = ", ".join(rivals) or EMPTY
    return quality(
        claim, inputs, treat, best, note=f"the best of {named} on the valid split: {best or '—'}"
    )


def vs_sft(claim: Claim, inputs: Inputs, labels: dict[str, str]) -> Claim:
    """Pause against the compute-matched ``sft-continued`` control; never against plain sft."""
    if labels.get("plain") and not labels.get("sft-continued") and labels.get("pause"):
        claim.rule = quality_rule(inputs.cfg)
        claim.gate = verdicts.NO_VERDICT
        claim.why = (
            f"missing control: sft-continued (plain `{labels['plain']}` stops before "
            "pause-sft's extra steps, so it is not a compute-matched reference)"
        )
        return claim
    return quality(claim, inputs, labels.get("pause"), labels.get("sft-continued"))


def vs_baseline(claim: Claim, inputs: Inputs, treat: str | None) -> Claim:
    """Pause against the strongest classical baseline (chosen on the claims' split: biased against
    the claim)."""
    base = strongest_baseline(inputs.per_user, inputs.cfg.metric)
    have = set(inputs.per_user["label"].unique()) if len(inputs.per_user) else set()
    named = ", ".join(b for b in BASELINES if b in have)
    return quality(
        claim,
        inputs,
        treat,
        base,
        fair="footing",
        note=f"baselines: {named or '—'}; the strongest chosen on the "
        f"{inputs.cfg.split} split (biased against the claim)",
    )


def cost(claim: Claim, train: pd.DataFrame, margin: float) -> Claim:
    """Whole-lineage training device-hours per seed, pause vs cot (shared stages shown in the
    note)."""
    claim.rule = Rule(-1, margin)
    pause, cot = costs.per_seed_hours(train, "pause"), costs.per_seed_hours(train, "cot")
    if not pause or not cot:
        claim.why = "not run: no timings for both pause and cot"
        return claim
    claim.effect = verdicts.replicate_effect(pause, cot)
    claim.compared, (claim.measured, claim.ci) = (
        "pause vs cot (whole lineage)",
        _fmt(claim.effect, True),
    )
    shared = costs.per_seed_hours(train, "pause", shared=True)
    own = {
        r: np.mean(list(costs.per_seed_hours(train, r, shared=False).values()))
        for r in ("pause", "cot")
    }
    claim.why = (
        f"device-hours per seed: shared stages {np.mean(list(shared.values())):.4g}, own stages "
        f"pause {own['pause']:.4g} vs cot {own['cot']:.4g}"
    )
    claim.setting = (
        f"seeds {','.join(map(str, sorted(pause)))}; {costs.devices(train, pd.DataFrame())}"
    )
    return claim


def latency(claim: Claim, lat: pd.DataFrame, margin: float) -> Claim:
    """Per-sample latency (greedy, batch 16) from timed batches, pause vs cot."""
    claim.rule = Rule(-1, margin)
    sides = {
        role: {
            int(s): g["value"].tolist()
            for s, g in lat[lat["role"] == role].groupby(lat["train_seed"].fillna(0))
        }
        for role in ("pause", "cot")
    }
    if not sides["pause"] or not sides["cot"]:
        claim.why = "not run: no timed batches for both pause and cot"
        return claim
    claim.effect = verdicts.replicate_effect(sides["pause"], sides["cot"])
    claim.compared, (claim.measured, claim.ci) = "pause vs cot", _fmt(claim.effect, True)
    claim.why = ""
    n = int(lat.groupby("role").size().min()) * 16
    claim.setting = (
        f"{costs.devices(pd.DataFrame(), lat)}; {n} timed samples per side, batch 16, greedy"
    )
    return claim


def probe(claim: Claim, est: Estimate, cfg: Config, direction: int) -> Claim:
    """A diagnostic measured by a probe (usually one seed: a CI over items or users, no verdict)."""
    claim.rule = Rule(direction, cfg.probe_margin, relative=False)
    if est.missing:
        claim.why = est.missing
        return claim
    ids = {"n_seeds": est.n_seeds, "n_units": est.n_units, "unit": est.unit}
    method = f"a CI over {est.n_units:,} {est.unit}"
    claim.effect = Effect(est.value, est.lo, est.hi, method=method, **ids)
    claim.measured, claim.ci = _fmt(claim.effect, False)
    claim.setting, claim.why = est.setting, est.note
    return claim


def rivals(per_user: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(other inits at the paper's count and filler, other counts with the pretrained init)."""
    if not len(per_user):
        return [], []
    pauses = matching(per_user, stage="pause-sft", control="")
    paper = matching(per_user, n_pauses=PAPER_PAUSES)
    pretrained = matching(per_user, pause_init="pretrained")
    filler = matching(per_user, control="filler")
    inits = per_user.loc[pauses & paper & ~pretrained | filler, "label"]
    counts = per_user.loc[pauses & pretrained & ~paper, "label"]
    return sorted(map(str, inits.unique())), sorted(map(str, counts.unique()))


def _split(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    return frame[frame["split"] == split] if len(frame) and "split" in frame.columns else frame


def claims_for(data: Collected, cfg: Config) -> list[Claim]:
    """Every claim for data from one (dataset, backbone), before Holm."""
    rows = with_labels(data.eval)
    per_user = _split(rows, cfg.split)
    health = _split(data.health, cfg.split)
    inputs = Inputs(per_user, _split(rows, "valid"), health, data.ckpts, cfg)
    labels = main_labels(pd.concat([data.ckpts, per_user]), cfg.main_rationale)
    pause = labels.get("pause")
    inits, counts = rivals(per_user)
    out = [
        vs_sft(
            Claim("vs_sft", "PauseRec beats next-item SFT", "gain in recall@10 / NDCG@10"),
            inputs,
            labels,
        ),
        quality(
            Claim("vs_think_only", "The pauses matter, not the extra think block", "—"),
            inputs,
            pause,
            labels.get("think-only"),
        ),
        quality(
            Claim("vs_cot", "PauseRec beats explicit CoT-SFT (no RL)", PAPER_COT, target=6.22),
            inputs,
            pause,
            labels.get("cot"),
        ),
        best_of(
            Claim(
                "pretrained_pause",
                "A pre-trained <pause> beats other inits and filler tokens",
                "pretrained init best",
            ),
            inputs,
            pause,
            inits,
        ),
        best_of(
            Claim(
                "pause_count", f"{PAPER_PAUSES} pauses is the best count", f"best at {PAPER_PAUSES}"
            ),
            inputs,
            pause,
            counts,
        ),
        vs_baseline(
            Claim("vs_baseline", "PauseRec beats the strongest classical baseline", "—"),
            inputs,
            pause,
        ),
    ]
    main = {r: labels[r] for r in ("pause", "cot") if r in labels}
    out.append(
        cost(
            Claim(
                "train_cost",
                "Training cost vs CoT-SFT (device-hours)",
                "−65% GPU-hours",
                target=-65.0,
            ),
            costs.training_rows(data.timings, main),
            cfg.cost_margin,
        )
    )
    out.append(
        latency(
            Claim("latency", "Inference latency vs CoT-SFT", "−71.3%", target=-71.3),
            costs.latency_rows(data.runs, main),
            cfg.latency_margin,
        )
    )
    out += [
        probe(
            Claim("misalignment", "SID-word misalignment grows with CoT training", "grows"),
            alignment_claim(data.probes, cfg),
            cfg,
            +1,
        ),
        probe(
            Claim(
                "verbalization",
                "CoT weakens world-knowledge verbalisation (known but not said)",
                "gap grows",
            ),
            verbalization_claim(data.probes, cfg),
            cfg,
            +1,
        ),
        probe(
            Claim("rationale", "CoT is sensitive to rationale quality", "sensitive"),
            rationale_claim(data.probes, cfg),
            cfg,
            -1,
        ),
        probe(
            Claim(
                "verbalization_sid", "... and on questions asked by SID (reported separately)", "—"
            ),
            verbalization_claim(data.probes, cfg, ("sid",)),
            cfg,
            +1,
        ),
    ]
    return out


def design_parts(claim: Claim) -> tuple[verdicts.Parts, float, str] | None:
    """(variance parts, baseline mean, design) the claim's MDE is read at: quality claims at >= 3
    seeds on their users; replicate claims (cost, latency) at their own >= 2 seeds per side."""
    lv, e = claim.levels, claim.effect
    if lv is not None:
        n_s = max(lv.n_seeds, verdicts.MIN_SEEDS)
        assumed = f"; seed sd assumed {claim_seed_sd(lv)}" if lv.n_seeds < 2 else ""
        return lv.parts(n_s, lv.n_users), lv.base, f"{n_s} seeds x {lv.n_users:,} users{assumed}"
    if e is not None and e.unit == "seeds" and e.n_seeds >= 2 and e.parts:
        return list(e.parts), e.base, f"{e.n_seeds} seeds per side"
    return None


def claim_seed_sd(lv: power.Levels) -> str:
    return f"{100 * math.sqrt(lv.seed) / abs(lv.base):.3g}%" if lv.base else EMPTY


def describe_mde(claim: Claim, n_tests: int) -> tuple[str, float]:
    """(text, percent) of the claim's minimum detectable effect at 80% power; ("—", NaN) if none."""
    found = design_parts(claim)
    if found is None or claim.rule is None or not claim.rule.relative:
        return EMPTY, math.nan
    parts, base, design = found
    if not base or not np.isfinite(base):
        return EMPTY, math.nan
    margin = abs(base) * claim.rule.margin / 100
    rel = claim.rule.direction * 100 * power.mde(parts, margin, n_tests=n_tests) / abs(base)
    return f"{rel:+.2f}% ({design})", rel


def dataset_groups(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The (dataset, backbone) pairs of trained checkpoints in ``frame``, sorted."""
    if not len(frame) or not {"dataset", "backbone"} <= set(frame.columns):
        return []
    rows = frame[frame["backbone"].fillna("").astype(str) != ""]  # baselines have no backbone
    pairs = rows[["dataset", "backbone"]].fillna("").astype(str).drop_duplicates()
    return sorted(map(tuple, pairs.to_numpy()))


def subset(data: Collected, dataset: str, backbone: str) -> Collected:
    """The part of ``data`` for one (dataset, backbone); baselines (no backbone) join every
    backbone."""

    def part(df: pd.DataFrame) -> pd.DataFrame:
        if not len(df) or "dataset" not in df.columns:
            return df
        same = df["dataset"].fillna("").astype(str) == dataset
        bb = (
            df["backbone"].fillna("").astype(str)
            if "backbone" in df.columns
            else pd.Series("", index=df.index)
        )
        return df[same & ((bb == backbone) | (bb == ""))]

    return Collected(
        *(
            part(getattr(data, f))
            for f in (
                "ckpts",
                "runs",
                "eval",
                "probes",
                "timings",
                "train_logs",
                "health",
                "valid_logs",
            )
        )
    )


def evaluate(data: Collected, cfg: Config | None = None) -> pd.DataFrame:
    """The claims table: one row per claim and (dataset, backbone), verdicts under Holm over the
    table (gated claims leave it), each with its minimum detectable effect."""
    rows = []
    table = claim_table(data, cfg or Config())
    judged = [c for _, _, c in table if c.effect is not None and not c.gate]
    results = verdicts.holm_verdicts([(c.effect, c.rule) for c in judged])
    n_tests = max(
        1, sum(np.isfinite(c.effect.p) and c.effect.n_seeds >= verdicts.MIN_SEEDS for c in judged)
    )
    for c, (verdict, why, p) in zip(judged, results):
        c.verdict, c.why, c.p_holm = verdict, "; ".join(x for x in (why, c.why) if x), p
    for d, b, c in table:
        if c.gate:
            c.verdict = c.gate
        c.mde, c.mde_rel = describe_mde(c, n_tests)
        rows.append({"dataset": d, "backbone": b, **c.row()})
    return pd.DataFrame(rows)


def claim_table(data: Collected, cfg: Config) -> list[tuple[str, str, Claim]]:
    """(dataset, backbone, claim) for every claim of every (dataset, backbone), before Holm."""
    groups = dataset_groups(data.ckpts if len(data.ckpts) else data.eval)
    table: list[tuple[str, str, Claim]] = []
    for d, b in groups or [("", "")]:
        table += [(d, b, c) for c in claims_for(subset(data, d, b) if groups else data, cfg)]
    return table
