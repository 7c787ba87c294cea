"""Shared CLI plumbing: user mistakes become one line on stderr and exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from pauserec.errors import UserError


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # transformers' per-load progress bars would break one-line error output on stderr
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; a :class:`UserError` prints ``error: ...`` and returns 2."""
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
