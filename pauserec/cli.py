"""The CLI edge: every command's errors become one line on stderr and exit code 2.

User mistakes raise :class:`UserError` where they are found. What the operating system or a library
raises while reading the user's files (a missing or unreadable path, a read-only folder, a full
disk, bytes that are not UTF-8, a truncated JSON/CSV/TOML file) is turned into the same one line
here, with the path it concerns -- a traceback is for bugs only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable

import tomllib

from pauserec.errors import UserError

# Library errors that mean "this input is broken", not "this program is broken".
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    UnicodeError,
    json.JSONDecodeError,
    tomllib.TOMLDecodeError,
    EOFError,
)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # transformers' per-load progress bars would break one-line error output on stderr
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def describe(err: BaseException) -> str | None:
    """The one line for an error that is the user's input's fault, or ``None`` for a bug."""
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, OSError):
        what = err.strerror or type(err).__name__
        where = err.filename or ""
        return f"{what} ({os.fsdecode(where)})" if where else what
    if isinstance(err, _DATA_ERRORS):
        return f"unreadable input: {type(err).__name__}: {_first_line(err)}"
    if type(err).__name__ == "SafetensorError":
        return f"corrupt weights file: {_first_line(err)}"
    if type(err).__name__ == "OutOfMemoryError":
        return "out of memory on the device: lower --batch-size"
    return None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; an input error prints ``error: ...`` (one line) and returns 2."""
    try:
        main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 -- sorted into input errors and bugs just below
        line = describe(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    return 0
