"""Outputs users can rely on: atomic writes, and ``--out`` that never destroys what is already there.

* Atomic: a reader never sees a half-written file or directory (temp file or directory + rename).
* :func:`claim` is the output policy every command applies before any long work starts: an existing
  non-empty ``--out`` is refused unless the user says ``--overwrite`` (or ``--resume``), an output is
  never inside, equal to, or holding an input, its parent must be writable, and a lock file makes a
  second writer of the same output fail at once instead of corrupting it.
* Permissions follow the user's umask (temp files are created private, then opened up to what a plain
  ``open()`` would have given).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pauserec.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _open_up(path: str | Path, directory: bool = False) -> None:
    """Give a temp file or directory the mode a plain open()/mkdir() would have (mkstemp: 0600)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and a rename."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    """A DataFrame as CSV (no index), atomically; gzip-compressed (reproducibly) when ``path`` ends in
    ``.gz`` -- ``pandas.read_csv`` reads either."""
    text = frame.to_csv(index=False)
    if str(path).endswith(".gz"):
        write_bytes(path, gzip.compress(text.encode("utf-8"), mtime=0))
    else:
        write_text(path, text)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success it replaces ``path`` in one rename.

    On any error the temp directory is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    _open_up(tmp, directory=True)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cache_dir(*parts: str) -> Path:
    """The workbench's cache (dequantised backbones, text embeddings): $PAUSEREC_CACHE or ~/.cache."""
    root = Path(os.environ.get("PAUSEREC_CACHE") or Path.home() / ".cache" / "pauserec")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_empty(path: Path) -> bool:
    """True for a missing path or an empty directory."""
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _related(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


@contextlib.contextmanager
def claim(out: str | Path, *, overwrite: bool = False, resume: bool = False,
          inputs: Iterable[str | Path] = (), flag: str = "--out") -> Iterator[Path]:
    """Check ``out`` against the output policy, then hold its lock while the caller writes it.

    Raises :class:`UserError` (before any work) when ``out`` exists and is not empty without
    ``overwrite``/``resume``, when it is, or lies inside, or contains an input, when its parent is not
    writable, or when another process holds its lock. ``inputs`` that are not paths on disk (a dataset
    given by name, say) are skipped.
    """
    out = Path(out)
    if not str(out):
        raise UserError(f"{flag} must name a path")
    real = out.resolve()
    for given in inputs:
        if given and Path(given).exists() and _related(real, Path(given).resolve()):
            raise UserError(f"{flag} {out} overlaps the input {given}; write the output somewhere else")
    if not is_empty(out) and not (overwrite or resume):
        kind = "directory" if out.is_dir() else "file"
        raise UserError(f"{flag} {out} exists and is a non-empty {kind}; pass --overwrite to replace it")
    parent = _writable_parent(out, flag)
    with _lock(parent / f".{out.name}.lock", out, flag):
        yield out


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
    try:
        fh = open(lock_path, "w")  # noqa: SIM115 -- closed below
    except OSError as err:
        raise UserError(f"cannot lock {flag} {out}: {err.strerror} ({lock_path})") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise UserError(f"another process is writing {out} (lock {lock_path}); wait for it or pick "
                        f"another {flag}") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        fh.close()
