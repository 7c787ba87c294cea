"""Foundation commands: ``data stats``, ``sid build``, ``init-ckpt``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from pauserec import backbone, checkpoint, data, files, sid, tokens
from pauserec.backbone import INIT_STRATEGIES
from pauserec.catalog import Catalog
from pauserec.config import parse_args, to_dict
from pauserec.device import describe, resolve_device
from pauserec.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class DataArgs:
    """Print users, items, interactions and the sequence-length distribution of a dataset."""

    dataset: str = field(default="ml-100k", metadata={"help": "ml-100k, office, beauty, toys, or a directory"})
    data_root: str | None = field(default=None, metadata={"help": "folder holding Office/ Beauty/ Toys/"})
    max_history: int = field(default=20, metadata={"help": "history truncation for the split counts",
                                                   "min": 1})


@dataclass
class SidArgs(DataArgs):
    """Build Semantic IDs for a dataset's catalog and print their quality report."""

    out: str | None = field(default=None, metadata={"help": "write sids.json + report.json here"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})
    sid_source: str = field(default="build", metadata={"help": "build (with --sid-method), or a path to an "
                                                               "index json"})
    sid_method: str = field(default=sid.DEFAULT_METHOD, metadata={"help": ", ".join(sid.METHODS),
                                                                  "choices": sid.METHODS})
    sid_levels: int = field(default=3, metadata={"help": "residual quantisation levels (before de-dup)",
                                                 "min": 1, "max": 8})
    sid_codebook_size: int = field(default=256, metadata={"help": "codes per level (scaled down if small)",
                                                          "min": 2, "max": 65536})
    sid_fields: tuple[str, ...] = field(default=("title", "categories", "brand"),
                                        metadata={"help": "comma-separated item text fields",
                                                  "choices": data.TEXT_FIELDS})
    sid_iters: int = field(default=50, metadata={"help": "k-means iterations per level", "min": 1})
    sid_epochs: int = field(default=30, metadata={"help": "RQ-VAE training epochs", "min": 1})
    seed: int = field(default=0, metadata={"help": "random seed", "min": 0})
    preset: str | None = field(default=None, metadata={"help": "configs/NAME.toml supplies defaults"})

    def sid_config(self) -> sid.SIDConfig:
        return sid.SIDConfig(self.sid_source, self.sid_levels, self.sid_codebook_size, tuple(self.sid_fields),
                             self.sid_iters, self.seed, method=self.sid_method, epochs=self.sid_epochs)


@dataclass
class SidBuildArgs(SidArgs):
    """Build Semantic IDs for a dataset's catalog and print their quality report."""

    compare: str | None = field(default=None, metadata={"help": "a published index (X.index.*.json) of the "
                                                         "same catalog, reported side by side"})


INIT_SECTIONS = ("sid", "init")  # a preset's [sid] builds the codes, its [init] the rest of the checkpoint


@dataclass
class InitArgs(SidArgs):
    """Write an untrained checkpoint: backbone + SID/pause/think tokens + the catalog."""

    backbone: str = field(default="smollm2-135m", metadata={"help": "smollm2-135m, tiny, or a HF id/dir"})
    init: str = field(default="mean-all", metadata={"help": "new-row init: " + ", ".join(INIT_STRATEGIES),
                                                    "choices": INIT_STRATEGIES})


def data_stats(argv: list[str] | None = None) -> dict:
    return stats(parse_args(DataArgs, argv, "pauserec data stats"))


def stats(args: DataArgs) -> dict:
    """Print (and return) a dataset's size, sequence lengths and split sizes."""
    ds = data.load_dataset(args.dataset, args.data_root)
    s = data.stats(ds)
    s["split"] = {k: len(v) for k, v in data.split(ds, args.max_history).items()}
    print(data.format_stats(s))
    print(data.format_split(s["split"], args.max_history))
    return s


def sid_build(argv: list[str] | None = None) -> dict:
    args = parse_args(SidBuildArgs, argv, "pauserec sid build", section="sid")
    if args.out:
        with files.claim(args.out, overwrite=args.overwrite, inputs=inputs_of(args)):
            pass  # the output policy, checked before the SIDs are built
    ds = data.load_dataset(args.dataset, args.data_root)
    if args.compare:
        sid.load_index(args.compare, ds.items)  # a bad --compare fails before the build
    start = time.perf_counter()
    codes = sid.build(ds.items, args.sid_config())
    report = {**sid.report(codes), "seconds": time.perf_counter() - start}
    print(sid.format_report(report))
    what = args.sid_method if args.sid_source in sid.BUILD_SOURCES else args.sid_source
    print(f"built in {report['seconds']:.1f} s ({what}, seed {args.seed})")
    if args.compare:
        from pauserec import sidcompare

        report["comparison"] = sidcompare.compare(ds.items, codes, args.compare, args.sid_config())
        print(sidcompare.format_comparison(report["comparison"], f"ours ({what})"))
    if args.out:
        claim = files.claim(args.out, overwrite=args.overwrite, inputs=inputs_of(args))
        with claim, files.atomic_dir(args.out) as tmp:
            sid.write_index(tmp / "sids.json", ds.items, codes, args.sid_config())
            files.write_json(tmp / "report.json", report)
        print(f"wrote {args.out}/sids.json and report.json")
    return report


def inputs_of(args: SidArgs) -> list[str]:
    """The paths a SID or init command reads (an output may not overlap them): the dataset folder, the
    SID index, the ``--compare`` index, a backbone folder."""
    paths = [args.dataset, getattr(args, "backbone", ""), getattr(args, "compare", None)]
    if args.sid_source not in sid.BUILD_SOURCES:
        paths.append(args.sid_source)
    return [p for p in paths if p]


def init_ckpt(argv: list[str] | None = None) -> checkpoint.Checkpoint:
    args = parse_args(InitArgs, argv, "pauserec init-ckpt", section=INIT_SECTIONS)
    return create(args)


def create(args: InitArgs) -> checkpoint.Checkpoint:
    """Dataset -> SIDs -> backbone with the workbench's tokens -> saved checkpoint (``args.out``)."""
    if not args.out:
        raise UserError("init-ckpt needs --out DIR")
    with files.claim(args.out, overwrite=args.overwrite, inputs=inputs_of(args)):
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
    from pauserec.prompts import HEAD, TAIL  # the tiny tokenizer must know the prompt's words

    corpus = [HEAD, TAIL] + [f"{it.display_title} {it.categories} {it.brand} {it.year}" for it in ds.items]
    model, tok = backbone.load_backbone(args.backbone, corpus=corpus, seed=args.seed)
    timings["backbone_load_s"] = time.perf_counter() - t
    backbone.add_tokens(model, tok, tokens.special_tokens(catalog.codebook_sizes), args.init, args.seed)
    wall = time.perf_counter() - start
    timings.update(wall_s=wall, device_hours=wall / 3600, **describe(resolve_device("cpu"), "fp32"))
    meta = {
        "variant": "base", "stage": "init", "cell": "init", "n_pauses": 0, "backbone": args.backbone,
        "dataset": {"name": args.dataset, "data_root": args.data_root, "max_history": args.max_history},
        "sid": {"config": to_dict(args.sid_config()), "report": report,
                "codebook_sizes": catalog.codebook_sizes},
        "configs": {"init": to_dict(args)}, "metrics": {}, "timings": {"init": timings}, "parent": None,
        "train_seed": None,
    }
    ckpt = checkpoint.Checkpoint(model, tok, catalog, meta)
    checkpoint.save(ckpt, args.out)
    print(f"wrote checkpoint {args.out} ({args.backbone}, {len(catalog):,} items, {len(tok):,} tokens)")
    return ckpt
