"""``python -m pauserec experiment plan RUNS``: the seeds and test users each claim needs.

Reads a pilot run (any runs directory; one seed is enough) and takes each quality claim's variance
levels from it (:func:`analysis.power.levels`: measured where the pilot shows them, assumed and
stated where it cannot). Prints, per claim, for the paper's effect (where the paper gives a number)
and for the claim's margin: the smallest effect the pilot's design detects ("MDE now", at >= 3
seeds), the test users needed at ``--seeds`` seeds, and the seeds needed on each dataset's full
test set -- or that no number of seeds reaches the target there. The margin row plans for a null
effect to read "no meaningful difference" (its CI inside the margin) with the same power: the size
at which a design resolves effects as small as the margin. Cost and latency get the seeds they
need; probe claims run on one seed and are not planned. The output is Markdown, to paste.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from analysis import claims, power
from analysis.claims import Claim
from analysis.collect import collect
from analysis.conditions import PRIMARY
from analysis.make_report import check_roots, display_roots
from analysis.verdicts import ALPHA, MIN_SEEDS, Parts
from pauserec import data
from pauserec.config import arg, parse_args
from pauserec.data import data_root_arg
from pauserec.errors import UserError

log = logging.getLogger(__name__)
PROG = "python -m pauserec experiment plan"
TEST_USERS = {"ml-100k": 943, "office": 4905, "beauty": 22363, "toys": 19412}  # data absent here


@dataclass
class Args:
    """Seeds and test users each claim needs for its verdict, from a pilot run."""

    runs: list[str] = arg(help="pilot runs dir(s)", factory=list, positional=True)
    seeds: int = arg(10, "seeds the users column is planned for", min=MIN_SEEDS)
    max_seeds: int = arg(power.MAX_SEEDS, "most seeds worth planning", min=MIN_SEEDS)
    datasets: tuple[str, ...] = arg(tuple(TEST_USERS), "datasets to plan (names or LC-Rec dirs)")
    data_root: str | None = data_root_arg()
    seed_sd: float = arg(power.SEED_SD, "assumed seed sd (% of baseline) for 1-seed runs", min=0.0)
    metric: str = arg(PRIMARY, "primary metric of the claims")
    split: str = arg("test", "split the pilot's variances are read from", choices=("valid", "test"))
    main_rationale: str = arg("template", "the CoT source the claims compare")


def test_users(name: str, data_root: str | None) -> tuple[int, bool]:
    """(test users of a dataset -- one held-out target each --, read from the data or not)."""
    try:
        return len(data.load_dataset(name, data_root).sequences), True
    except (UserError, OSError, ValueError) as err:
        if name.lower() not in TEST_USERS:
            raise UserError(f"dataset {name!r}: {err}") from None
        return TEST_USERS[name.lower()], False


def _replicate_parts(c: Claim, seed_sd: float, n_seeds: int) -> Parts | None:
    """A cost or latency claim's variance parts at ``n_seeds`` seeds per side: each side's seed
    variance as measured (>= 2 seeds), else ``seed_sd`` percent of its mean."""
    e = c.effect
    if e is None or not math.isfinite(e.value) or not e.base:
        return None
    if e.unit == "seeds" and e.n_seeds >= 2 and len(e.parts) == 2:
        per_seed = [var * (df + 1) for var, df in e.parts]
    else:
        per_seed = [(seed_sd / 100 * m) ** 2 for m in (e.base + e.value, e.base)]
    return [(v / n_seeds, n_seeds - 1.0) for v in per_seed]


def _pct(lv: power.Levels, value: float) -> str:
    return f"{100 * value / abs(lv.base):.3g}%"


def _seeds(lv: power.Levels, n_users: int, crit, target: float, max_seeds: int) -> str:
    """Seeds needed on ``n_users`` users, or why no number of seeds will do."""
    best = power.unlimited_seeds(lv, n_users, crit)
    if best > target:
        return f"never ({_pct(lv, best)} at unlimited seeds)"
    need = power.seeds_needed(lv, n_users, crit, target, max_seeds)
    return f"{need} seeds" if need else f"> {max_seeds} seeds"


def _users(lv: power.Levels, n_seeds: int, crit, target: float) -> str:
    """Test users needed with ``n_seeds`` seeds, or why no number of users will do."""
    best = power.unlimited_users(lv, n_seeds, crit)
    if best > target:
        return f"never ({_pct(lv, best)} at unlimited users)"
    need = power.users_needed(lv, n_seeds, crit, target)
    return f"{need:,}" if need else f"> {power.MAX_USERS:,}"


def quality_rows(
    c: Claim, lv: power.Levels, sizes: dict[str, int], args: Args, n_tests: int, note: str
) -> list[list[str]]:
    """The paper-effect and margin rows of one quality claim."""
    margin = lv.absolute(c.rule.margin)
    targets = (
        [
            (
                f"paper {c.target:+.3g}%",
                "+",
                lv.absolute(abs(c.target)),
                lambda p: power.mde(p, margin, n_tests=n_tests),
            )
        ]
        if math.isfinite(c.target)
        else []
    )
    targets.append(
        (f"margin ±{c.rule.margin:g}% (a null reads no difference)", "±", margin, power.resolution)
    )
    rows, now = [], lv.parts(max(lv.n_seeds, MIN_SEEDS), lv.n_users)
    design = f"{max(lv.n_seeds, MIN_SEEDS)} seeds x {lv.n_users:,} users"
    for i, (what, sign, target, crit) in enumerate(targets):
        rows.append(
            [
                c.key if i == 0 else "",
                (c.compared + note) if i == 0 else "",
                what,
                f"{sign}{_pct(lv, crit(now))} ({design})",
                _users(lv, args.seeds, crit, target),
                *(_seeds(lv, n, crit, target, args.max_seeds) for n in sizes.values()),
            ]
        )
    return rows


def replicate_row(c: Claim, args: Args, n_tests: int, n_sizes: int) -> list[str] | None:
    """Seeds per side a cost or latency claim needs for the paper's effect."""
    parts = _replicate_parts(c, args.seed_sd, MIN_SEEDS)
    if parts is None or not math.isfinite(c.target):
        return None
    e, margin = c.effect, abs(c.effect.base) * c.rule.margin / 100
    target = abs(e.base * c.target / 100)
    need = next(
        (
            s
            for s in range(MIN_SEEDS, args.max_seeds + 1)
            if power.mde(_replicate_parts(c, args.seed_sd, s), margin, n_tests=n_tests) <= target
        ),
        None,
    )
    seeds = f"{need} seeds per side" if need else f"> {args.max_seeds} seeds"
    now = 100 * power.mde(parts, margin, n_tests=n_tests) / abs(e.base)
    measured = e.unit == "seeds" and e.n_seeds >= 2
    spread = "seed spread measured" if measured else f"seed sd {args.seed_sd:g}% assumed"
    return [
        c.key,
        f"{c.compared} ({spread})",
        f"paper {c.target:+.3g}%",
        f"{math.copysign(now, c.target):+.3g}% ({MIN_SEEDS} seeds per side)",
        "—",
        *[seeds] * n_sizes,
    ]


def plan_text(args: Args) -> str:
    """The plan as Markdown (see the module docstring)."""
    roots = check_roots(args.runs)
    collected = collect(roots)
    if not len(collected.eval):
        raise UserError(
            f"no evaluations (per_user.csv) under {', '.join(args.runs)}: nothing to plan from"
        )
    cfg = claims.Config(
        metric=args.metric,
        split=args.split,
        main_rationale=args.main_rationale,
        seed_sd=args.seed_sd,
    )
    sizes, found = {}, []
    for name in args.datasets:
        sizes[name], ok = test_users(name, args.data_root)
        found.append(f"{name} {sizes[name]:,}" + ("" if ok else " (data absent: published count)"))
    out = []
    for d, b, group in _groups(claims.claim_table(collected, cfg)):
        out += _plan_group(d, b, group, sizes, found, args)
    return "\n".join(out)


def _groups(table: list[tuple[str, str, Claim]]) -> list[tuple[str, str, list[Claim]]]:
    keys = list(dict.fromkeys((d, b) for d, b, _ in table))
    return [(d, b, [c for dd, bb, c in table if (dd, bb) == (d, b)]) for d, b in keys]


def _plan_group(
    dataset: str,
    backbone: str,
    group: list[Claim],
    sizes: dict[str, int],
    found: list[str],
    args: Args,
) -> list[str]:
    measured = [c for c in group if c.levels is not None]
    if not measured:
        return [f"## {dataset}, {backbone}: no quality claim measured in the pilot"]
    noisiest = max(
        measured, key=lambda c: (c.levels.seed + c.levels.user + c.levels.resid) / c.levels.base**2
    )
    n_tests = sum(c.rule is not None and c.rule.relative for c in group)
    seeds, users = (min(getattr(c.levels, k) for c in measured) for k in ("n_seeds", "n_users"))
    lines = [
        f"## Power plan: {dataset}, {backbone} (pilot {', '.join(display_roots(args.runs))}: "
        f"{seeds} seed(s) x {users:,}+ test users, {args.metric})",
        "",
        'Planned for the verdict rule: "reproduced" needs the 95% CI above the margin and '
        f"p < {ALPHA:g}/{n_tests} (Holm's strictest step over the {n_tests} claims that can "
        f"earn a verdict); {power.POWER:.0%} power, simulated for the t intervals (exact for "
        "few seeds). MDE now: at the pilot's users and >= 3 seeds.",
        f"Test users (one held-out target each): {'; '.join(found)}.",
        "",
        "Assumed:",
    ]
    lines += [f"- {a}" for a in sorted({a for c in measured for a in c.levels.assumed})]
    lines += [
        f"- other datasets: the pilot's variances in percent of the baseline mean (pilot on "
        f"{dataset}; a pilot on the target dataset replaces this)",
        "- claims the pilot did not measure: the levels of its noisiest pair "
        f"({noisiest.compared}; conservative)",
        "",
    ]
    head = [
        "claim",
        "compared",
        "target",
        "MDE now",
        f"users at {args.seeds} seeds",
        *(f"{n} ({sizes[n]:,})" for n in sizes),
    ]
    rows = []
    for c in group:
        if c.rule is None or not c.rule.relative:
            continue
        if c.key in ("train_cost", "latency"):
            rows += [row for row in [replicate_row(c, args, n_tests, len(sizes))] if row]
            continue
        pilot = f" (pilot: {c.gate})" if c.gate else ""
        lv, note = (c.levels, pilot) if c.levels else (noisiest.levels, " (not in pilot)")
        rows += quality_rows(c, lv, sizes, args, n_tests, note)
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    return (
        lines + table + ["", "Probe claims run on one seed (CIs over items or users): not planned."]
    )


def main(argv: list[str] | None = None) -> str:
    text = plan_text(parse_args(Args, argv, PROG))
    print(text)
    return text
