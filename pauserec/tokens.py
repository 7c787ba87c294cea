"""Every special token string the workbench uses lives here, and only here.

A Semantic ID (SID) is one token per level: level 0 is ``<a_*>``, level 1 ``<b_*>``, and so on, so
``<a_12><b_3><c_200>`` names one item. The de-duplication level is just the next letter.
"""

from __future__ import annotations

import re
import string

PAUSE = "<pause>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_TOKENS = (THINK_OPEN, THINK_CLOSE)
LEVEL_LETTERS = string.ascii_lowercase

_SID_RE = re.compile(r"<([a-z])_(\d+)>")


def sid_token(level: int, code: int) -> str:
    """The token string for ``code`` at ``level`` (0-based), e.g. ``sid_token(1, 3) == "<b_3>"``."""
    if not 0 <= level < len(LEVEL_LETTERS):
        raise ValueError(f"SID level {level} out of range")
    return f"<{LEVEL_LETTERS[level]}_{int(code)}>"


def sid_tokens(codes) -> list[str]:
    """One item's codes (one per level) as token strings."""
    return [sid_token(level, code) for level, code in enumerate(codes)]


def sid_string(codes) -> str:
    """One item's SID as a single string, e.g. ``<a_12><b_3><c_200>``."""
    return "".join(sid_tokens(codes))


def parse_sid(text: str) -> list[tuple[int, int]]:
    """``"<a_12><b_3>"`` -> ``[(0, 12), (1, 3)]``; anything that is not a SID token is ignored."""
    return [(LEVEL_LETTERS.index(m.group(1)), int(m.group(2))) for m in _SID_RE.finditer(text)]


def is_sid_token(token: str) -> bool:
    return _SID_RE.fullmatch(token) is not None


def vocabulary(codebook_sizes: list[int]) -> list[str]:
    """All SID tokens for a codebook (every code of every level), in level-major order."""
    return [
        sid_token(level, code) for level, size in enumerate(codebook_sizes) for code in range(size)
    ]


def special_tokens(codebook_sizes: list[int]) -> list[str]:
    """Every token the workbench adds to a backbone: SID tokens, then the pause and think tokens."""
    return vocabulary(codebook_sizes) + [PAUSE, THINK_OPEN, THINK_CLOSE]
