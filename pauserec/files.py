"""Outputs users can rely on: atomic writes, and ``--out`` that never destroys what is already
there.

* Atomic: a reader never sees a half-written file or directory (temp file or directory + rename).
* :func:`claim` is the output policy every command applies before any long work starts:

  - an output may never be, contain, or lie inside an input (datasets and data roots resolved from
    names included: callers pass what :func:`pauserec.data.source_paths` and
    :func:`pauserec.model.checkpoint.source_paths` give);
  - an existing non-empty ``--out`` is refused unless the user says ``--overwrite`` (or
    ``--resume``), and ``--overwrite`` replaces only what an earlier run of the same command wrote
    there: a folder that carries its :data:`MARKER` (:func:`atomic_dir` writes it into every
    claimed output), or a regular file where the command writes a file. A folder the workbench did
    not write, a symbolic link, or anything that is not a regular file or folder (a device, a pipe)
    is never replaced;
  - the output's parent must be writable, and a lock file (holding the writer's PID) makes a second
    writer of the same output fail at once instead of corrupting it.

* What a killed run leaves beside an output -- temp folders and files named with its PID, a replaced
  output it had moved aside -- is recognised by the dead PID and removed by the next run that writes
  there (:func:`sweep`).
* Permissions follow the user's umask (temp files are created private, then opened up to what a
  plain ``open()`` would have given).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pauserec.errors import UserError

MARKER = ".pauserec-output.json"  # inside every output folder a command wrote: which command
_CLAIMED: dict[Path, str] = {}  # outputs claimed in this process (resolved) -> the writing command


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _open_up(path: str | Path, directory: bool = False) -> None:
    """Give a temp file or directory the mode a plain open()/mkdir() would have (mkstemp: 0600)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _temp_prefix(name: str) -> str:
    """Temp names beside ``name`` carry this process's PID, so a later run can tell them stale."""
    return f".{name}.{os.getpid()}."


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and a rename."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        _open_up(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path: str | Path, frame) -> None:
    """A DataFrame as CSV (no index), atomically; gzip-compressed (reproducibly) when ``path`` ends
    in ``.gz`` -- ``pandas.read_csv`` reads either."""
    text = frame.to_csv(index=False)
    if str(path).endswith(".gz"):
        write_bytes(path, gzip.compress(text.encode("utf-8"), mtime=0))
    else:
        write_text(path, text)


def read_json(path: str | Path, allow_nan: bool = True) -> Any:
    """The JSON value in ``path``; text that is not UTF-8 or not JSON is a one-line
    :class:`UserError` naming the file (so is nesting too deep to read). ``allow_nan=False`` refuses
    NaN and Infinity."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    return parse_json(text, str(path), allow_nan)


def parse_json(text: str, where: str, allow_nan: bool = True) -> Any:
    """:func:`json.loads` with :func:`read_json`'s errors (``where``: the file, or file + line)."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not a number")

    try:
        return json.loads(text, parse_constant=None if allow_nan else refuse)
    except json.JSONDecodeError as err:
        raise UserError(f"corrupt JSON in {where}: {err}") from None
    except ValueError as err:
        raise UserError(f"{where}: {err}") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply to read") from None


# ---- what a killed run leaves behind ---------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep(path: str | Path) -> list[Path]:
    """Remove the temp files and folders a dead process left beside ``path`` (:func:`atomic_dir` and
    :func:`write_bytes` name them with their PID); returns what was removed."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.(.+\.tmp|old)")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    removed = []
    for name in names:
        match = pattern.fullmatch(name)
        if match and not _alive(int(match.group(1))):
            stale = path.parent / name
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


# ---- markers: which command wrote an output --------------------------------------------------


def mark(folder: str | Path, kind: str) -> None:
    """Record in ``folder`` that the command ``kind`` wrote it (what ``--overwrite`` checks)."""
    write_json(
        Path(folder) / MARKER,
        {"written_by": kind, "pid": os.getpid(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
    )


def written_by(folder: str | Path) -> str | None:
    """The command that wrote ``folder`` (its :data:`MARKER`), or ``None`` for anything else."""
    marker = Path(folder) / MARKER
    if not marker.is_file() or marker.is_symlink():
        return None
    try:
        value = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    kind = value.get("written_by") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success it replaces ``path`` in one rename.

    On any error the temp directory is removed and an existing ``path`` is left untouched. An output
    claimed in this process (:func:`claim`) gets its :data:`MARKER`. An existing ``path`` is
    replaced only when it is an empty folder (it keeps its mode; one that fills meanwhile is kept,
    and this is an error) or a folder a workbench command wrote.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp"))
    _open_up(tmp, directory=True)
    try:
        yield tmp
        kind = _CLAIMED.get(path.resolve())
        if kind:
            mark(tmp, kind)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path`` (see :func:`atomic_dir` for what may be replaced)."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    if path.is_symlink() or not path.is_dir():
        raise UserError(f"{path} is not a folder; nothing was written there")
    if written_by(path) is None:  # an empty folder: one rename, which fails if it is not empty now
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        try:
            os.replace(tmp, path)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise UserError(
                f"{path} is no longer empty; its contents are kept and nothing was written there"
            ) from None
        return
    old = path.with_name(f"{_temp_prefix(path.name)}old")
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def cache_dir(*parts: str) -> Path:
    """The workbench's cache (dequantised backbones, text embeddings): $PAUSEREC_CACHE or
    ~/.cache."""
    root = Path(os.environ.get("PAUSEREC_CACHE") or Path.home() / ".cache" / "pauserec")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_empty(path: Path) -> bool:
    """True for a missing path or an empty directory."""
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


# ---- the output policy -----------------------------------------------------------------------


def _related(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_apart(
    out: Path, inputs: Iterable[str | Path], flag: str = "--out", around: Iterable[str | Path] = ()
) -> None:
    """``out`` may not be, contain or lie inside any of ``inputs`` that is on disk (a dataset given
    by name is passed resolved, see the module docstring), nor be or contain any of ``around``
    (folders an output may sit inside, as a report inside its runs directory)."""
    real = out.resolve()
    overlaps = [g for g in inputs if g and os.path.lexists(g) and _related(real, Path(g).resolve())]
    overlaps += [
        g for g in around if g and Path(g).exists() and Path(g).resolve().is_relative_to(real)
    ]
    if overlaps:
        raise UserError(
            f"{flag} {out} overlaps the input {overlaps[0]}; write the output somewhere else"
        )


def _check_existing(
    out: Path, kind: str, overwrite: bool, resume: bool, flag: str, file: bool
) -> None:
    """What may stand at ``out`` already (see the module docstring)."""
    if not os.path.lexists(out):
        return
    if out.exists() and not (out.is_dir() or out.is_file()):
        raise UserError(f"{flag} {out} is not a regular file or folder; pick another {flag}")
    if resume and out.is_dir():
        return  # the caller recognises its own earlier work (a run directory)
    if out.is_symlink():
        raise UserError(
            f"{flag} {out} is a symbolic link, which would be replaced; give the path "
            "it points to, or another one"
        )
    if file and out.is_dir():
        raise UserError(f"{flag} {out} is a directory; {kind} writes a file")
    if is_empty(out):
        return
    what = "file" if out.is_file() else "non-empty directory"
    if not overwrite:
        raise UserError(f"{flag} {out} exists and is a {what}; pass --overwrite to replace it")
    if file:
        return
    if out.is_file():
        raise UserError(
            f"{flag} {out} exists and is a file; {kind} writes a folder there: pick another {flag}"
        )
    owner = written_by(out)
    if owner != kind:
        by = f"by {owner}" if owner else "by the workbench (it has no marker)"
        raise UserError(
            f"{flag} {out} exists and was not written by {kind} but {by}; --overwrite "
            f"replaces only an earlier output of the same command: pick another {flag}"
        )


@contextlib.contextmanager
def claim(
    out: str | Path,
    *,
    kind: str,
    overwrite: bool = False,
    resume: bool = False,
    inputs: Iterable[str | Path] = (),
    around: Iterable[str | Path] = (),
    flag: str = "--out",
    file: bool = False,
) -> Iterator[Path]:
    """Check ``out`` against the output policy (the module docstring), then hold its lock while the
    caller writes it; an :func:`atomic_dir` of ``out`` meanwhile carries the marker of ``kind`` (the
    command, e.g. ``"pauserec evaluate"``).

    Raises :class:`UserError` before any work. ``file``: the command writes one file, not a folder.
    ``inputs`` not on disk (a dataset given by name, unresolved) are skipped.
    """
    out = Path(out)
    if not str(out):
        raise UserError(f"{flag} must name a path")
    check_apart(out, inputs, flag, around)
    _check_existing(out, kind, overwrite, resume, flag, file)
    parent = _writable_parent(out, flag)
    sweep(out)
    real = out.resolve()
    with _lock(parent / f".{out.name}.lock", out, flag):
        _CLAIMED[real] = kind
        try:
            yield out
        finally:
            _CLAIMED.pop(real, None)


def _writable_parent(out: Path, flag: str) -> Path:
    """The output's parent, created if missing; an error if it cannot be written."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the folder for {flag} ({parent}): {err.strerror}") from None
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {flag} {out}: its folder {parent} is not writable")
    return parent


@contextlib.contextmanager
def _lock(lock_path: Path, out: Path, flag: str) -> Iterator[None]:
    """An exclusive lock on ``lock_path`` holding this PID; one a dead process left is taken over
    (the kernel released its lock) and removed at the end like our own."""
    try:
        fh = open(lock_path, "a+")  # noqa: SIM115 -- closed below; "a+" keeps a holder's PID
    except OSError as err:
        raise UserError(f"cannot lock {flag} {out}: {err.strerror} ({lock_path})") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        who = f"another process (PID {holder})" if holder.isdigit() else "another process"
        raise UserError(
            f"{who} is writing {out} (lock {lock_path}); wait for it or pick another {flag}"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        fh.close()
