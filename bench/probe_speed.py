"""Wall-clock and CPU time of the two embedding/attention probes against the issue's targets.

* ``probes.alignment`` without UMAP on a Beauty-sized checkpoint (12k items): target 120 s;
* ``probes.attention`` on 256 test users with SmolLM2-135M (no interventions): target 300 s.

Prints ``<probe>: wall X s, cpu Y s, target T s, ratio wall/target R`` per probe. Timings are only
meaningful on an otherwise idle machine (other processes on the same cores inflate both numbers).

    python bench/probe_speed.py --align-ckpt /tmp/p1/beauty --attn-ckpt /tmp/pr/demo/init
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import dataclass

from pauserec.cli import run, setup_logging
from pauserec.config import arg, parse_args
from pauserec.model import checkpoint
from pauserec.model.catalog import Catalog
from probes import alignment, attention

TARGETS = {"alignment": 120.0, "attention": 300.0}


@dataclass
class BenchArgs:
    """Time probes.alignment (no UMAP) and probes.attention against the issue's speed targets."""

    align_ckpt: str = arg("", "Beauty-sized checkpoint ('' = skip)")
    attn_ckpt: str = arg("", "SmolLM2 checkpoint ('' = skip)")
    n_users: int = arg(256, "users of the attention probe")
    device: str = arg("auto", "auto, cpu, cuda, ...")


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    args = parse_args(BenchArgs, argv, "python bench/probe_speed.py")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.align_ckpt:
            n = len(Catalog.read(f"{args.align_ckpt}/{checkpoint.CATALOG_FILE}"))
            print(f"alignment on {args.align_ckpt} ({n:,} items), --no-umap")
            results["alignment"] = timed(
                lambda: alignment.main(
                    [args.align_ckpt, "--out", f"{tmp}/a", "--no-umap", "--device", args.device]
                )
            )
        if args.attn_ckpt:
            print(f"attention on {args.attn_ckpt}, {args.n_users} users")
            results["attention"] = timed(
                lambda: attention.main(
                    [
                        args.attn_ckpt,
                        "--out",
                        f"{tmp}/b",
                        "--n-users",
                        str(args.n_users),
                        "--device",
                        args.device,
                    ]
                )
            )
    for name, (wall, cpu) in results.items():
        print(
            f"{name}: wall {wall:.1f} s, cpu {cpu:.1f} s, target {TARGETS[name]:.0f} s, "
            f"ratio wall/target {wall / TARGETS[name]:.2f}"
        )
    return results


if __name__ == "__main__":
    setup_logging(logging.WARNING)
    sys.exit(run(main))
