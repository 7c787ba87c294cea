"""Every command of ``python -m pauserec`` prints its help and exits 0 (argparse formats help
strings with ``%``: a help text saying "80%" once broke ``experiment plan --help`` with a
traceback)."""

from __future__ import annotations

import pytest

from pauserec import __main__ as entry


@pytest.mark.parametrize("words", list(entry.COMMANDS), ids=" ".join)
def test_every_command_prints_its_help(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        entry.main([*words, "--help"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage:") and "--" in printed


def test_an_unknown_command_is_one_line_and_exit_2(capsys):
    assert entry.run(entry.main, ["no-such-command"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown command 'no-such-command'")
