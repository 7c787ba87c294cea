"""Resumable training state, the stage's one clock and the live CSV logs, in ``OUT.partial`` beside
the final checkpoint.

``OUT.partial/state.pt`` holds the trainable weights, optimizer, scheduler, RNG states and the
:class:`Progress`; it is written to a temp file and renamed, so a kill never leaves half of it. The
final checkpoint ``OUT`` appears only when a stage finishes (see :mod:`pauserec.training.train`),
and ``OUT.partial`` is removed then. Time is one :class:`Clock`: the stage's wall seconds, all
segments of a resumed run included; every timing of a stage (log rows, throughput, the checkpoint's
``wall_s``) reads it.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import shutil
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pauserec import files
from pauserec.errors import UserError

log = logging.getLogger(__name__)
KIND = "pauserec train"  # the marker of its outputs
PARTIAL_KIND = "pauserec train (resumable state)"  # the marker of OUT.partial (:func:`check_owner`)
STATE_FILE = "state.pt"
LOG_FILE = "train_log.csv"
LOG_FIELDS = (
    "step",
    "epoch",
    "loss",
    "lr",
    "grad_norm",
    "tokens",
    "targets",
    "tokens_per_s",
    "elapsed_s",
)
VALID_FILE = "valid_log.csv"
VALID_FIELDS = (
    "step",
    "epoch",
    "targets",
    "users",
    "recall@10",
    "ndcg@10",
    "popular_recall@10",
    "seconds",
    "elapsed_s",
)


class Clock:
    """The stage's wall clock: seconds of the earlier segments of a resumed run plus this
    segment's."""

    def __init__(self) -> None:
        self.start, self.before = time.perf_counter(), 0.0

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.start


@dataclass
class Progress:
    """Where a stage's training stands: saved with the weights, so a resumed run continues it."""

    fingerprint: dict = field(default_factory=dict)  # the settings a resumed run must share
    step: int = 0
    tokens: int = 0  # real input tokens trained on, all processes
    labelled: int = 0  # tokens that carried loss
    targets: int = 0  # next-item targets trained on (the corpus's count per sequence)
    seconds: float = 0.0  # the stage's clock at the last save
    saved_step: int = 0
    log: list[dict] = field(default_factory=list)  # training log rows (LOG_FIELDS)
    valid: list[dict] = field(default_factory=list)  # validation rows (VALID_FIELDS)
    scaler: dict | None = None  # the fp16 loss scaler's state

    @classmethod
    def from_dict(cls, values: dict) -> Progress:
        """A saved progress; states written before this class read their wall time as the clock."""
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        known.setdefault("seconds", float(values.get("wall", values.get("elapsed", 0.0))))
        return cls(**known)


def partial_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def check_owner(partial: Path) -> None:
    """``OUT.partial`` is training's to resume and delete only when training made it (its
    marker)."""
    if os.path.lexists(partial) and files.written_by(partial) != PARTIAL_KIND:
        raise UserError(
            f"{partial} exists and was not written by {KIND}; training keeps its "
            "resumable state there and would delete it: move it away or pick another "
            "--out"
        )


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


STATE_KEYS = ("params", "optimizer", "scheduler", "rng", "progress")


def _unusable(partial: Path, why: str) -> UserError:
    return UserError(
        f"cannot resume from {partial / STATE_FILE}: {why}; delete {partial} (or rerun without "
        "--resume) to start over"
    )


def check(partial: Path) -> None:
    """Fail fast, before a model is loaded, on a saved state that is cut short (a torch file is a
    zip archive whose directory is at its end) or unreadable."""
    path = partial / STATE_FILE
    if not path.is_file():
        return
    try:
        whole = zipfile.is_zipfile(path)
    except OSError as err:
        raise _unusable(partial, err.strerror or type(err).__name__) from None
    if not whole:
        raise _unusable(partial, "the file is truncated or not a training state")


def read(partial: Path) -> dict[str, Any]:
    """The saved state in ``partial``, checked to be one; a broken file is a :class:`UserError`."""
    check(partial)
    try:
        state = torch.load(partial / STATE_FILE, map_location="cpu", weights_only=False)
    except OSError as err:
        raise _unusable(partial, err.strerror or type(err).__name__) from None
    except Exception as err:  # noqa: BLE001 -- torch/pickle raise many types for a corrupt file
        raise _unusable(partial, f"corrupt file ({type(err).__name__})") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing or not isinstance(state["progress"], dict) or "fingerprint" not in state["progress"]:
        raise _unusable(
            partial, f"not a training state (missing {', '.join(missing) or 'progress'})"
        )
    return state


def start(
    partial: Path,
    model: nn.Module,
    opt,
    sched,
    resume: bool,
    fingerprint: dict,
    clock: Clock,
    rank: int = 0,
) -> Progress:
    """Progress to continue from: the saved state (``resume`` and one exists; the clock resumes from
    its time), else a fresh start."""
    path = partial / STATE_FILE
    if resume and path.is_file():
        state = read(partial)
        progress = Progress.from_dict(state["progress"])
        changed = sorted(
            k
            for k in set(fingerprint) | set(progress.fingerprint)
            if fingerprint.get(k) != progress.fingerprint.get(k)
        )
        if changed:
            raise UserError(
                f"cannot resume from {partial}: it was written with other settings "
                f"({', '.join(changed)}); delete it (or rerun without --resume) to start over"
            )
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state["params"].items():
                named[name].copy_(value)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        clock.before = progress.seconds
        log.info("resuming from %s at step %d", partial, progress.step)
        return progress
    if resume:
        log.info("--resume: no saved state in %s; starting from step 0", partial)
    elif path.is_file():
        log.warning("discarding the saved state in %s (pass --resume to continue from it)", partial)
    if rank == 0 and partial.exists():
        shutil.rmtree(partial)
    if rank == 0:
        partial.mkdir(parents=True, exist_ok=True)
        files.mark(partial, PARTIAL_KIND)
    return Progress(fingerprint=fingerprint)


def save(
    partial: Path, model: nn.Module, opt, sched, progress: Progress, clock: Clock, rank: int = 0
) -> None:
    """Write the resumable state atomically (rank 0 only; every rank records the step)."""
    progress.saved_step, progress.seconds = progress.step, clock()
    if rank != 0:
        return
    partial.mkdir(parents=True, exist_ok=True)
    payload = {
        "params": {
            n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad
        },
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": _rng_state(),
        "progress": asdict(progress),
    }
    fd, tmp = tempfile.mkstemp(dir=partial, prefix=".state.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, partial / STATE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CsvLog:
    """A per-stage log (training or validation): rows live in ``rows`` (saved with the state) and,
    on rank 0, in a CSV file appended as training goes (rewritten from ``rows`` on start, so a
    resumed log has no gaps)."""

    def __init__(
        self,
        path: Path,
        rows: list[dict],
        fields: tuple[str, ...] = LOG_FIELDS,
        enabled: bool = True,
    ):
        self.path, self.rows, self.fields, self.enabled = path, rows, fields, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.enabled:
            with open(self.path, "a", newline="") as fh:
                csv.DictWriter(fh, self.fields, extrasaction="ignore").writerow(row)
