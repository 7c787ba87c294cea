"""``python -m pauserec COMMAND ...``: one entry point for every workbench command."""

from __future__ import annotations

import sys

from pauserec.cli import run, setup_logging
from pauserec.errors import UserError

USAGE = """usage: python -m pauserec COMMAND [options]   (COMMAND --help for its options)

commands:
  data stats     users, items, interactions, sequence lengths of a dataset
  sid build      Semantic IDs for a catalog, with a quality report
  init-ckpt      an untrained checkpoint (backbone + SID tokens + catalog)
  demo           the main job on the embedded defaults (what `make demo` runs)"""


def _commands() -> dict:
    from pauserec import commands, demo

    return {
        ("data", "stats"): commands.data_stats,
        ("sid", "build"): commands.sid_build,
        ("init-ckpt",): commands.init_ckpt,
        ("demo",): demo.main,
    }


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    for key, fn in _commands().items():
        if tuple(argv[: len(key)]) == key:
            fn(argv[len(key):])
            return
    raise UserError(f"unknown command '{' '.join(argv[:2])}'\n{USAGE}")


if __name__ == "__main__":
    setup_logging()
    sys.exit(run(main))
