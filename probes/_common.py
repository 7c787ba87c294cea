"""What every probe shares: its argument base class, checkpoint loading and the results contract.

Every probe writes, atomically, ``OUT/results.csv`` (tidy: one measurement per row,
``metric, value`` plus the identity of the checkpoint it came from --
:data:`pauserec.checkpoint.IDENTITY` -- and whichever of ``layer, head, pos, user_id, item_id``
apply) and ``OUT/meta.json`` (args, versions, device, each checkpoint's identity and health).
Nothing else: figures are drawn by :mod:`analysis` from these files.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pauserec import __version__, files, registry
from pauserec.cli import run, setup_logging
from pauserec.config import arg, parse_args, to_dict
from pauserec.errors import UserError
from pauserec.model import checkpoint
from pauserec.model.checkpoint import Checkpoint
from pauserec.model.device import DEVICES_HELP, DTYPES, describe, resolve_device, resolve_dtype
from pauserec.teacher import llm

log = logging.getLogger(__name__)
REQUIRED_COLUMNS = ("variant", "metric", "value")
RECOMMENDER_STAGES = registry.RECOMMENDERS
HEALTH_USERS = 16


@dataclass
class ProbeArgs:
    """Base arguments of every probe."""

    ckpt: list[str] = arg(help="checkpoint dir(s)", factory=list, positional=True)
    out: str = arg("", "output directory: results.csv and meta.json (must not exist)")
    overwrite: bool = arg(False, "replace an existing --out")
    seed: int = arg(0, "seed of the probe's samples", min=0)
    device: str = arg("auto", DEVICES_HELP)
    dtype: str = arg("auto", "weights: auto (bf16 where native), bf16, fp16, fp32", choices=DTYPES)


@dataclass
class LLMProbeArgs(ProbeArgs):
    """A probe that asks an OpenAI-compatible endpoint (a paraphraser, a judge)."""

    llm_base_url: str | None = arg(None, f"LLM endpoint (else ${llm.ENV_BASE_URL})")
    llm_model: str | None = arg(None, f"LLM model (else ${llm.ENV_MODEL})")
    llm_cache: str | None = arg(None, "LLM response cache (default OUT.llm-cache.jsonl)")
    llm_timeout: float = arg(60.0, "total seconds per LLM request", gt=0.0)
    llm_max_retries: int = arg(5, "retries per LLM request", min=0)
    llm_backoff: float = arg(0.5, "first retry delay, seconds (doubles)", min=0.0)

    def llm_options(self) -> dict[str, Any]:
        """These settings as keywords of :func:`pauserec.teacher.llm.complete`."""
        return {
            "base_url": self.llm_base_url,
            "model": self.llm_model,
            "cache_path": llm_cache_path(self),
            "timeout": self.llm_timeout,
            "max_retries": self.llm_max_retries,
            "backoff": self.llm_backoff,
        }


def parse(cls, argv: list[str] | None, prog: str):
    return check(parse_args(cls, argv, prog), prog)


def check(args, prog: str = "probe"):
    """Inputs readable and the output claimable, before any work."""
    if not args.out:
        raise UserError(f"{prog}: --out DIR is required")
    if not args.ckpt:
        raise UserError(f"{prog}: give at least one checkpoint directory")
    with files.claim(args.out, kind=kind(args), overwrite=args.overwrite, inputs=inputs(args)):
        pass
    return args


def kind(args) -> str:
    """The command a probe's output is marked with (``--overwrite`` replaces only its own)."""
    return f"python -m {type(args).__module__}"


def inputs(args) -> list:
    """The checkpoints and their datasets (fails fast, before any work, on a bad checkpoint)."""
    return [p for path in args.ckpt for p in checkpoint.source_paths(path)]


def iter_ckpts(args, **kwargs) -> Iterator[Checkpoint]:
    """Load ``args.ckpt`` one at a time (a trajectory of stages never sits in memory at once), on
    ``args.device`` in ``args.dtype``."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    for path in args.ckpt:
        yield checkpoint.load(path, device=device, dtype=dtype, **kwargs)


def label(ckpt: Checkpoint) -> dict[str, Any]:
    """The identity columns every row of a probe's results carries (see ``checkpoint.IDENTITY``)."""
    return ckpt.identity()


# an experiment probes one checkpoint several times in one process
_HEALTH: dict[tuple, dict[str, Any]] = {}


def _health_key(ckpt: Checkpoint, seed: int) -> tuple:
    """The checkpoint's files as they are on disk (a rewritten checkpoint is checked again), where
    and in what precision it runs, and the seed of the users."""
    weights = tuple(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(Path(ckpt.path).glob("*.safetensors"))
    )
    return (
        str(Path(ckpt.path).resolve()),
        weights,
        str(ckpt.model.device),
        str(ckpt.model.dtype),
        seed,
    )


def health(ckpt: Checkpoint, seed: int = 0) -> dict[str, Any]:
    """Whether a recommender checkpoint's top-10 lists depend on the user (beam search, 10 beams, on
    :data:`HEALTH_USERS` test users); a probe run on one that does not says so next to its results.
    Computed once per checkpoint and process."""
    if ckpt.stage not in RECOMMENDER_STAGES:
        return {}
    key = _health_key(ckpt, seed)
    if key not in _HEALTH:
        from pauserec import decoding
        from pauserec.evaluation import evaluate, metrics
        from pauserec.model.prompts import PromptBuilder

        examples = evaluate.examples_for(ckpt, "test", HEALTH_USERS, seed)
        variant, n_pauses = evaluate.prompt_variant(ckpt)
        recs = decoding.recommend(
            ckpt.model,
            PromptBuilder.for_checkpoint(ckpt),
            [ex.history for ex in examples],
            variant=variant,
            n_pauses=n_pauses,
            top_k=10,
            beams=10,
            batch_size=HEALTH_USERS,
        )
        _HEALTH[key] = metrics.health(recs.items, len(ckpt.catalog), evaluate.popular_items(ckpt))
    out = dict(_HEALTH[key])
    if out.get("user_independent"):
        log.warning(
            "%s gives most users the same top-10 list: it has not learned to condition on the "
            "user, so read its probe results with care",
            ckpt.path,
        )
    return out


def run_probe(
    args, compute: Callable[[Checkpoint, Any], pd.DataFrame], name: str, **load: Any
) -> pd.DataFrame:
    """Load each checkpoint in turn, ``compute(ckpt, args)`` its rows, check its health, write the
    results: the body of every probe's ``run``. ``load`` goes to
    :func:`pauserec.checkpoint.load`."""
    frames, healths = [], {}
    for ckpt in iter_ckpts(args, **load):
        log.info("%s probe on %s (%s)", name, ckpt.path, ckpt.stage)
        frames.append(compute(ckpt, args))
        healths[ckpt.path.name] = health(ckpt, args.seed)
    df = pd.concat(frames, ignore_index=True)
    write_results(df, args, extra={"probe": name, "health": healths})
    return df


def entry(
    cls,
    compute: Callable[[Checkpoint, Any], pd.DataFrame],
    name: str,
    check: Callable[[Any], None] | None = None,
    language_model: bool = False,
    **load: Any,
):
    """A probe module's ``(run, main)``: ``run(args)`` computes every checkpoint's rows and writes
    them, ``main(argv)`` parses ``python -m probes.NAME`` flags into ``cls`` first. ``check(args)``
    validates what no single field can, before any checkpoint loads. ``language_model``: the probe
    asks what a pretrained language model knows, so it skips (one line each) checkpoints of a
    backbone trained from scratch, and writes nothing when none is left."""

    def run(args) -> pd.DataFrame:
        if check is not None:
            check(args)
        if language_model:
            args = with_language_models(args, name)
            if not args.ckpt:
                return pd.DataFrame()
        return run_probe(args, compute, name, **load)

    def main(argv: list[str] | None = None) -> pd.DataFrame:
        return run(parse(cls, argv, f"python -m probes.{name}"))

    return run, main


def with_language_models(args, name: str):
    """``args`` with only the checkpoints whose backbone knows language; one line per one
    skipped."""
    from pauserec.model import backbone

    kept = []
    for path in args.ckpt:
        model = str(checkpoint.read_meta(path).get("backbone") or "")
        if backbone.language_model(model):
            kept.append(path)
        else:
            log.warning(
                "%s probe skips %s: it needs a pretrained language model, and backbone %s is "
                "trained from scratch here",
                name,
                path,
                model,
            )
    return dataclasses.replace(args, ckpt=kept)


def write_results(df: pd.DataFrame, args, extra: dict[str, Any] | None = None) -> Path:
    """Write results.csv and meta.json into ``args.out`` in one atomic step (figures are drawn by
    :mod:`analysis` from these files)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results lack required column(s) {missing}")
    import torch
    import transformers

    device = resolve_device(args.device)
    meta = {
        "probe": getattr(args, "probe_name", "") or type(args).__module__.rsplit(".", 1)[-1],
        "args": to_dict(args),
        "versions": {
            "pauserec": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        **describe(device, resolve_dtype(args.dtype, device)),
        "checkpoints": [checkpoint.identity(checkpoint.read_meta(p), p) for p in args.ckpt],
        "rows": len(df),
        **(extra or {}),
    }
    claim = files.claim(args.out, kind=kind(args), overwrite=args.overwrite, inputs=inputs(args))
    with claim, files.atomic_dir(args.out) as tmp:
        df.to_csv(tmp / "results.csv", index=False)
        files.write_json(tmp / "meta.json", meta)
    return Path(args.out)


def llm_cache_path(args) -> str | None:
    if args.llm_cache:
        return args.llm_cache
    return (
        str(Path(args.out).with_name(Path(args.out).name + ".llm-cache.jsonl"))
        if args.out
        else None
    )


def cli(main: Callable[[list[str] | None], object]) -> None:
    """``if __name__ == "__main__": cli(main)`` -- one-line errors, exit code 2 on bad input."""
    setup_logging()
    sys.exit(run(main))
