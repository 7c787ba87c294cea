"""Bad input, tried as a hostile but fair user would, through the real CLI of every command.

Each row is one malformed input. It must end with exit code 2 and exactly one line on stderr
starting with ``error:`` (no traceback), and leave every file it found exactly as it was: the test
hashes every file and folder under its tmp dir (and the shared checkpoint) before and after, so an
``--out`` that did not exist before must not exist after, and no ``.old``/``.partial``/``.tmp``/lock
file may be left behind.

Rows marked ``ok`` are valid input that used to lose or mangle something: they must exit 0 without a
traceback and change nothing but what ``writes`` names (glob patterns under the tmp dir), and
``then`` checks what they must have done.

Most rows call ``pauserec.cli.run(main, argv)`` in process (the same boundary ``python -m`` goes
through); the rows marked ``sub`` run ``python -m ...`` in a subprocess to prove the entry points.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import importlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import write_lcrec
from pauserec import cli, data, files
from pauserec.config import parse_args
from pauserec.teacher import rationales
from pauserec.training import trainstate
from servers import ScriptedServer, free_port

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
Setup = Callable[[Path, Path], None]


@dataclass
class Case:
    """``cmd``: module then arguments; ``{ckpt}`` is the shared checkpoint (never to be written),
    ``{c}`` a copy of it in the tmp dir (made by ``ckpt_copy``), ``{t}`` the tmp dir."""

    id: str
    cmd: str
    setup: tuple[Setup, ...] = ()
    expect: str = ""  # a substring of the error line
    sub: bool = False  # through ``python -m`` in a subprocess
    needs_perms: bool = False  # relies on file permissions, which root ignores
    needs_root: bool = False  # makes a device node, which only root may
    env: tuple[tuple[str, str], ...] = ()  # environment variables ({t} is the tmp dir)
    ok: bool = False  # valid input: exit 0, and nothing but ``writes`` changes
    writes: tuple[str, ...] = ()  # ok rows: glob patterns (relative to {t}) of what may change
    then: Callable[[Path], None] | None = None  # ok rows: what must hold afterwards, given {t}


# ---- what a row finds on disk --------------------------------------------------------------------


def file(name: str, content: bytes = b"keep me\n") -> Setup:
    def setup(t: Path, ckpt: Path) -> None:
        (t / name).parent.mkdir(parents=True, exist_ok=True)
        (t / name).write_bytes(content)

    return setup


def folder(name: str, keep: bool = True) -> Setup:
    def setup(t: Path, ckpt: Path) -> None:
        (t / name).mkdir(parents=True, exist_ok=True)
        if keep:
            (t / name / "mine.txt").write_text("keep me\n")

    return setup


def ckpt_copy(mutate: Callable[[Path], None] | None = None, name: str = "c") -> Setup:
    def setup(t: Path, ckpt: Path) -> None:
        shutil.copytree(ckpt, t / name)
        if mutate:
            mutate(t / name)

    return setup


def edit_meta(**changes) -> Callable[[Path], None]:
    def mutate(c: Path) -> None:
        meta = json.loads((c / "pauserec.json").read_text())
        (c / "pauserec.json").write_text(json.dumps({**meta, **changes}))

    return mutate


def overwrite(name: str, content: bytes | str) -> Callable[[Path], None]:
    def mutate(c: Path) -> None:
        (c / name).write_bytes(content.encode() if isinstance(content, str) else content)

    return mutate


def truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def mutate(c: Path) -> None:
        raw = (c / name).read_bytes()
        (c / name).write_bytes(raw[: int(len(raw) * keep)])

    return mutate


def prefix(name: str, junk: bytes) -> Callable[[Path], None]:
    def mutate(c: Path) -> None:
        (c / name).write_bytes(junk + (c / name).read_bytes())

    return mutate


def chmod(name: str, mode: int) -> Setup:
    def setup(t: Path, ckpt: Path) -> None:
        (t / name).chmod(mode)

    return setup


MINI_SEQ = {"u1": [0, 1, 2, 3], "u2": [1, 2, 3, 4], "u3": [2, 3, 4, 5]}


def mini(
    items: dict | None = None, item_bytes: bytes | None = None, inter_bytes: bytes | None = None
) -> Setup:
    """A 6-item LC-Rec dataset at ``{t}/mini`` (optionally with given items or raw file
    contents)."""

    def setup(t: Path, ckpt: Path) -> None:
        d = write_lcrec(t, "mini", MINI_SEQ, items)
        if item_bytes is not None:
            (d / "mini.item.json").write_bytes(item_bytes)
        if inter_bytes is not None:
            (d / "mini.inter.json").write_bytes(inter_bytes)

    return setup


def index(entries: Callable[[int], object] | object, name: str = "idx.json") -> Setup:
    """A SID index for the 6 items of ``mini``: ``entries(i)`` per item, or the whole file's
    object."""

    def setup(t: Path, ckpt: Path) -> None:
        obj = {str(i): entries(i) for i in range(6)} if callable(entries) else entries
        (t / name).write_text(json.dumps(obj))

    return setup


def refused(id: str, cmd: str, args: str, *setup: Setup) -> Case:
    """A row whose ``args`` (added to ``cmd``) are refused with a message naming their first
    flag."""
    return Case(id, f"{cmd} {args}", setup, args.split()[0])


def with_preset(id: str, cmd: str, toml: str | bytes, expect: str) -> Case:
    """A row running ``cmd --preset {t}/p.toml``, that file holding ``toml`` (text or raw bytes)."""
    content = toml if isinstance(toml, bytes) else toml.encode()
    return Case(id, cmd + " --preset {t}/p.toml", (file("p.toml", content),), expect)


def state(payload: bytes | None = None) -> Setup:
    """``{t}/o.partial/state.pt``: the given bytes, or a valid torch file that is not a training
    state."""

    def setup(t: Path, ckpt: Path) -> None:
        (t / "o.partial").mkdir()
        files.mark(t / "o.partial", trainstate.PARTIAL_KIND)  # training's own: resumed, not refused
        if payload is None:
            torch.save({"params": {}}, t / "o.partial" / "state.pt")
        else:
            (t / "o.partial" / "state.pt").write_bytes(payload)

    return setup


HELD: list = []


def held_lock(name: str) -> Setup:
    """Another process is writing ``{t}/name``: its lock file is held."""

    def setup(t: Path, ckpt: Path) -> None:
        fh = open(t / f".{name}.lock", "w")  # noqa: SIM115 -- closed after the row
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        HELD.append(fh)

    return setup


def amazon(root: str = "amz") -> Setup:
    """A data root ``{t}/ROOT`` holding named datasets: ``Office`` (the 6-item mini), ``Beauty``."""

    def setup(t: Path, ckpt: Path) -> None:
        for name in ("Office", "Beauty"):
            write_lcrec(t / root, name, MINI_SEQ)

    return setup


def special(name: str, kind: str) -> Setup:
    """``{t}/name`` is no regular file: a ``fifo``, a ``chardev`` (as /dev/null), a link to it."""

    def setup(t: Path, ckpt: Path) -> None:
        if kind == "fifo":
            os.mkfifo(t / name)
        elif kind == "chardev":
            os.mknod(t / name, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        else:
            (t / name).symlink_to("/dev/null")

    return setup


def dead_pid() -> int:
    """The PID of a process that has exited."""
    child = [sys.executable, "-c", "import os; print(os.getpid())"]
    return int(subprocess.run(child, capture_output=True, text=True, check=True).stdout)


def stale(name: str) -> Setup:
    """What a killed writer of ``{t}/name`` left beside it: its temp folder and its lock file."""

    def setup(t: Path, ckpt: Path) -> None:
        pid = dead_pid()
        (t / f".{name}.{pid}.x1y2.tmp").mkdir()
        (t / f".{name}.{pid}.x1y2.tmp" / "half.bin").write_bytes(b"half")
        (t / f".{name}.lock").write_text(str(pid))

    return setup


def run_dir(**record) -> Setup:
    """``{t}/o`` is a pipeline run of ml-100k on the tiny backbone, quick preset (its run.json)."""

    def setup(t: Path, ckpt: Path) -> None:
        (t / "o").mkdir()
        run = {
            "kind": "pipeline",
            "dataset": "ml-100k",
            "backbone": "tiny",
            "preset": "quick",
            "seed": 0,
        }
        (t / "o" / "run.json").write_text(json.dumps({**run, **record}))

    return setup


def tensors(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Rewrite the checkpoint's weights file after ``change(state)`` (name -> tensor)."""

    def mutate(c: Path) -> None:
        from safetensors.torch import load_file, save_file

        state = load_file(c / "model.safetensors")
        change(state)
        save_file(state, c / "model.safetensors", metadata={"format": "pt"})

    return mutate


def drop_mlp(state: dict) -> None:
    del state["model.layers.0.mlp.down_proj.weight"]


def nan_mlp(state: dict) -> None:
    state["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")


def on_dataset(folder: str) -> Callable[[Path], None]:
    """The checkpoint copy's metadata names ``{t}/folder`` as its dataset."""

    def mutate(c: Path) -> None:
        edit_meta(dataset={"name": str(c.parent / folder), "max_history": 5})(c)

    return mutate


def raw_ml(when: str = "100", movie_offset: int = 0) -> Setup:
    """MovieLens ``ratings.dat`` / ``movies.dat`` in ``{t}/raw``: 3 users x 3 movies (the first
    rating's time is ``when``); the movies file lists ids shifted by ``movie_offset``."""

    def setup(t: Path, ckpt: Path) -> None:
        (t / "raw").mkdir()
        rows = [
            f"{u}::{10 * i}::4::{when if (u, i) == (1, 1) else 100 * u + i}"
            for u in (1, 2, 3)
            for i in (1, 2, 3)
        ]
        (t / "raw" / "ratings.dat").write_text("\n".join(rows) + "\n")
        movies = [f"{10 * i + movie_offset}::Film {i} (1999)::Drama" for i in (1, 2, 3)]
        (t / "raw" / "movies.dat").write_text("\n".join(movies) + "\n")

    return setup


def cached_empty(out: str = "r.jsonl") -> Setup:
    """A rationale cache at ``{t}/c.jsonl`` whose every answer is empty (as an older version or a
    hand edit may have left it): the answers of a real run against a scripted server, emptied."""

    def setup(t: Path, ckpt: Path) -> None:
        argv = [
            "--ckpt",
            str(ckpt),
            "--source",
            "openai",
            "--n",
            "2",
            "--out",
            str(t / "seed.jsonl"),
            "--cache",
            str(t / "c.jsonl"),
            "--model",
            "m",
        ]
        with ScriptedServer() as srv:
            assert cli.run(rationales.main, [*argv, "--base-url", srv.url]) == 0
        (t / "seed.jsonl").unlink()
        rows = [json.loads(line) for line in (t / "c.jsonl").read_text().splitlines()]
        (t / "c.jsonl").write_text("".join(json.dumps({**r, "response": ""}) + "\n" for r in rows))

    return setup


def mode_is(name: str, mode: int, kind: str) -> Callable[[Path], None]:
    """``{t}/name`` still has ``mode`` and now holds an output of ``kind``."""

    def then(t: Path) -> None:
        assert stat.S_IMODE((t / name).stat().st_mode) == mode
        assert files.written_by(t / name) == kind

    return then


def nothing_beside(name: str) -> Callable[[Path], None]:
    """No temp folder or lock file is left beside ``{t}/name``; the output is there."""

    def then(t: Path) -> None:
        assert not [p for p in os.listdir(t) if p.startswith(f".{name}.")] and (t / name).is_dir()

    return then


def report_in(runs: str) -> Callable[[Path], None]:
    def then(t: Path) -> None:
        assert files.written_by(t / runs / "report") == "python -m analysis.make_report"
        assert (t / runs / "report" / "REPORT.md").is_file()

    return then


DEEP = b"[" * 100_000 + b"]" * 100_000  # JSON nested past Python's recursion limit


def probe(name: str, args: str = "") -> str:
    """``probes.NAME`` on the shared checkpoint into ``{t}/o``, then ``args``."""
    return f"probes.{name} {{ckpt}} --out {{t}}/o {args}".rstrip()


def SID3(i: int) -> list[str]:  # noqa: N802 -- a constant-like row builder
    return [f"<a_{i % 2}>", f"<b_{i}>", f"<c_{i % 3}>"]


TRAIN = (
    "pauserec train --stage sft --from {ckpt} --out {t}/o --n-train 8 --max-steps 1 --device cpu"
)
EVAL = "pauserec evaluate {ckpt} --out {t}/o --n-users 2 --latency-samples 0 --device cpu"
RATS = "pauserec rationales --ckpt {ckpt} --source template --n 4 --out {t}/r.jsonl"
SIDB = "pauserec sid build --dataset {t}/mini --sid-method rq-kmeans-balanced"
INIT = "pauserec init-ckpt --backbone tiny --dataset {t}/mini --sid-method rq-kmeans-balanced"
REPORT = "analysis.make_report {t}/runs --out {t}/o"
EVC = "pauserec evaluate {c} --out {t}/o"  # on a broken copy of the checkpoint
SIDX = SIDB + " --sid-source {t}/idx.json"
RT = "pauserec rationale-train {ckpt} --out {t}/o"
NOFOLDER = "cannot create the folder"
NOTREG = "not a regular file"
PREP = "pauserec data prepare --format movielens --raw {t}/raw --category ml-latest-small"
AMZ = "--dataset office --data-root {t}/amz"  # a dataset by name, resolved under a data root
SIDA = f"pauserec sid build {AMZ}"
EXPORTA = f"pauserec data export {AMZ}"
BASEA = f"pauserec baseline --model popularity {AMZ}"
STATS = "pauserec data stats --dataset {t}/mini"
EXPORT = "pauserec data export --dataset {t}/mini"
PIPE = "pauserec pipeline --backbone tiny --out {t}/o"
EXP = "pauserec experiment --backbone tiny --out {t}/o"
DEMO = "pauserec demo --backbone tiny --out {t}/o"
PAUSE = "pauserec train --stage pause-sft --from {ckpt} --out {t}/o --device cpu"
SIDS = {str(i): SID3(i) for i in range(6)}  # a valid index of the 6 items of ``mini``

CASES = [
    # -- the output policy: an existing --out is refused, never moved aside or deleted -------------
    Case(
        "init-ckpt out is a non-empty dir", INIT + " --out {t}/o", (mini(), folder("o")), "exists"
    ),
    Case("init-ckpt out is a file", INIT + " --out {t}/o", (mini(), file("o")), "exists"),
    Case("train out is a non-empty dir", TRAIN, (folder("o"),), "exists"),
    Case("train out is a file", TRAIN, (file("o"),), "exists"),
    Case(
        "train out is its input",
        TRAIN.replace("{ckpt}", "{c}").replace("{t}/o", "{c}") + " --overwrite",
        (ckpt_copy(),),
        "overlaps",
    ),
    Case("train out is being written", TRAIN, (held_lock("o"),), "another process"),
    Case("evaluate out is a non-empty dir", EVAL, (folder("o"),), "exists"),
    Case("evaluate out is a file", EVAL, (file("o"),), "exists"),
    Case(
        "evaluate out is the ckpt",
        "pauserec evaluate {c} --out {c} --overwrite",
        (ckpt_copy(),),
        "overlaps",
        sub=True,
    ),
    Case(
        "evaluate out inside the ckpt",
        "pauserec evaluate {c} --out {c}/ev",
        (ckpt_copy(),),
        "overlaps",
    ),
    Case("sid build out is a file", SIDB + " --out {t}/o", (mini(), file("o")), "exists"),
    Case(
        "sid build out is a non-empty dir", SIDB + " --out {t}/o", (mini(), folder("o")), "exists"
    ),
    Case(
        "baseline out is a file",
        "pauserec baseline --model popularity --dataset {t}/mini --out {t}/o",
        (mini(), file("o")),
        "exists",
    ),
    Case(
        "baseline out is its dataset",
        "pauserec baseline --model popularity --dataset {t}/mini --out {t}/mini --overwrite",
        (mini(),),
        "overlaps",
    ),
    Case("rationales out exists", RATS, (file("r.jsonl"),), "exists"),
    Case(
        "rationales out is a dir",
        RATS.replace("r.jsonl", "d"),
        (folder("d", keep=False),),
        "directory",
    ),
    Case(
        "rationales cache is a dir",
        RATS + " --cache {t}/d",
        (folder("d", keep=False),),
        "directory",
    ),
    Case(
        "rationales out inside the ckpt",
        RATS.replace("{t}/r.jsonl", "{c}/r.jsonl").replace("{ckpt}", "{c}"),
        (ckpt_copy(),),
        "overlaps",
    ),
    Case(
        "data prepare out is a non-empty dir",
        PREP + " --out {t}/o",
        (folder("raw"), folder("o")),
        "exists",
    ),
    Case(
        "data prepare out is its raw dir",
        PREP + " --out {t}/raw --overwrite",
        (folder("raw"),),
        "overlaps",
    ),
    Case("data export out is a file", EXPORT + " --out {t}/o", (mini(), file("o")), "exists"),
    Case(
        "data export out is its dataset",
        EXPORT + " --out {t}/mini --overwrite",
        (mini(),),
        "overlaps",
    ),
    Case(
        "sid build out is its dataset", SIDB + " --out {t}/mini --overwrite", (mini(),), "overlaps"
    ),
    Case(
        "alignment out is a non-empty dir", probe("alignment"), (folder("o"),), "exists", sub=True
    ),
    Case("attention out is a file", probe("attention"), (file("o"),), "exists"),
    Case(
        "verbalization out is the ckpt",
        "probes.verbalization {c} --out {c} --overwrite",
        (ckpt_copy(),),
        "overlaps",
    ),
    Case("rationale probe out is a non-empty dir", probe("rationale"), (folder("o"),), "exists"),
    Case("rationale-train out is a non-empty dir", RT, (folder("o"),), "exists"),
    Case("make_report out is a file", REPORT, (folder("runs", keep=False), file("o")), "exists"),
    Case(
        "make_report out is the runs dir",
        "analysis.make_report {t}/runs --out {t}/runs --overwrite",
        (ckpt_copy(name="runs/c"),),
        "overlaps",
    ),
    Case(
        "make_report out holds the runs dir",
        "analysis.make_report {t}/runs/r --out {t}/runs --overwrite",
        (ckpt_copy(name="runs/r/c"),),
        "overlaps",
    ),
    Case("pipeline out is not a run", PIPE, (folder("o"),), "not a workbench run"),
    Case("pipeline out is a file", PIPE, (file("o"),), "not a"),
    Case("experiment out is not a run", EXP, (folder("o"),), "not a workbench run"),
    Case("demo out is not a run", DEMO, (folder("o"),), "not a workbench run"),
    # -- paths that cannot be written --------------------------------------------------------------
    Case("evaluate out under a file", EVAL.replace("{t}/o", "{t}/f/o"), (file("f"),), NOFOLDER),
    Case("init-ckpt out under a file", INIT + " --out {t}/f/o", (mini(), file("f")), NOFOLDER),
    Case("train out under a file", TRAIN.replace("{t}/o", "{t}/f/o"), (file("f"),), NOFOLDER),
    Case("sid build out under a file", SIDB + " --out {t}/f/o", (mini(), file("f")), NOFOLDER),
    Case(
        "baseline out under a file",
        "pauserec baseline --dataset {t}/mini --out {t}/f/o",
        (mini(), file("f")),
        NOFOLDER,
    ),
    Case(
        "rationales out under a file",
        RATS.replace("{t}/r.jsonl", "{t}/f/r.jsonl"),
        (file("f"),),
        NOFOLDER,
    ),
    Case("data export out under a file", EXPORT + " --out {t}/f/o", (mini(), file("f")), NOFOLDER),
    Case(
        "alignment out under a file",
        "probes.alignment {ckpt} --out {t}/f/o",
        (file("f"),),
        NOFOLDER,
    ),
    Case(
        "make_report out under a file",
        REPORT.replace("{t}/o", "{t}/f/o"),
        (folder("runs"), file("f")),
        NOFOLDER,
    ),
    Case(
        "evaluate out in a read-only dir",
        EVAL.replace("{t}/o", "{t}/ro/o"),
        (folder("ro", False), chmod("ro", 0o555)),
        "not writable",
        needs_perms=True,
    ),
    Case(
        "evaluate ckpt unreadable",
        EVC,
        (ckpt_copy(), chmod("c/pauserec.json", 0)),
        "pauserec.json",
        needs_perms=True,
    ),
    # -- broken checkpoints ------------------------------------------------------------------------
    Case(
        "weights truncated", EVC, (ckpt_copy(truncate("model.safetensors")),), "model.safetensors"
    ),
    Case(
        "weights empty", EVC, (ckpt_copy(overwrite("model.safetensors", b"")),), "model.safetensors"
    ),
    Case("meta is a list", EVC, (ckpt_copy(overwrite("pauserec.json", "[1]")),), "JSON object"),
    Case("meta dataset is a string", EVC, (ckpt_copy(edit_meta(dataset="x")),), "dataset"),
    Case(
        "meta dataset name is a number",
        EVC,
        (ckpt_copy(edit_meta(dataset={"name": 5})),),
        "dataset",
    ),
    Case("meta unknown format", EVC, (ckpt_copy(edit_meta(format_version=99)),), "format version"),
    Case("meta not JSON", EVC, (ckpt_copy(truncate("pauserec.json")),), "pauserec.json"),
    Case(
        "items.jsonl not UTF-8",
        EVC,
        (ckpt_copy(prefix("items.jsonl", b"\xff\xfe")),),
        "items.jsonl",
    ),
    Case("items.jsonl truncated", EVC, (ckpt_copy(truncate("items.jsonl", 0.3)),), "items.jsonl"),
    Case("tokenizer corrupt", EVC, (ckpt_copy(overwrite("tokenizer.json", "{")),), "tokenizer"),
    Case("config.json corrupt", EVC, (ckpt_copy(overwrite("config.json", "{")),), "config"),
    Case("ckpt missing", "pauserec evaluate {t}/missing --out {t}/o", (), "missing"),
    Case("ckpt is a file", "pauserec evaluate {t}/f --out {t}/o", (file("f"),), "not a directory"),
    Case(
        "probe on truncated weights",
        "probes.attention {c} --out {t}/o",
        (ckpt_copy(truncate("model.safetensors")),),
        "model.safetensors",
    ),
    Case(
        "rationales on non-UTF-8 catalog",
        "pauserec rationales --ckpt {c} --source template --out {t}/r.jsonl",
        (ckpt_copy(prefix("items.jsonl", b"\xff")),),
        "items.jsonl",
    ),
    Case(
        "train from a list meta",
        TRAIN.replace("{ckpt}", "{c}"),
        (ckpt_copy(overwrite("pauserec.json", "[]")),),
        "JSON object",
    ),
    Case(
        "resume from a truncated state",
        TRAIN + " --resume",
        (state(b"PK\x03\x04 truncated"),),
        "o.partial",
    ),
    Case("resume from a state that is not one", TRAIN + " --resume", (state(),), "o.partial"),
    # -- broken SID indexes ------------------------------------------------------------------------
    Case("index entries are ints", SIDX, (mini(), index(lambda i: [i, 1])), "idx.json"),
    Case(
        "index has 26 levels",
        SIDX,
        (mini(), index(lambda i: [f"<{c}_{i}>" for c in "abcdefghijklmnopqrstuvwxyz"])),
        "levels",
    ),
    Case(
        "index junk around tokens",
        SIDX,
        (mini(), index(lambda i: ["x<a_1>y", f"<b_{i}>"])),
        "idx.json",
    ),
    Case(
        "index code too large",
        SIDX,
        (mini(), index(lambda i: ["<a_10000000>", f"<b_{i}>"])),
        "10000000",
    ),
    Case("index is a list", SIDX, (mini(), index([1, 2])), "idx.json"),
    Case("index lacks an item", SIDX, (mini(), index({"0": SID3(0)})), "no entry"),
    Case("index not JSON", SIDX, (mini(), file("idx.json", b'{"0": [')), "idx.json"),
    Case("index not UTF-8", SIDX, (mini(), file("idx.json", b"\xff{}")), "idx.json"),
    Case("index levels differ", SIDX, (mini(), index(lambda i: SID3(i)[: 2 + i % 2])), "lengths"),
    Case(
        "compare index broken",
        SIDB + " --compare {t}/idx.json",
        (mini(), index(lambda i: "<a_1>x")),
        "idx.json",
    ),
    Case(
        "init-ckpt from a bad index",
        INIT + " --sid-source {t}/idx.json --out {t}/o",
        (mini(), index(lambda i: [i])),
        "idx.json",
    ),
    # -- broken datasets ---------------------------------------------------------------------------
    Case("items not UTF-8", STATS, (mini(item_bytes=b'{"0": "\xff"}'),), "mini.item.json"),
    Case("interactions truncated", STATS, (mini(inter_bytes=b'{"u1": [0, 1'),), "mini.inter.json"),
    Case(
        "categories are an object",
        STATS,
        (mini(items={str(i): {"title": "t", "categories": {"a": 1}} for i in range(6)}),),
        "categories",
    ),
    Case(
        "title is an object",
        STATS,
        (mini(items={str(i): {"title": {"x": 1}} for i in range(6)}),),
        "title",
    ),
    Case(
        "unknown item in a sequence",
        STATS,
        (mini(items={str(i): {"title": "t"} for i in range(5)}),),
        "unknown item",
    ),
    Case("dataset missing", "pauserec data stats --dataset {t}/nowhere", (), "unknown dataset"),
    # -- numbers and lists out of range ------------------------------------------------------------
    Case("lr nan", TRAIN + " --lr nan", (), "finite"),
    Case("lr inf", TRAIN + " --lr inf", (), "finite"),
    refused("n_train negative", TRAIN, "--n-train -5"),
    refused("save_every negative", TRAIN, "--save-every -1"),
    refused("warmup_ratio negative", TRAIN, "--warmup-ratio -0.1"),
    refused("grad_clip negative", TRAIN, "--grad-clip -1"),
    refused("n_pauses not a number", TRAIN, "--n-pauses x"),
    with_preset("preset section misspelled", TRAIN, "[trian.sft]\nlr = 0.1\n", "trian.sft"),
    with_preset("preset lr nan", TRAIN, "[train.sft]\nlr = nan\n", "finite"),
    with_preset("preset unknown key", TRAIN, "[train.sft]\nlearning_rate = 1\n", "learning_rate"),
    with_preset("preset not TOML", TRAIN, "[train.sft\n", "p.toml"),
    with_preset("preset not UTF-8", TRAIN, b"\xff = 1", "p.toml"),
    Case("train unknown stage", TRAIN.replace("sft", "sfx"), (), "--stage"),
    refused("train resume and overwrite", TRAIN, "--resume --overwrite"),
    refused("rationales n negative", RATS, "--n -3"),
    refused("rationales max_retries negative", RATS, "--max-retries -1"),
    refused("rationales timeout zero", RATS, "--timeout 0"),
    refused("rationales concurrency zero", RATS, "--concurrency 0"),
    refused("sid iters zero", SIDB, "--sid-iters 0", mini()),
    refused("sid levels zero", SIDB, "--sid-levels 0", mini()),
    refused("sid method unknown", SIDB, "--sid-method bogus", mini()),
    refused("codebook size one", INIT, "--sid-codebook-size 1 --out {t}/o", mini()),
    refused("evaluate beams below top-k", EVAL, "--beams 5"),
    refused("evaluate batch size zero", EVAL, "--batch-size 0"),
    refused("evaluate split unknown", EVAL, "--split dev"),
    refused("evaluate n_users zero", EVAL, "--n-users 0"),
    refused("evaluate unknown flag", EVAL, "--bogus 1"),
    Case("evaluate k negative", EVAL + " --k -1", (), "--n-pauses"),
    Case("baseline model unknown", "pauserec baseline --model bogus --out {t}/o", (), "--model"),
    Case("baseline n_users zero", "pauserec baseline --n-users 0 --out {t}/o", (), "--n-users"),
    Case(
        "baseline sasrec seconds negative",
        "pauserec baseline --model sasrec --sasrec-seconds -1 --out {t}/o",
        (),
        "--sasrec-seconds",
    ),
    Case(
        "make_report metric unknown",
        REPORT + " --metric bogus",
        (folder("runs"),),
        "--metric",
        sub=True,
    ),
    refused("make_report n_resamples zero", REPORT, "--n-resamples 0", folder("runs")),
    Case("make_report runs missing", REPORT, (), "runs"),
    Case("make_report runs empty", REPORT, (folder("runs", keep=False),), "no results"),
    Case("data stats max_history zero", "pauserec data stats --max-history 0", (), "--max-history"),
    Case(
        "data prepare format unknown",
        PREP.replace("movielens", "bogus") + " --out {t}/o",
        (folder("raw"),),
        "--format",
    ),
    refused("data prepare kcore zero", PREP, "--kcore 0 --out {t}/o", folder("raw")),
    Case("data prepare raw missing", PREP + " --out {t}/o", (), "raw"),
    Case(
        "data export max_history zero",
        "pauserec data export --max-history 0 --out {t}/o",
        (),
        "--max-history",
    ),
    Case(
        "data export format unknown",
        "pauserec data export --format bogus --out {t}/o",
        (),
        "--format",
    ),
    Case(
        "alignment n_neighbours zero", probe("alignment", "--n-neighbours 0"), (), "--n-neighbours"
    ),
    Case("alignment deprecated --k zero", probe("alignment", "--k 0"), (), "--n-neighbours"),
    Case("alignment n_perm negative", probe("alignment", "--n-perm -1"), (), "--n-perm"),
    Case("attention n_users zero", probe("attention", "--n-users 0"), (), "--n-users"),
    Case("attention split unknown", probe("attention", "--split dev"), (), "--split"),
    Case("verbalization query unknown", probe("verbalization", "--queries bogus"), (), "bogus"),
    Case("verbalization n_items zero", probe("verbalization", "--n-items 0"), (), "--n-items"),
    Case(
        "rationale probe perturbation unknown",
        probe("rationale", "--perturbations bogus"),
        (),
        "bogus",
    ),
    Case("rationale probe top_k zero", probe("rationale", "--top-k 0"), (), "--top-k"),
    Case("rationale-train condition unknown", RT + " --conditions bogus", (), "bogus"),
    refused("rationale-train n_users zero", RT, "--n-users 0"),
    Case(
        "pipeline stage unknown", "pauserec pipeline --out {t}/o --stages cpt,bogus", (), "--stages"
    ),
    Case("experiment seeds zero", "pauserec experiment --out {t}/o --seeds 0", (), "--seeds"),
    Case("experiment ks zero", "pauserec experiment --out {t}/o --ks 0,3", (), "--pause-counts"),
    with_preset(
        "demo preset misspelled", "pauserec demo --out {t}/o", "[trian.sft]\n", "trian.sft"
    ),
    refused("rationales seed negative", RATS, "--seed -1"),
    refused("data prepare min_rating negative", PREP, "--min-rating -1 --out {t}/o", folder("raw")),
    refused("init-ckpt init unknown", INIT, "--init bogus --out {t}/o", mini()),
    Case("evaluate device unknown", EVAL.replace("--device cpu", "--device bogus"), (), "device"),
    Case("train device unknown", TRAIN.replace("--device cpu", "--device bogus"), (), "device"),
    Case("attention variant unknown", probe("attention", "--variant bogus"), (), "--variant"),
    refused("rationale-train base source unknown", RT, "--base-source x"),
    Case("compare index missing", SIDB + " --compare {t}/nowhere.json", (mini(),), "nowhere.json"),
    Case("unknown command", "pauserec bogus", (), "unknown command"),
    # -- issue 23: an output never overlaps an input, datasets and data roots given by name included
    Case(
        "sid build out is a named dataset's folder",
        SIDA + " --out {t}/amz/Office --overwrite",
        (amazon(),),
        "overlaps",
    ),
    Case(
        "sid build out is the data root",
        SIDA + " --out {t}/amz --overwrite",
        (amazon(),),
        "overlaps",
    ),
    Case(
        "sid build out inside a named dataset",
        SIDA + " --out {t}/amz/Office/sids",
        (amazon(),),
        "overlaps",
    ),
    Case(
        "sid build out inside the data root", SIDA + " --out {t}/amz/sids", (amazon(),), "overlaps"
    ),
    Case(
        "sid build out is a dataset found via $PAUSEREC_DATA",
        "pauserec sid build --dataset office --out {t}/amz/Office --overwrite",
        (amazon(),),
        "overlaps",
        env=(("PAUSEREC_DATA", "{t}/amz"),),
    ),
    Case(
        "data export out is a named dataset's folder",
        EXPORTA + " --out {t}/amz/Office --overwrite",
        (amazon(),),
        "overlaps",
    ),
    Case(
        "data export out inside a named dataset",
        EXPORTA + " --out {t}/amz/Office/recbole",
        (amazon(),),
        "overlaps",
    ),
    Case(
        "baseline out is a named dataset's folder",
        BASEA + " --out {t}/amz/Office --overwrite",
        (amazon(),),
        "overlaps",
    ),
    Case(
        "baseline out inside a named dataset",
        BASEA + " --out {t}/amz/Office/bl",
        (amazon(),),
        "overlaps",
    ),
    Case(
        "gpu prepare out is a named dataset's folder",
        f"pauserec gpu prepare --backbone tiny --no-wheels {AMZ} --out {{t}}/amz/Office "
        "--overwrite",
        (amazon(),),
        "overlaps",
    ),
    Case(
        "init-ckpt out is the data root",
        INIT.replace("--dataset {t}/mini", AMZ) + " --out {t}/amz --overwrite",
        (amazon(),),
        "overlaps",
    ),
    Case(
        "pipeline out inside the data root",
        f"{PIPE.replace('{t}/o', '{t}/amz/run')} {AMZ}",
        (amazon(),),
        "overlaps",
    ),
    Case(
        "evaluate out inside its checkpoint's dataset",
        "pauserec evaluate {c} --out {t}/mini/ev",
        (mini(), ckpt_copy(on_dataset("mini"))),
        "overlaps",
    ),
    Case(
        "sid build out is its SID index",
        SIDX + " --out {t}/idx.json --overwrite",
        (mini(), index(SID3)),
        "overlaps",
    ),
    # -- --overwrite replaces only an earlier output of the same command, never anything else ------
    Case(
        "evaluate overwrite of a folder it did not write",
        EVAL + " --overwrite",
        (folder("o"),),
        "not written by",
    ),
    Case(
        "evaluate overwrite of a checkpoint",
        EVAL + " --overwrite",
        (ckpt_copy(name="o"),),
        "by pauserec init-ckpt",
    ),
    Case(
        "sid build overwrite of a file",
        SIDB + " --out {t}/o --overwrite",
        (mini(), file("o")),
        "is a file",
    ),
    Case("evaluate out is a pipe", EVAL + " --overwrite", (special("o", "fifo"),), NOTREG),
    Case(
        "evaluate out is a character device",
        EVAL + " --overwrite",
        (special("o", "chardev"),),
        NOTREG,
        needs_root=True,
    ),
    Case(
        "evaluate out links to /dev/null",
        EVAL + " --overwrite",
        (special("o", "null-link"),),
        NOTREG,
    ),
    Case("rationales out is a pipe", RATS + " --overwrite", (special("r.jsonl", "fifo"),), NOTREG),
    refused("evaluate abbreviated --over", EVAL, "--over", folder("o")),
    Case("sid build abbreviated --overw", SIDB + " --out {t}/mini --overw", (mini(),), "--overw"),
    Case("train deletes a user's OUT.partial", TRAIN, (folder("o.partial"),), "o.partial"),
    Case(
        "train resumes from a user's OUT.partial",
        TRAIN + " --resume",
        (folder("o.partial"),),
        "o.partial",
    ),
    # -- run directories: a run is resumed with its own settings, never adopted or relabelled ------
    Case(
        "pipeline out holds a checkpoint", PIPE, (ckpt_copy(name="o/init"),), "not a workbench run"
    ),
    Case("pipeline out is a checkpoint", PIPE, (ckpt_copy(name="o"),), "not a workbench run"),
    Case(
        "experiment out holds a checkpoint", EXP, (ckpt_copy(name="o/init"),), "not a workbench run"
    ),
    Case(
        "pipeline rerun on another dataset",
        PIPE + " --dataset {t}/mini",
        (mini(), run_dir()),
        "dataset ml-100k",
    ),
    Case(
        "pipeline rerun on another backbone",
        PIPE.replace("tiny", "smollm2-135m"),
        (run_dir(),),
        "backbone tiny",
    ),
    Case(
        "pipeline into an experiment's run", PIPE, (run_dir(kind="experiment"),), "experiment run"
    ),
    refused("pipeline init missing", PIPE, "--init {t}/nowhere"),
    # -- the whole run is validated before any work ------------------------------------------------
    with_preset(
        "pipeline later stage's key has a wrong type",
        PIPE,
        '[train.cot-sft]\nlr = "5e-5"\n',
        "train.cot-sft",
    ),
    with_preset(
        "pipeline key misspelled in a stage not run",
        PIPE + " --stages cpt",
        "[train.cot-sft]\nlrr = 1\n",
        "lrr",
    ),
    with_preset("experiment probe key misspelled", EXP, "[probes.attention]\nbeamz = 3\n", "beamz"),
    Case(
        "experiment main rationale never trained",
        EXP + " --rationales template --main-rationale local",
        (),
        "--main-rationale",
    ),
    Case(
        "demo backbone unknown",
        "pauserec demo --backbone bogus-model --out {t}/o",
        (),
        "bogus-model",
    ),
    Case("demo device unknown", "pauserec demo --device tpu --out {t}/o", (), "tpu"),
    refused("train epochs huge", TRAIN, "--epochs 999999999"),
    Case(
        "train max_steps huge",
        TRAIN.replace("--max-steps 1", "--max-steps 99999999999"),
        (),
        "--max-steps",
    ),
    refused("train batch size huge", TRAIN, "--batch-size 99999999999"),
    refused("evaluate beams huge", EVAL, "--beams 99999999"),
    refused("evaluate pauses huge", EVAL, "--n-pauses 99999999"),
    refused("experiment seeds huge", EXP, "--seeds 100000"),
    with_preset("preset epochs a float", TRAIN, "[train.sft]\nepochs = 1e20\n", "epochs"),
    with_preset(
        "preset epochs huge", TRAIN, "[train.sft]\nepochs = 100000000000000000000\n", "--epochs"
    ),
    Case(
        "train pause-from is not pause-pretrain",
        PAUSE + " --pause-from {ckpt}",
        (),
        "pause-pretrain",
    ),
    Case("train pause-from missing", PAUSE + " --pause-from {t}/nowhere", (), "nowhere"),
    # -- loading refuses incomplete inputs ---------------------------------------------------------
    Case("weights miss a tensor", EVC, (ckpt_copy(tensors(drop_mlp)),), "missing"),
    Case("weights hold NaN", EVC, (ckpt_copy(tensors(nan_mlp)),), "NaN"),
    Case("meta n_pauses negative", EVC, (ckpt_copy(edit_meta(n_pauses=-3)),), "n_pauses"),
    Case("meta stage unknown", EVC, (ckpt_copy(edit_meta(stage="bogus")),), "stage"),
    Case(
        "meta nested too deeply",
        EVC,
        (ckpt_copy(overwrite("pauserec.json", DEEP)),),
        "nested too deeply",
    ),
    Case("index dedup is NaN", SIDX, (mini(), index({"dedup": float("nan"), "sids": SIDS})), "NaN"),
    Case(
        "index dedup is not true or false",
        SIDX,
        (mini(), index({"dedup": "yes", "sids": SIDS})),
        "dedup",
    ),
    Case("index holds NaN", SIDX, (mini(), index({**SIDS, "x": float("nan")})), "NaN"),
    Case("index nested too deeply", SIDX, (mini(), file("idx.json", DEEP)), "nested too deeply"),
    Case("dataset nested too deeply", STATS, (mini(item_bytes=DEEP),), "nested too deeply"),
    refused("sid fields empty", SIDB, "--sid-fields ''", mini()),
    Case(
        "data prepare NaN time under --strict",
        PREP + " --strict --kcore 1 --out {t}/o",
        (raw_ml(when="nan"),),
        "finite",
    ),
    Case(
        "data prepare reviews match no item",
        PREP + " --kcore 1 --out {t}/o",
        (raw_ml(movie_offset=100),),
        "no record",
    ),
    Case(
        "rationales cache holds empty answers",
        RATS.replace("template --n 4", "openai --n 2") + " --cache {t}/c.jsonl --model m "
        f"--max-retries 0 --timeout 2 --base-url http://127.0.0.1:{free_port()}/v1",
        (cached_empty(),),
        "failed",
    ),
    Case(
        "make_report metrics nested too deeply",
        REPORT,
        (file("runs/e/metrics.json", DEEP),),
        "no results",
    ),
    # -- valid input that used to lose or mangle something -----------------------------------------
    Case(
        "evaluate into an empty dir keeps the dir",
        EVAL,
        (folder("o", keep=False), chmod("o", 0o750)),
        ok=True,
        writes=("o*",),
        then=mode_is("o", 0o750, "pauserec evaluate"),
    ),
    Case(
        "a killed run's temp folder and lock are cleaned",
        EXPORT + " --out {t}/o",
        (mini(), stale("o")),
        ok=True,
        writes=("o*", ".o.*"),
        then=nothing_beside("o"),
    ),
    Case(
        "make_report without --out, on a run without probes",
        "analysis.make_report {t}/runs --n-resamples 100",
        (ckpt_copy(name="runs/c"),),
        ok=True,
        writes=("runs/report*",),
        then=report_in("runs"),
        sub=True,
    ),
]


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file (content hash), folder, link (its target) and special file (its type) under
    ``roots``."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            out[dirpath] = "dir"
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                mode = p.lstat().st_mode
                if stat.S_ISLNK(mode):
                    out[str(p)] = f"link to {os.readlink(p)}"
                elif not stat.S_ISREG(mode):
                    out[str(p)] = "dir" if stat.S_ISDIR(mode) else f"special {stat.S_IFMT(mode):o}"
                else:
                    if not os.access(p, os.R_OK):  # a row's unreadable input: read it all the same
                        p.chmod(mode | 0o400)
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
                    p.chmod(mode)
    return out


@dataclass
class Prepared:
    tmp: Path
    module: str
    argv: list[str]
    before: dict[str, str]


def prepare(case: Case, tmp: Path, ckpt: Path) -> Prepared:
    """Build what the row finds on disk under ``tmp/t``; snapshot ``tmp`` and the shared
    checkpoint."""
    t = tmp / "t"
    t.mkdir()
    for setup in case.setup:
        setup(t, ckpt)
    module, *argv = shlex.split(case.cmd.format(ckpt=ckpt, c=t / "c", t=t))
    return Prepared(tmp, module, argv, snapshot(tmp, ckpt))


def restore(tmp: Path) -> None:
    while HELD:
        HELD.pop().close()
    for p in (tmp / "t" / "ro", tmp / "t" / "c" / "pauserec.json"):
        if p.exists():
            p.chmod(0o755)


def check(case: Case, prep: Prepared, ckpt: Path, code: int, err: str) -> None:
    assert "Traceback" not in err, err
    after = snapshot(prep.tmp, ckpt)
    changed = {k for k, v in after.items() if prep.before.get(k) != v}
    changed |= set(prep.before) - set(after)
    if case.ok:
        assert code == 0, err
        t = prep.tmp / "t"
        rel = [os.path.relpath(k, t) for k in changed]
        assert all(any(fnmatch.fnmatch(r, w) for w in case.writes) for r in rel), rel
        if case.then:
            case.then(t)
        return
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.expect in lines[0], lines[0]
    assert not changed, changed


@pytest.fixture(scope="module")
def launched(tiny_ckpt_path, tmp_path_factory) -> dict[str, tuple[Prepared, subprocess.Popen]]:
    """The subprocess rows, started together at the first row (imports take seconds each): id ->
    process."""
    out = {}
    for case in (c for c in CASES if c.sub):
        prep = prepare(case, tmp_path_factory.mktemp("sub"), tiny_ckpt_path)
        env = {**os.environ, "PYTHONPATH": str(ROOT), **dict(environment(case, prep.tmp / "t"))}
        proc = subprocess.Popen(
            [sys.executable, "-m", prep.module, *prep.argv],
            cwd=prep.tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        out[case.id] = (prep, proc)
    yield out
    for _, proc in out.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module", autouse=True)
def no_progress_bars():
    """What the CLI's setup_logging does: transformers' load bars would add lines to stderr."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


# the subprocess rows last: they start first and run meanwhile
ORDER = sorted(CASES, key=lambda c: c.sub)


@pytest.mark.parametrize("case", ORDER, ids=[c.id for c in ORDER])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(
    case, launched, tiny_ckpt_path, tmp_path, capsys, monkeypatch
):
    if case.needs_perms and IS_ROOT:
        pytest.skip("root ignores file permissions")
    if case.needs_root and not IS_ROOT:
        pytest.skip("only root may make a device node")
    if case.sub:
        prep, proc = launched[case.id]
        _, err = proc.communicate(timeout=180)
        check(case, prep, tiny_ckpt_path, proc.returncode, err)
        return
    prep = prepare(case, tmp_path, tiny_ckpt_path)
    for key, value in environment(case, tmp_path / "t"):
        monkeypatch.setenv(key, value)
    # a relative path written by mistake lands where the snapshot sees it
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.run(entry(prep.module), prep.argv)
    finally:
        restore(tmp_path)
    check(case, prep, tiny_ckpt_path, code, capsys.readouterr().err)


def environment(case: Case, t: Path) -> list[tuple[str, str]]:
    return [(key, value.format(t=t)) for key, value in case.env]


def entry(module: str) -> Callable[[list[str] | None], object]:
    name = "pauserec.__main__" if module == "pauserec" else module
    return importlib.import_module(name).main


# ---- valid input that used to be rejected or mangled ---------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"), [("--ks", (1, 3)), ("--ks", (5,)), ("--pause-counts", (1, 3, 5))]
)
def test_experiment_takes_any_list_of_pause_counts(flag, value):
    from driver.experiment import ExperimentArgs

    argv = ["--out", "x", flag, ",".join(map(str, value))]
    assert (
        parse_args(ExperimentArgs, argv, "pauserec experiment", section="experiment").pause_counts
        == value
    )


def test_nested_categories_are_joined_like_prepare_joins_them(lcrec):
    items = {
        str(i): {
            "title": f"t{i}",
            "categories": [["Beauty", "Skin Care"], ["Beauty", "Hair", "Hair"]],
            "description": ["Soft.", "Gentle."],
            "year": 2001,
        }
        for i in range(6)
    }
    ds = data.load_dataset(str(lcrec(MINI_SEQ, items)))
    item = ds.items[0]
    # a path repeats no names of earlier paths
    assert item.categories == "Beauty, Skin Care, Hair, Hair"
    assert (item.description, item.year) == ("Soft. Gentle.", "2001")
    flat = data.load_dataset(
        str(
            lcrec(
                MINI_SEQ,
                {k: {**v, "categories": ["A", "B"]} for k, v in items.items()},
                name="Flat",
            )
        )
    )
    assert flat.items[0].categories == "A, B"


def test_a_step_cap_plans_only_the_epochs_it_reaches():
    """``--epochs 1000 --max-steps 1`` (the bound) plans one epoch, not a thousand."""
    import numpy as np

    from pauserec.training.loop import MAX_EPOCHS, LoopConfig, Steps

    cfg = LoopConfig(epochs=MAX_EPOCHS, max_steps=1, batch_size=2)
    assert len(Steps(np.full(8, 5), cfg).ends) == 1  # 4 steps per epoch: the first epoch covers it
    assert len(Steps(np.full(8, 5), LoopConfig(epochs=3, batch_size=2)).ends) == 3


def test_every_preset_section_has_the_arguments_it_is_checked_against():
    from driver import experiment
    from pauserec import config

    assert set(experiment.SCHEMAS) == set(config.SECTIONS)
    for name in sorted(p.stem for p in config.CONFIG_DIR.glob("*.toml")):
        config.check_preset(name, experiment.SCHEMAS)  # the committed presets are valid


# ---- figures on the shapes real runs produce ---------------------------------------------------

DEMO_ROWS = ROOT / "reports" / "demo" / "results.csv.gz"  # every probe row of a real demo run


@pytest.fixture(scope="module")
def real_rows(tmp_path_factory):
    """(collected runs of one seed, with evaluations and timings; the demo run's probe rows)."""
    import pandas as pd
    from test_analysis import write_runs

    from analysis import collect

    runs = collect.collect(write_runs(tmp_path_factory.mktemp("runs") / "exp", seeds=(0,)))
    probes = pd.read_csv(DEMO_ROWS, low_memory=False)
    return runs, probes[probes["probe"].notna()]


def shapes(probes) -> dict:
    """Probe rows as runs leave them: nothing, one probe, one stage (checkpoint), one metric."""
    import pandas as pd

    out = {"no rows": probes.iloc[0:0], "no columns": pd.DataFrame()}
    for probe, rows in probes.groupby("probe"):
        out[f"{probe}, one stage"] = rows[rows["stage"] == rows["stage"].iloc[-1]]
        out[f"{probe}, one metric"] = rows[rows["metric"] == rows["metric"].iloc[-1]]
    return out


SHAPES = [
    "no rows",
    "no columns",
    *(
        f"{p}, {what}"
        for p in ("alignment", "attention", "rationale", "verbalization")
        for what in ("one stage", "one metric")
    ),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_figure_is_drawn_or_says_why_not(real_rows, shape):
    """No figure raises anything but NoData on a shape real runs produce (the report lists it as
    "not run" in one line); the evaluation figures get one condition of one seed, or nothing."""
    import matplotlib.pyplot as plt

    from analysis import figures, make_report, report

    runs, probes = real_rows
    args = make_report.Args(runs=["runs"], n_resamples=100)
    per_user = report.labelled(runs.eval, "test")
    evals = per_user[per_user["cell"] == "sft"] if "one" in shape else per_user.iloc[0:0]
    specs = make_report.eval_specs(runs, evals, args)
    specs += make_report.probe_specs(shapes(probes)[shape], args)
    drawn = []
    for spec in specs:
        try:
            drawn.append(spec.make())
        except figures.NoData:
            pass
    assert all(hasattr(fig, "savefig") for fig in drawn)
    plt.close("all")
