"""Bad input, tried as a hostile but fair user would, through the real CLI of every command.

Each row is one malformed input. It must end with exit code 2 and exactly one line on stderr starting
with ``error:`` (no traceback), and leave every file it found exactly as it was: the test hashes every
file and folder under its tmp dir (and the shared checkpoint) before and after, so an ``--out`` that did
not exist before must not exist after, and no ``.old``/``.partial``/``.tmp``/lock file may be left behind.

Most rows call ``pauserec.cli.run(main, argv)`` in process (the same boundary ``python -m`` goes through);
the rows marked ``sub`` run ``python -m ...`` in a subprocess to prove the entry points.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import write_lcrec
from pauserec import cli, data
from pauserec.config import parse_args

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
Setup = Callable[[Path, Path], None]


@dataclass
class Case:
    """``cmd``: module then arguments; ``{ckpt}`` is the shared checkpoint (never to be written), ``{c}``
    a copy of it in the tmp dir (made by ``ckpt_copy``), ``{t}`` the tmp dir."""

    id: str
    cmd: str
    setup: tuple[Setup, ...] = ()
    expect: str = ""  # a substring of the error line
    sub: bool = False  # through ``python -m`` in a subprocess
    needs_perms: bool = False  # relies on file permissions, which root ignores


# ---- what a row finds on disk --------------------------------------------------------------------------

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


def mini(items: dict | None = None, item_bytes: bytes | None = None, inter_bytes: bytes | None = None) -> Setup:
    """A 6-item LC-Rec dataset at ``{t}/mini`` (optionally with given items or raw file contents)."""
    def setup(t: Path, ckpt: Path) -> None:
        d = write_lcrec(t, "mini", MINI_SEQ, items)
        if item_bytes is not None:
            (d / "mini.item.json").write_bytes(item_bytes)
        if inter_bytes is not None:
            (d / "mini.inter.json").write_bytes(inter_bytes)
    return setup


def index(entries: Callable[[int], object] | object, name: str = "idx.json") -> Setup:
    """A SID index for the 6 items of ``mini``: ``entries(i)`` per item, or the whole file's object."""
    def setup(t: Path, ckpt: Path) -> None:
        obj = {str(i): entries(i) for i in range(6)} if callable(entries) else entries
        (t / name).write_text(json.dumps(obj))
    return setup


def preset(text: str, name: str = "p.toml") -> Setup:
    return file(name, text.encode())


def state(payload: bytes | None = None) -> Setup:
    """``{t}/o.partial/state.pt``: the given bytes, or a valid torch file that is not a training state."""
    def setup(t: Path, ckpt: Path) -> None:
        (t / "o.partial").mkdir()
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


def SID3(i: int) -> list[str]:  # noqa: N802 -- a constant-like row builder
    return [f"<a_{i % 2}>", f"<b_{i}>", f"<c_{i % 3}>"]


TRAIN = "pauserec train --stage sft --from {ckpt} --out {t}/o --n-train 8 --max-steps 1 --device cpu"
EVAL = "pauserec evaluate {ckpt} --out {t}/o --n-users 2 --latency-samples 0 --device cpu"
RATS = "pauserec rationales --ckpt {ckpt} --source template --n 4 --out {t}/r.jsonl"
SIDB = "pauserec sid build --dataset {t}/mini --sid-method rq-kmeans-balanced"
INIT = "pauserec init-ckpt --backbone tiny --dataset {t}/mini --sid-method rq-kmeans-balanced"
REPORT = "analysis.make_report {t}/runs --out {t}/o"
EVC = "pauserec evaluate {c} --out {t}/o"  # on a broken copy of the checkpoint
SIDX = SIDB + " --sid-source {t}/idx.json"
RT = "pauserec rationale-train {ckpt} --out {t}/o"
NOFOLDER = "cannot create the folder"
PREP = "pauserec data prepare --format movielens --raw {t}/raw --category ml-latest-small"

CASES = [
    # -- the output policy: an existing --out is refused, never moved aside or deleted -------------------
    Case("init-ckpt out is a non-empty dir", INIT + " --out {t}/o", (mini(), folder("o")), "exists"),
    Case("init-ckpt out is a file", INIT + " --out {t}/o", (mini(), file("o")), "exists"),
    Case("train out is a non-empty dir", TRAIN, (folder("o"),), "exists"),
    Case("train out is a file", TRAIN, (file("o"),), "exists"),
    Case("train out is its input", TRAIN.replace("{ckpt}", "{c}").replace("{t}/o", "{c}") + " --overwrite",
         (ckpt_copy(),), "overlaps"),
    Case("train out is being written", TRAIN, (held_lock("o"),), "another process"),
    Case("evaluate out is a non-empty dir", EVAL, (folder("o"),), "exists"),
    Case("evaluate out is a file", EVAL, (file("o"),), "exists"),
    Case("evaluate out is the ckpt", "pauserec evaluate {c} --out {c} --overwrite", (ckpt_copy(),), "overlaps",
         sub=True),
    Case("evaluate out inside the ckpt", "pauserec evaluate {c} --out {c}/ev", (ckpt_copy(),), "overlaps"),
    Case("sid build out is a file", SIDB + " --out {t}/o", (mini(), file("o")), "exists"),
    Case("sid build out is a non-empty dir", SIDB + " --out {t}/o", (mini(), folder("o")), "exists"),
    Case("baseline out is a file", "pauserec baseline --model popularity --dataset {t}/mini --out {t}/o",
         (mini(), file("o")), "exists"),
    Case("baseline out is its dataset", "pauserec baseline --model popularity --dataset {t}/mini --out {t}/mini "
         "--overwrite", (mini(),), "overlaps"),
    Case("rationales out exists", RATS, (file("r.jsonl"),), "exists"),
    Case("rationales out is a dir", RATS.replace("r.jsonl", "d"), (folder("d", keep=False),), "directory"),
    Case("rationales cache is a dir", RATS + " --cache {t}/d", (folder("d", keep=False),), "directory"),
    Case("rationales out inside the ckpt", RATS.replace("{t}/r.jsonl", "{c}/r.jsonl").replace("{ckpt}", "{c}"),
         (ckpt_copy(),), "overlaps"),
    Case("data prepare out is a non-empty dir", PREP + " --out {t}/o", (folder("raw"), folder("o")), "exists"),
    Case("data prepare out is its raw dir", PREP + " --out {t}/raw --overwrite", (folder("raw"),), "overlaps"),
    Case("data export out is a file", "pauserec data export --dataset {t}/mini --out {t}/o", (mini(), file("o")),
         "exists"),
    Case("data export out is its dataset", "pauserec data export --dataset {t}/mini --out {t}/mini --overwrite",
         (mini(),), "overlaps"),
    Case("sid build out is its dataset", SIDB + " --out {t}/mini --overwrite", (mini(),), "overlaps"),
    Case("alignment out is a non-empty dir", "probes.alignment {ckpt} --out {t}/o", (folder("o"),), "exists",
         sub=True),
    Case("attention out is a file", "probes.attention {ckpt} --out {t}/o", (file("o"),), "exists"),
    Case("verbalization out is the ckpt", "probes.verbalization {c} --out {c} --overwrite", (ckpt_copy(),),
         "overlaps"),
    Case("rationale probe out is a non-empty dir", "probes.rationale {ckpt} --out {t}/o", (folder("o"),), "exists"),
    Case("rationale-train out is a non-empty dir", RT, (folder("o"),),
         "exists"),
    Case("make_report out is a file", REPORT, (folder("runs", keep=False), file("o")), "exists"),
    Case("make_report out is the runs dir", "analysis.make_report {t}/runs --out {t}/runs --overwrite",
         (ckpt_copy(name="runs/c"),), "overlaps"),
    Case("make_report out holds the runs dir", "analysis.make_report {t}/runs/r --out {t}/runs --overwrite",
         (ckpt_copy(name="runs/r/c"),), "overlaps"),
    Case("pipeline out is not a run", "pauserec pipeline --backbone tiny --out {t}/o", (folder("o"),),
         "not a workbench run"),
    Case("pipeline out is a file", "pauserec pipeline --backbone tiny --out {t}/o", (file("o"),), "not a"),
    Case("experiment out is not a run", "pauserec experiment --backbone tiny --out {t}/o", (folder("o"),),
         "not a workbench run"),
    Case("demo out is not a run", "pauserec demo --backbone tiny --out {t}/o", (folder("o"),),
         "not a workbench run"),
    # -- paths that cannot be written ---------------------------------------------------------------------
    Case("evaluate out under a file", EVAL.replace("{t}/o", "{t}/f/o"), (file("f"),), NOFOLDER),
    Case("init-ckpt out under a file", INIT + " --out {t}/f/o", (mini(), file("f")), NOFOLDER),
    Case("train out under a file", TRAIN.replace("{t}/o", "{t}/f/o"), (file("f"),), NOFOLDER),
    Case("sid build out under a file", SIDB + " --out {t}/f/o", (mini(), file("f")), NOFOLDER),
    Case("baseline out under a file", "pauserec baseline --dataset {t}/mini --out {t}/f/o", (mini(), file("f")),
         NOFOLDER),
    Case("rationales out under a file", RATS.replace("{t}/r.jsonl", "{t}/f/r.jsonl"), (file("f"),), NOFOLDER),
    Case("data export out under a file", "pauserec data export --dataset {t}/mini --out {t}/f/o",
         (mini(), file("f")), NOFOLDER),
    Case("alignment out under a file", "probes.alignment {ckpt} --out {t}/f/o", (file("f"),), NOFOLDER),
    Case("make_report out under a file", REPORT.replace("{t}/o", "{t}/f/o"), (folder("runs"), file("f")), NOFOLDER),
    Case("evaluate out in a read-only dir", EVAL.replace("{t}/o", "{t}/ro/o"), (folder("ro", False),
         chmod("ro", 0o555)), "not writable", needs_perms=True),
    Case("evaluate ckpt unreadable", EVC, (ckpt_copy(), chmod("c/pauserec.json", 0)),
         "pauserec.json", needs_perms=True),
    # -- broken checkpoints -----------------------------------------------------------------------------
    Case("weights truncated", EVC, (ckpt_copy(truncate("model.safetensors")),),
         "model.safetensors"),
    Case("weights empty", EVC, (ckpt_copy(overwrite("model.safetensors", b"")),),
         "model.safetensors"),
    Case("meta is a list", EVC, (ckpt_copy(overwrite("pauserec.json", "[1]")),),
         "JSON object"),
    Case("meta dataset is a string", EVC, (ckpt_copy(edit_meta(dataset="x")),),
         "dataset"),
    Case("meta dataset name is a number", EVC,
         (ckpt_copy(edit_meta(dataset={"name": 5})),), "dataset"),
    Case("meta unknown format", EVC, (ckpt_copy(edit_meta(format_version=99)),),
         "format version"),
    Case("meta not JSON", EVC, (ckpt_copy(truncate("pauserec.json")),),
         "pauserec.json"),
    Case("items.jsonl not UTF-8", EVC, (ckpt_copy(prefix("items.jsonl", b"\xff\xfe")),),
         "items.jsonl"),
    Case("items.jsonl truncated", EVC, (ckpt_copy(truncate("items.jsonl", 0.3)),),
         "items.jsonl"),
    Case("tokenizer corrupt", EVC, (ckpt_copy(overwrite("tokenizer.json", "{")),),
         "tokenizer"),
    Case("config.json corrupt", EVC, (ckpt_copy(overwrite("config.json", "{")),),
         "config"),
    Case("ckpt missing", "pauserec evaluate {t}/missing --out {t}/o", (), "missing"),
    Case("ckpt is a file", "pauserec evaluate {t}/f --out {t}/o", (file("f"),), "not a directory"),
    Case("probe on truncated weights", "probes.attention {c} --out {t}/o",
         (ckpt_copy(truncate("model.safetensors")),), "model.safetensors"),
    Case("rationales on non-UTF-8 catalog", "pauserec rationales --ckpt {c} --source template --out {t}/r.jsonl",
         (ckpt_copy(prefix("items.jsonl", b"\xff")),), "items.jsonl"),
    Case("train from a list meta", TRAIN.replace("{ckpt}", "{c}"), (ckpt_copy(overwrite("pauserec.json", "[]")),),
         "JSON object"),
    Case("resume from a truncated state", TRAIN + " --resume", (state(b"PK\x03\x04 truncated"),), "o.partial"),
    Case("resume from a state that is not one", TRAIN + " --resume", (state(),), "o.partial"),
    # -- broken SID indexes -----------------------------------------------------------------------------
    Case("index entries are ints", SIDX, (mini(), index(lambda i: [i, 1])), "idx.json"),
    Case("index has 26 levels", SIDX,
         (mini(), index(lambda i: [f"<{c}_{i}>" for c in "abcdefghijklmnopqrstuvwxyz"])), "levels"),
    Case("index junk around tokens", SIDX,
         (mini(), index(lambda i: ["x<a_1>y", f"<b_{i}>"])), "idx.json"),
    Case("index code too large", SIDX,
         (mini(), index(lambda i: ["<a_10000000>", f"<b_{i}>"])), "10000000"),
    Case("index is a list", SIDX, (mini(), index([1, 2])), "idx.json"),
    Case("index lacks an item", SIDX, (mini(), index({"0": SID3(0)})), "no entry"),
    Case("index not JSON", SIDX, (mini(), file("idx.json", b"{\"0\": [")), "idx.json"),
    Case("index not UTF-8", SIDX, (mini(), file("idx.json", b"\xff{}")), "idx.json"),
    Case("index levels differ", SIDX,
         (mini(), index(lambda i: SID3(i)[: 2 + i % 2])), "lengths"),
    Case("compare index broken", SIDB + " --compare {t}/idx.json", (mini(), index(lambda i: "<a_1>x")), "idx.json"),
    Case("init-ckpt from a bad index", INIT + " --sid-source {t}/idx.json --out {t}/o",
         (mini(), index(lambda i: [i])), "idx.json"),
    # -- broken datasets --------------------------------------------------------------------------------
    Case("items not UTF-8", "pauserec data stats --dataset {t}/mini", (mini(item_bytes=b'{"0": "\xff"}'),),
         "mini.item.json"),
    Case("interactions truncated", "pauserec data stats --dataset {t}/mini", (mini(inter_bytes=b'{"u1": [0, 1'),),
         "mini.inter.json"),
    Case("categories are an object", "pauserec data stats --dataset {t}/mini",
         (mini(items={str(i): {"title": "t", "categories": {"a": 1}} for i in range(6)}),), "categories"),
    Case("title is an object", "pauserec data stats --dataset {t}/mini",
         (mini(items={str(i): {"title": {"x": 1}} for i in range(6)}),), "title"),
    Case("unknown item in a sequence", "pauserec data stats --dataset {t}/mini",
         (mini(items={str(i): {"title": "t"} for i in range(5)}),), "unknown item"),
    Case("dataset missing", "pauserec data stats --dataset {t}/nowhere", (), "unknown dataset"),
    # -- numbers and lists out of range ---------------------------------------------------------------
    Case("lr nan", TRAIN + " --lr nan", (), "finite"),
    Case("lr inf", TRAIN + " --lr inf", (), "finite"),
    Case("n_train negative", TRAIN + " --n-train -5", (), "--n-train"),
    Case("save_every negative", TRAIN + " --save-every -1", (), "--save-every"),
    Case("warmup_ratio negative", TRAIN + " --warmup-ratio -0.1", (), "--warmup-ratio"),
    Case("grad_clip negative", TRAIN + " --grad-clip -1", (), "--grad-clip"),
    Case("n_pauses not a number", TRAIN + " --n-pauses x", (), "--n-pauses"),
    Case("preset section misspelled", TRAIN + " --preset {t}/p.toml", (preset("[trian.sft]\nlr = 0.1\n"),),
         "trian.sft"),
    Case("preset lr nan", TRAIN + " --preset {t}/p.toml", (preset("[train.sft]\nlr = nan\n"),), "finite"),
    Case("preset unknown key", TRAIN + " --preset {t}/p.toml", (preset("[train.sft]\nlearning_rate = 1\n"),),
         "learning_rate"),
    Case("preset not TOML", TRAIN + " --preset {t}/p.toml", (preset("[train.sft\n"),), "p.toml"),
    Case("preset not UTF-8", TRAIN + " --preset {t}/p.toml", (file("p.toml", b"\xff = 1"),), "p.toml"),
    Case("train unknown stage", TRAIN.replace("sft", "sfx"), (), "--stage"),
    Case("train resume and overwrite", TRAIN + " --resume --overwrite", (), "--resume"),
    Case("rationales n negative", RATS + " --n -3", (), "--n"),
    Case("rationales max_retries negative", RATS + " --max-retries -1", (), "--max-retries"),
    Case("rationales timeout zero", RATS + " --timeout 0", (), "--timeout"),
    Case("rationales concurrency zero", RATS + " --concurrency 0", (), "--concurrency"),
    Case("sid iters zero", SIDB + " --sid-iters 0", (mini(),), "--sid-iters"),
    Case("sid levels zero", SIDB + " --sid-levels 0", (mini(),), "--sid-levels"),
    Case("sid method unknown", SIDB + " --sid-method bogus", (mini(),), "--sid-method"),
    Case("codebook size one", INIT + " --sid-codebook-size 1 --out {t}/o", (mini(),), "--sid-codebook-size"),
    Case("evaluate k negative", EVAL + " --k -1", (), "--n-pauses"),
    Case("evaluate beams below top-k", EVAL + " --beams 5", (), "--beams"),
    Case("evaluate batch size zero", EVAL + " --batch-size 0", (), "--batch-size"),
    Case("evaluate split unknown", EVAL + " --split dev", (), "--split"),
    Case("evaluate n_users zero", EVAL + " --n-users 0", (), "--n-users"),
    Case("evaluate unknown flag", EVAL + " --bogus 1", (), "--bogus"),
    Case("baseline model unknown", "pauserec baseline --model bogus --out {t}/o", (), "--model"),
    Case("baseline n_users zero", "pauserec baseline --n-users 0 --out {t}/o", (), "--n-users"),
    Case("baseline sasrec seconds negative", "pauserec baseline --model sasrec --sasrec-seconds -1 --out {t}/o",
         (), "--sasrec-seconds"),
    Case("make_report metric unknown", REPORT + " --metric bogus", (folder("runs"),), "--metric", sub=True),
    Case("make_report n_resamples zero", REPORT + " --n-resamples 0", (folder("runs"),), "--n-resamples"),
    Case("make_report runs missing", REPORT, (), "runs"),
    Case("make_report runs empty", REPORT, (folder("runs", keep=False),), "no results"),
    Case("data stats max_history zero", "pauserec data stats --max-history 0", (), "--max-history"),
    Case("data prepare format unknown", PREP.replace("movielens", "bogus") + " --out {t}/o", (folder("raw"),),
         "--format"),
    Case("data prepare kcore zero", PREP + " --kcore 0 --out {t}/o", (folder("raw"),), "--kcore"),
    Case("data prepare raw missing", PREP + " --out {t}/o", (), "raw"),
    Case("data export max_history zero", "pauserec data export --max-history 0 --out {t}/o", (), "--max-history"),
    Case("data export format unknown", "pauserec data export --format bogus --out {t}/o", (), "--format"),
    Case("alignment k zero", "probes.alignment {ckpt} --out {t}/o --k 0", (), "--k"),
    Case("alignment n_perm negative", "probes.alignment {ckpt} --out {t}/o --n-perm -1", (), "--n-perm"),
    Case("attention n_users zero", "probes.attention {ckpt} --out {t}/o --n-users 0", (), "--n-users"),
    Case("attention split unknown", "probes.attention {ckpt} --out {t}/o --split dev", (), "--split"),
    Case("verbalization query unknown", "probes.verbalization {ckpt} --out {t}/o --queries bogus", (), "bogus"),
    Case("verbalization n_items zero", "probes.verbalization {ckpt} --out {t}/o --n-items 0", (), "--n-items"),
    Case("rationale probe perturbation unknown", "probes.rationale {ckpt} --out {t}/o --perturbations bogus", (),
         "bogus"),
    Case("rationale probe top_k zero", "probes.rationale {ckpt} --out {t}/o --top-k 0", (), "--top-k"),
    Case("rationale-train condition unknown", RT + " --conditions bogus", (),
         "bogus"),
    Case("rationale-train n_users zero", RT + " --n-users 0", (), "--n-users"),
    Case("pipeline stage unknown", "pauserec pipeline --out {t}/o --stages cpt,bogus", (), "--stages"),
    Case("experiment seeds zero", "pauserec experiment --out {t}/o --seeds 0", (), "--seeds"),
    Case("experiment ks zero", "pauserec experiment --out {t}/o --ks 0,3", (), "--pause-counts"),
    Case("demo preset misspelled", "pauserec demo --out {t}/o --preset {t}/p.toml", (preset("[trian.sft]\n"),),
         "trian.sft"),
    Case("rationales seed negative", RATS + " --seed -1", (), "--seed"),
    Case("data prepare min_rating negative", PREP + " --min-rating -1 --out {t}/o", (folder("raw"),),
         "--min-rating"),
    Case("init-ckpt init unknown", INIT + " --init bogus --out {t}/o", (mini(),), "--init"),
    Case("evaluate device unknown", EVAL.replace("--device cpu", "--device bogus"), (), "device"),
    Case("train device unknown", TRAIN.replace("--device cpu", "--device bogus"), (), "device"),
    Case("attention variant unknown", "probes.attention {ckpt} --out {t}/o --variant bogus", (), "--variant"),
    Case("rationale-train base source unknown", RT + " --base-source x", (),
         "--base-source"),
    Case("compare index missing", SIDB + " --compare {t}/nowhere.json", (mini(),), "nowhere.json"),
    Case("unknown command", "pauserec bogus", (), "unknown command"),
]


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file (content hash) and folder under ``roots``."""
    out = {}
    for root in roots:
        for dirpath, _, filenames in os.walk(root):
            out[dirpath] = "dir"
            for name in filenames:
                p = Path(dirpath) / name
                mode = p.stat().st_mode
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
    """Build what the row finds on disk under ``tmp/t``; snapshot ``tmp`` and the shared checkpoint."""
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
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.expect in lines[0], lines[0]
    after = snapshot(prep.tmp, ckpt)
    assert after == prep.before, sorted(set(after.items()) ^ set(prep.before.items()))


@pytest.fixture(scope="module")
def launched(tiny_ckpt_path, tmp_path_factory) -> dict[str, tuple[Prepared, subprocess.Popen]]:
    """The subprocess rows, started together at the first row (imports take seconds each): id -> process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = {}
    for case in (c for c in CASES if c.sub):
        prep = prepare(case, tmp_path_factory.mktemp("sub"), tiny_ckpt_path)
        proc = subprocess.Popen([sys.executable, "-m", prep.module, *prep.argv], cwd=prep.tmp, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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


ORDER = sorted(CASES, key=lambda c: c.sub)  # the subprocess rows last: they start first and run meanwhile


@pytest.mark.parametrize("case", ORDER, ids=[c.id for c in ORDER])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, launched, tiny_ckpt_path, tmp_path, capsys,
                                                          monkeypatch):
    if case.needs_perms and IS_ROOT:
        pytest.skip("root ignores file permissions")
    if case.sub:
        prep, proc = launched[case.id]
        _, err = proc.communicate(timeout=180)
        check(case, prep, tiny_ckpt_path, proc.returncode, err)
        return
    prep = prepare(case, tmp_path, tiny_ckpt_path)
    monkeypatch.chdir(tmp_path)  # a relative path written by mistake lands where the snapshot sees it
    try:
        code = cli.run(entry(prep.module), prep.argv)
    finally:
        restore(tmp_path)
    check(case, prep, tiny_ckpt_path, code, capsys.readouterr().err)


def entry(module: str) -> Callable[[list[str] | None], object]:
    name = "pauserec.__main__" if module == "pauserec" else module
    return importlib.import_module(name).main


# ---- valid input that used to be rejected or mangled --------------------------------------------------

@pytest.mark.parametrize(("flag", "value"), [("--ks", (1, 3)), ("--ks", (5,)), ("--pause-counts", (1, 3, 5))])
def test_experiment_takes_any_list_of_pause_counts(flag, value):
    from driver.experiment import ExperimentArgs

    argv = ["--out", "x", flag, ",".join(map(str, value))]
    assert parse_args(ExperimentArgs, argv, "pauserec experiment", section="experiment").pause_counts == value


def test_nested_categories_are_joined_like_prepare_joins_them(lcrec):
    items = {str(i): {"title": f"t{i}", "categories": [["Beauty", "Skin Care"], ["Beauty", "Hair", "Hair"]],
                      "description": ["Soft.", "Gentle."], "year": 2001} for i in range(6)}
    ds = data.load_dataset(str(lcrec(MINI_SEQ, items)))
    item = ds.items[0]
    assert item.categories == "Beauty, Skin Care, Hair, Hair"  # a path repeats no names of earlier paths
    assert (item.description, item.year) == ("Soft. Gentle.", "2001")
    flat = data.load_dataset(str(lcrec(MINI_SEQ, {k: {**v, "categories": ["A", "B"]} for k, v in items.items()},
                                       name="Flat")))
    assert flat.items[0].categories == "A, B"
