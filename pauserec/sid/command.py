"""``python -m pauserec sid build``: Semantic IDs for a dataset's catalog, with a quality report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pauserec import data, files, sid
from pauserec.config import arg, parse_args
from pauserec.data.command import DataArgs

KIND = "pauserec sid build"


@dataclass
class SidArgs(DataArgs):
    """Build Semantic IDs for a dataset's catalog and print their quality report."""

    out: str | None = arg(None, "write sids.json + report.json here")
    overwrite: bool = arg(False, "replace an existing --out")
    sid_source: str = arg("build", "build (with --sid-method), or a path to an index json")
    sid_method: str = arg(sid.DEFAULT_METHOD, "{choices}", choices=sid.METHODS)
    sid_levels: int = arg(3, "residual quantisation levels (before de-dup)", min=1, max=8)
    sid_codebook_size: int = arg(256, "codes per level (scaled down if small)", min=2, max=65536)
    sid_fields: tuple[str, ...] = arg(
        ("title", "categories", "brand"),
        "comma-separated item text fields",
        choices=data.TEXT_FIELDS,
        min_items=1,
    )
    sid_iters: int = arg(50, "k-means iterations per level", min=1, max=10_000)
    sid_epochs: int = arg(30, "RQ-VAE training epochs", min=1, max=10_000)
    seed: int = arg(0, "random seed", min=0)
    preset: str | None = arg(None, "configs/NAME.toml supplies defaults")

    def sid_config(self) -> sid.SIDConfig:
        return sid.SIDConfig(
            self.sid_source,
            self.sid_levels,
            self.sid_codebook_size,
            tuple(self.sid_fields),
            self.sid_iters,
            self.seed,
            method=self.sid_method,
            epochs=self.sid_epochs,
        )


@dataclass
class SidBuildArgs(SidArgs):
    """Build Semantic IDs for a dataset's catalog and print their quality report."""

    compare: str | None = arg(None, "a published index (X.index.*.json) to report side by side")


def sid_build(argv: list[str] | None = None) -> dict:
    args = parse_args(SidBuildArgs, argv, "pauserec sid build", section="sid")
    if args.out:
        with files.claim(args.out, kind=KIND, overwrite=args.overwrite, inputs=inputs_of(args)):
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
        from pauserec.sid import compare as sidcompare

        report["comparison"] = sidcompare.compare(ds.items, codes, args.compare, args.sid_config())
        print(sidcompare.format_comparison(report["comparison"], f"ours ({what})"))
    if args.out:
        claim = files.claim(args.out, kind=KIND, overwrite=args.overwrite, inputs=inputs_of(args))
        with claim, files.atomic_dir(args.out) as tmp:
            sid.write_index(tmp / "sids.json", ds.items, codes, args.sid_config())
            files.write_json(tmp / "report.json", report)
        print(f"wrote {args.out}/sids.json and report.json")
    return report


def inputs_of(args: SidArgs) -> list[str | Path]:
    """The paths a SID or init command reads (an output may not overlap them): the dataset's folder
    and data root (a name resolved), the SID index, the ``--compare`` index, a backbone folder."""
    paths = [
        *data.source_paths(args.dataset, args.data_root),
        args.dataset,
        getattr(args, "backbone", ""),
        getattr(args, "compare", None),
    ]
    if args.sid_source not in sid.BUILD_SOURCES:
        paths.append(args.sid_source)
    return [p for p in paths if p]
