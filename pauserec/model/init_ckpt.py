"""``python -m pauserec init-ckpt``: an untrained checkpoint -- backbone + SID, pause and think
tokens + the catalog with its Semantic IDs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pauserec import data, files, sid, tokens
from pauserec.config import arg, parse_args, to_dict
from pauserec.errors import UserError
from pauserec.model import backbone, checkpoint, prompts
from pauserec.model.backbone import INIT_STRATEGIES
from pauserec.model.catalog import Catalog
from pauserec.model.device import describe, resolve_device
from pauserec.sid.command import SidArgs, inputs_of

log = logging.getLogger(__name__)


# a preset's [sid] builds the codes, its [init] the rest of the checkpoint
INIT_SECTIONS = ("sid", "init")


@dataclass
class InitArgs(SidArgs):
    """Write an untrained checkpoint: backbone + SID/pause/think tokens + the catalog."""

    backbone: str = arg("smollm2-135m", "smollm2-135m, tiny, or a HF id/dir")
    init: str = arg("mean-all", "new-row init: {choices}", choices=INIT_STRATEGIES)


def main(argv: list[str] | None = None) -> checkpoint.Checkpoint:
    args = parse_args(InitArgs, argv, "pauserec init-ckpt", section=INIT_SECTIONS)
    return create(args)


def create(args: InitArgs) -> checkpoint.Checkpoint:
    """Dataset -> SIDs -> backbone with the workbench's tokens -> saved checkpoint
    (``args.out``)."""
    if not args.out:
        raise UserError("init-ckpt needs --out DIR")
    claim = files.claim(
        args.out, kind="pauserec init-ckpt", overwrite=args.overwrite, inputs=inputs_of(args)
    )
    with claim:
        return _create(args)


def _create(args: InitArgs) -> checkpoint.Checkpoint:
    timings: dict[str, object] = {}
    start = t = time.perf_counter()
    ds = data.load_dataset(args.dataset, args.data_root)
    codes = sid.build(ds.items, args.sid_config())
    report = sid.report(codes)
    timings["sid_build_s"] = time.perf_counter() - t
    print(sid.format_report(report))
    catalog = Catalog.from_codes(ds.items, codes)
    t = time.perf_counter()
    corpus = vocabulary_texts(ds.items)
    model, tok = backbone.load_backbone(args.backbone, corpus=corpus, seed=args.seed)
    timings["backbone_load_s"] = time.perf_counter() - t
    backbone.add_tokens(
        model, tok, tokens.special_tokens(catalog.codebook_sizes), args.init, args.seed
    )
    wall = time.perf_counter() - start
    timings.update(wall_s=wall, device_hours=wall / 3600, **describe(resolve_device("cpu"), "fp32"))
    meta = {
        "variant": "base",
        "stage": "init",
        "cell": "init",
        "n_pauses": 0,
        "backbone": args.backbone,
        "dataset": {
            "name": args.dataset,
            "data_root": args.data_root,
            "max_history": args.max_history,
        },
        "sid": {
            "config": to_dict(args.sid_config()),
            "report": report,
            "codebook_sizes": catalog.codebook_sizes,
        },
        "configs": {"init": to_dict(args)},
        "metrics": {},
        "timings": {"init": timings},
        "parent": None,
        "train_seed": None,
    }
    ckpt = checkpoint.Checkpoint(model, tok, catalog, meta)
    checkpoint.save(ckpt, args.out)
    print(
        f"wrote checkpoint {args.out} ({args.backbone}, "
        f"{len(catalog):,} items, {len(tok):,} tokens)"
    )
    return ckpt


def vocabulary_texts(items: list[data.Item]) -> list[str]:
    """What a from-scratch backbone's word-level tokenizer is built from: every fixed text of the
    workbench (prompt, grounding questions, template rationales) and every item's text as grounding
    shows it."""
    return prompts.fixed_texts() + [
        it.text(prompts.GROUNDING_FIELDS, prompts.DESC_WORDS) for it in items
    ]
