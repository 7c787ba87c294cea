"""``python -m pauserec gpu prepare``: all a one-command GPU run needs, sized on the CPU beforehand.

Writes ``OUT/`` (gitignored; it travels to the device machine with ``carry``, a call carrying at
most 64 MiB; gpu/oneshot.sh makes the two calls)::

    part1/backbone.gguf.part1        the backbone's first bytes (call 1: the preflight keeps them)
    part1/wheels/*.whl               what the GPU image lacks (gguf; call 1 installs it)
    run/backbone.gguf.part2          the rest (call 2: the run)
    run/data/NAME/NAME.{inter,item}.json    the dataset, LC-Rec layout (no dataset package there)
    run/sids.json                    Semantic IDs (a published index, or built here: rq-vae)
    run/plan.json                    stages, token counts, the budget arithmetic

Token counts come from the real corpora built here with the real tokenizer (a cheaper corpus layout
is counted as it is). The budget arithmetic (:func:`budget`, which the run repeats for its own
``--budget-s``) gives each part of the run a share up front, divides the tokens by an assumed
training throughput and per-stage overhead (the run replaces both with its own measurements), and
sets the number of test users every cell and baseline is evaluated on from an assumed decoding
speed.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pauserec import data, files, registry, sid, tokens
from pauserec.config import arg, parse_args
from pauserec.data import data_root_arg, dataset_arg
from pauserec.errors import UserError
from pauserec.model import backbone, init_ckpt
from pauserec.model.catalog import Catalog
from pauserec.model.checkpoint import Checkpoint
from pauserec.training import stages, train

log = logging.getLogger(__name__)
# evaluated, in this order
CELLS = registry.matrix(controls=("think-only",), rationales=("template",))
STAGE_PLAN = [registry.Cell(s) for s in registry.SHARED] + [
    c for c in CELLS if c.stage not in registry.SHARED
]  # trained, in this order
CARRY_MIB = 64  # what one device call carries
# Each part's share of the run's budget, in run order; a part's deadline is the sum of the shares
# up to it, so time an earlier part leaves goes to the next. "export": the last export's reserve.
SHARES = {
    "init": 0.05,
    "train": 0.50,
    "evaluate": 0.27,
    "baselines": 0.06,
    "latency": 0.06,
    "export": 0.06,
}
COT_COST = 5  # decoding a CoT cell costs ~5 plain cells: it writes a rationale before the SID


@dataclass
class PrepareArgs:
    """Prepare the one-command GPU run: data, SIDs, the backbone in parts, wheels and the budget.

    The assumed speeds size the plan (the evaluated users among it); the run measures its own and
    stops early, on the same users everywhere, where it is slower."""

    dataset: str = dataset_arg("beauty")
    data_root: str | None = data_root_arg()
    out: str = arg("gpu_run", "output folder (gitignored; carried to the GPU)")
    overwrite: bool = arg(False, "replace an existing --out")
    backbone: str = arg("smollm2-135m", "smollm2-135m (carried as GGUF parts) or tiny (rehearsals)")
    sid_source: str = arg("", "SID index file (default: the published one if any, else rq-vae)")
    preset: str = arg("gpu", "configs/NAME.toml: [train.*] of the run")
    max_history: int = arg(20, "history length", min=1)
    part_mib: int = arg(56, "size of the first GGUF part, MiB", min=1, max=CARRY_MIB - 1)
    tokens_per_s: float = arg(150_000.0, "assumed train tokens/s (135M, H100: 100-200k)", gt=0.0)
    stage_overhead_s: float = arg(5.0, "assumed stage seconds outside steps (load, save)", min=0.0)
    users_per_s: float = arg(1500.0, "assumed test users/s of a plain cell's 20 beams", gt=0.0)
    budget_s: float = arg(300.0, "the run's time budget, seconds", gt=0.0)
    wheels: bool = arg(True, "download the wheels the GPU image lacks (PyPI)")


def write_dataset(ds: data.Dataset, folder: Path) -> str:
    """The dataset as LC-Rec files (its own item ids, oldest-first sequences); returns its folder
    name."""
    name = data.folder_name(ds.name)
    items = {
        it.item_id: {
            "title": it.title,
            "categories": it.categories,
            "brand": it.brand,
            "description": it.description,
            "year": it.year,
        }
        for it in ds.items
    }
    inter = {user: [ds.items[i].item_id for i in seq] for user, seq in ds.sequences.items()}
    files.write_json(folder / name / f"{name}.item.json", items)
    files.write_json(folder / name / f"{name}.inter.json", inter)
    return name


def default_index(args: PrepareArgs) -> str:
    if args.sid_source or args.dataset.lower() not in data.AMAZON:
        return args.sid_source
    hits = sorted(data.resolve_dir(args.dataset, args.data_root).glob("*.index.*.json"))
    return str(hits[0]) if hits else ""


def split_gguf(path: Path, part1: Path, part2: Path, first_mib: int) -> str:
    """Cut the GGUF file in two; returns its sha256 (the run checks the joined file against it)."""
    blob = path.read_bytes()
    cut = first_mib * 2**20
    part1.parent.mkdir(parents=True, exist_ok=True)
    part2.parent.mkdir(parents=True, exist_ok=True)
    part1.write_bytes(blob[:cut])
    part2.write_bytes(blob[cut:])
    return hashlib.sha256(blob).hexdigest()


def stage_tokens(ckpt: Checkpoint, preset: str) -> dict[str, dict]:
    """Per planned stage: sequences, tokens per epoch, epochs and optimizer steps (real corpora)."""
    out = {}
    for cell in STAGE_PLAN:
        args = train.stage_args(cell.stage, preset, from_ckpt="-", out="-", **cell.train_values())
        corpus = stages.build_corpus(ckpt, args)[0]
        tokens_per_epoch = int(corpus.lengths().sum())
        steps = math.ceil(len(corpus) / args.batch_size) * args.epochs
        out[cell.name] = {
            "stage": cell.stage,
            "extra": cell.train_values(),
            "sequences": len(corpus),
            "tokens_per_epoch": tokens_per_epoch,
            "epochs": args.epochs,
            "tokens": tokens_per_epoch * args.epochs,
            "steps": steps,
            "batch_size": args.batch_size,
        }
    return out


def eval_cost(cell: registry.Cell) -> int:
    """Decoding cost of a cell in plain cells."""
    return COT_COST if cell.stage == "cot-sft" else 1


def budget(stages: dict, users: int, budget_s: float, assumed: dict) -> dict:
    """The arithmetic, up front: each part's seconds and deadline, the training scale at the assumed
    throughput and overhead, and the test users (the same for every cell and baseline)."""
    seconds = {part: share * budget_s for part, share in SHARES.items()}
    deadlines = dict(zip(SHARES, itertools.accumulate(seconds.values())))
    tokens = sum(s["tokens"] for s in stages.values())
    room = seconds["train"] - len(stages) * assumed["stage_overhead_s"]
    units = sum(eval_cost(c) for c in CELLS)
    return {
        "budget_s": budget_s,
        "assumed": assumed,
        "seconds": seconds,
        "deadlines": deadlines,
        "train_tokens": tokens,
        "train_s": tokens / assumed["tokens_per_s"],
        "train_scale": min(1.0, max(room, 0.0) * assumed["tokens_per_s"] / max(tokens, 1)),
        "eval_units": units,
        "users": min(users, int(seconds["evaluate"] * assumed["users_per_s"] / units)),
    }


def prepare(args: PrepareArgs) -> dict:
    for cell in STAGE_PLAN:  # every stage's settings, before any work
        train.stage_args(cell.stage, args.preset, from_ckpt="-", out="-", **cell.train_values())
    inputs = [args.dataset, *data.source_paths(args.dataset, args.data_root), args.sid_source]
    claim = files.claim(
        args.out, kind="pauserec gpu prepare", overwrite=args.overwrite, inputs=inputs
    )
    with claim, files.atomic_dir(args.out) as tmp:
        ds = data.load_dataset(args.dataset, args.data_root)
        name = write_dataset(ds, tmp / "run" / "data")
        index = default_index(args)
        cfg = sid.SIDConfig(source=index or "build", method="rq-vae")
        codes = sid.build(ds.items, cfg)
        sid.write_index(tmp / "run" / "sids.json", ds.items, codes, cfg)
        catalog = Catalog.from_codes(ds.items, codes)
        model, tok = backbone.load_backbone(
            args.backbone, corpus=init_ckpt.vocabulary_texts(ds.items)
        )
        backbone.add_tokens(model, tok, tokens.special_tokens(catalog.codebook_sizes))
        where = {
            "name": args.dataset,
            "data_root": str(tmp / "run" / "data"),
            "max_history": args.max_history,
        }
        ckpt = Checkpoint(model, tok, catalog, {"dataset": where})
        plan = {
            "dataset": name,
            "source_dataset": args.dataset,
            "backbone": args.backbone,
            "preset": args.preset,
            "sid_source": Path(index).name if index else "rq-vae (built here)",
            "sid_report": sid.report(codes),
            "max_history": args.max_history,
            "users": len(ds.sequences),
            "stages": stage_tokens(ckpt, args.preset),
        }
        assumed = {
            "tokens_per_s": args.tokens_per_s,
            "stage_overhead_s": args.stage_overhead_s,
            "users_per_s": args.users_per_s,
        }
        plan["budget"] = budget(plan["stages"], plan["users"], args.budget_s, assumed)
        if args.backbone in backbone.GGUF_BACKBONES:
            plan["gguf_sha256"] = split_gguf(
                backbone.gguf_file(args.backbone),
                tmp / "part1" / "backbone.gguf.part1",
                tmp / "run" / "backbone.gguf.part2",
                args.part_mib,
            )
        if args.wheels and args.backbone in backbone.GGUF_BACKBONES:
            plan["wheels"] = download_wheels(tmp / "part1" / "wheels")
        files.write_json(tmp / "run" / "plan.json", plan)
    print(format_plan(plan, args.out))
    return plan


def download_wheels(folder: Path) -> list[str]:
    """The packages the GPU image lacks, as wheels for its Python 3.12 (pure-Python ones here)."""
    import importlib.metadata

    folder.mkdir(parents=True, exist_ok=True)
    want = [f"gguf=={importlib.metadata.version('gguf')}"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(folder),
        *want,
    ]
    if subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
        raise UserError(
            f"could not download {', '.join(want)} (needs PyPI); pass --no-wheels and "
            "carry them yourself"
        )
    return sorted(p.name for p in folder.glob("*.whl"))


def format_budget(b: dict) -> str:
    shares = ", ".join(f"{part} {s:.0f}s" for part, s in b["seconds"].items())
    return f"budget {b['budget_s']:.0f}s: {shares}"


def format_plan(plan: dict, out: str) -> str:
    b, a = plan["budget"], plan["budget"]["assumed"]
    lines = [
        f"prepared {out}: {plan['dataset']} ({plan['users']:,} users), backbone "
        f"{plan['backbone']}, SIDs {plan['sid_source']} (collisions before de-dup "
        f"{plan['sid_report']['collision_rate']:.2%})",
        "stage            sequences   tokens/epoch  epochs      tokens   minutes at "
        f"{a['tokens_per_s'] / 1000:.0f}k tokens/s",
    ]
    for name, s in plan["stages"].items():
        minutes = s["tokens"] / a["tokens_per_s"] / 60
        lines.append(
            f"{name:<16} {s['sequences']:>9,}  {s['tokens_per_epoch']:>13,}  "
            f"{s['epochs']:>6}  {s['tokens']:>10,}   {minutes:6.2f}"
        )
    lines += [
        format_budget(b),
        f"training: {b['train_s'] / 60:.2f} min of steps + {len(plan['stages'])} x "
        f"{a['stage_overhead_s']:.0f}s overhead in its {b['seconds']['train']:.0f}s: "
        + ("fits" if b["train_scale"] >= 1 else f"every stage's steps x {b['train_scale']:.2f}"),
        f"evaluation: {b['users']:,} of {plan['users']:,} users for all cells and baselines "
        f"({a['users_per_s']:,.0f}/s a plain cell; CoT x{COT_COST})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return prepare(parse_args(PrepareArgs, argv, "pauserec gpu prepare"))
