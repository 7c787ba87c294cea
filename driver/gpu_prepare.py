"""``python -m pauserec gpu prepare``: everything a one-command GPU run needs, sized on the CPU beforehand.

Writes ``OUT/`` (gitignored; it travels to the device machine with ``carry``)::

    part1/backbone.gguf.part1        the backbone's first bytes (carried in a first, tiny call)
    run/backbone.gguf.part2          the rest (a call carries at most 64 MiB)
    run/data/NAME/NAME.{inter,item}.json    the dataset, LC-Rec layout (no dataset package needed there)
    run/sids.json                    Semantic IDs (a published index, or built here: rq-vae)
    run/wheels/*.whl                 what the GPU image lacks (gguf)
    run/plan.json                    stages, token counts, the budget arithmetic, the commands

Token counts come from the real corpora built here with the real tokenizer; the budget arithmetic
divides them by an assumed training throughput, which the run replaces with its own measurement.
"""

from __future__ import annotations

import hashlib
import logging
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pauserec import data, files, registry, sid, tokens
from pauserec.config import parse_args
from pauserec.errors import UserError
from pauserec.model import backbone
from pauserec.model.catalog import Catalog
from pauserec.model.checkpoint import Checkpoint
from pauserec.training import stages, train

log = logging.getLogger(__name__)
CELLS = registry.matrix(controls=("think-only",), rationales=("template",))  # evaluated, in this order
STAGE_PLAN = [registry.Cell(s) for s in registry.SHARED] + [c for c in CELLS if c.stage not in registry.SHARED]
CARRY_MIB = 64  # what one device call carries


@dataclass
class PrepareArgs:
    """Prepare the one-command GPU run: data, SIDs, the backbone in parts, wheels and the budget."""

    dataset: str = field(default="beauty", metadata={"help": "ml-100k, office, beauty, toys, or a directory"})
    data_root: str | None = field(default=None, metadata={"help": "folder holding Office/ Beauty/ Toys/"})
    out: str = field(default="gpu_run", metadata={"help": "output folder (gitignored; carried to the GPU)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})
    backbone: str = field(default="smollm2-135m", metadata={"help": "smollm2-135m (carried as GGUF parts) "
                                                                    "or tiny (rehearsals)"})
    sid_source: str = field(default="", metadata={"help": "a SID index file (default: the dataset's published "
                                                          "index when there is one, else rq-vae built here)"})
    preset: str = field(default="gpu", metadata={"help": "configs/NAME.toml: [train.*] of the run"})
    max_history: int = field(default=20, metadata={"help": "history length", "min": 1})
    part_mib: int = field(default=56, metadata={"help": "size of the first GGUF part, MiB", "min": 1,
                                                "max": CARRY_MIB - 1})
    tokens_per_s: float = field(default=250_000.0, metadata={"help": "assumed training throughput on the GPU "
                                                                    "(the run measures its own)", "gt": 0.0})
    budget_s: float = field(default=510.0, metadata={"help": "the run's time budget, seconds", "gt": 0.0})
    wheels: bool = field(default=True, metadata={"help": "download the wheels the GPU image lacks (PyPI)"})


def write_dataset(ds: data.Dataset, folder: Path) -> str:
    """The dataset as LC-Rec files (its own item ids, oldest-first sequences); returns its folder name."""
    name = data.folder_name(ds.name)
    items = {it.item_id: {"title": it.title, "categories": it.categories, "brand": it.brand,
                          "description": it.description, "year": it.year} for it in ds.items}
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
    """Per planned stage: sequences, tokens per epoch, epochs and optimizer steps, from the real corpora."""
    out = {}
    for cell in STAGE_PLAN:
        args = train.stage_args(cell.stage, preset, from_ckpt="-", out="-", **cell.train_values())
        corpus = stages.build_corpus(ckpt, args)[0]
        tokens_per_epoch = int(corpus.lengths().sum())
        steps = math.ceil(len(corpus) / args.batch_size) * args.epochs
        out[cell.name] = {"stage": cell.stage, "extra": cell.train_values(), "sequences": len(corpus), "tokens_per_epoch": tokens_per_epoch,
                     "epochs": args.epochs, "tokens": tokens_per_epoch * args.epochs, "steps": steps,
                     "batch_size": args.batch_size}
    return out


def budget(plan: dict, tokens_per_s: float, budget_s: float) -> dict:
    """The arithmetic: tokens per stage / throughput = seconds, against the run's budget."""
    train_s = sum(s["tokens"] for s in plan.values()) / tokens_per_s
    return {"assumed_tokens_per_s": tokens_per_s, "train_s": train_s, "budget_s": budget_s,
            "train_share": 0.55, "fits": train_s <= 0.55 * budget_s,
            "scale_if_measured_equal": min(1.0, 0.55 * budget_s / max(train_s, 1e-9))}


def prepare(args: PrepareArgs) -> dict:
    for cell in STAGE_PLAN:  # every stage's settings, before any work
        train.stage_args(cell.stage, args.preset, from_ckpt="-", out="-", **cell.train_values())
    inputs = [args.dataset, *data.source_paths(args.dataset, args.data_root), args.sid_source]
    claim = files.claim(args.out, kind="pauserec gpu prepare", overwrite=args.overwrite,
                        inputs=inputs)
    with claim, files.atomic_dir(args.out) as tmp:
        ds = data.load_dataset(args.dataset, args.data_root)
        name = write_dataset(ds, tmp / "run" / "data")
        index = default_index(args)
        cfg = sid.SIDConfig(source=index or "build", method="rq-vae")
        codes = sid.build(ds.items, cfg)
        sid.write_index(tmp / "run" / "sids.json", ds.items, codes, cfg)
        catalog = Catalog.from_codes(ds.items, codes)
        model, tok = backbone.load_backbone(args.backbone, corpus=_tiny_corpus(ds))
        backbone.add_tokens(model, tok, tokens.special_tokens(catalog.codebook_sizes))
        ckpt = Checkpoint(model, tok, catalog, {"dataset": {"name": args.dataset, "data_root": str(tmp / "run" / "data"),
                                                            "max_history": args.max_history}})
        plan = {"dataset": name, "source_dataset": args.dataset, "backbone": args.backbone, "preset": args.preset,
                "sid_source": Path(index).name if index else "rq-vae (built here)",
                "sid_report": sid.report(codes), "max_history": args.max_history, "users": len(ds.sequences),
                "stages": stage_tokens(ckpt, args.preset)}
        plan["budget"] = budget(plan["stages"], args.tokens_per_s, args.budget_s)
        if args.backbone in backbone.GGUF_BACKBONES:
            plan["gguf_sha256"] = split_gguf(backbone.gguf_file(args.backbone), tmp / "part1" / "backbone.gguf.part1",
                                             tmp / "run" / "backbone.gguf.part2", args.part_mib)
        if args.wheels and args.backbone in backbone.GGUF_BACKBONES:
            plan["wheels"] = download_wheels(tmp / "run" / "wheels")
        files.write_json(tmp / "run" / "plan.json", plan)
    print(format_plan(plan, args.out))
    return plan


def _tiny_corpus(ds: data.Dataset) -> list[str]:
    from pauserec.model.prompts import HEAD, TAIL

    return [HEAD, TAIL] + [f"{it.display_title} {it.categories} {it.brand} {it.year}" for it in ds.items]


def download_wheels(folder: Path) -> list[str]:
    """The packages the GPU image lacks, as wheels for its Python 3.12 (pure-Python ones here)."""
    import importlib.metadata

    folder.mkdir(parents=True, exist_ok=True)
    want = [f"gguf=={importlib.metadata.version('gguf')}"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(folder), *want]
    if subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
        raise UserError(f"could not download {', '.join(want)} (needs PyPI); pass --no-wheels and carry them yourself")
    return sorted(p.name for p in folder.glob("*.whl"))


def format_plan(plan: dict, out: str) -> str:
    b = plan["budget"]
    lines = [f"prepared {out}: {plan['dataset']} ({plan['users']:,} users), backbone {plan['backbone']}, SIDs "
             f"{plan['sid_source']} (collisions before de-dup {plan['sid_report']['collision_rate']:.2%})",
             "stage            sequences   tokens/epoch  epochs      tokens   minutes at "
             f"{b['assumed_tokens_per_s'] / 1000:.0f}k tokens/s"]
    for name, s in plan["stages"].items():
        lines.append(f"{name:<16} {s['sequences']:>9,}  {s['tokens_per_epoch']:>13,}  {s['epochs']:>6}  "
                     f"{s['tokens']:>10,}   {s['tokens'] / b['assumed_tokens_per_s'] / 60:6.2f}")
    lines.append(f"training {b['train_s'] / 60:.2f} min of the run's {b['budget_s'] / 60:.1f} min budget "
                 f"({b['train_share']:.0%} is for training; the rest evaluates): "
                 + ("fits" if b["fits"] else f"the run scales every stage by {b['scale_if_measured_equal']:.2f}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return prepare(parse_args(PrepareArgs, argv, "pauserec gpu prepare"))
