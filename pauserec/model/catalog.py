"""The catalog a checkpoint recommends from: every item with its Semantic ID (``items.jsonl``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pauserec import tokens
from pauserec.data import Item
from pauserec.errors import UserError


@dataclass(frozen=True)
class CatalogItem(Item):
    """A dataset item with its Semantic ID (the description is not kept in ``items.jsonl``)."""

    sid: tuple[str, ...] = ()  # one token per level, e.g. ("<a_12>", "<b_3>", "<c_200>", "<d_0>")

    @property
    def sid_string(self) -> str:
        return "".join(self.sid)


class Catalog:
    """Items in dataset order (position = item index) with their SIDs; every SID is unique."""

    def __init__(self, items: list[CatalogItem]):
        self.items = items
        self.codes = np.array(
            [[code for _, code in tokens.parse_sid("".join(it.sid))] for it in items]
        )
        self.by_sid = {it.sid_string: i for i, it in enumerate(items)}
        if len(self.by_sid) != len(items):
            raise UserError("catalog has duplicate SIDs; every item needs a unique SID")

    @classmethod
    def from_codes(cls, items: list[Item], codes: np.ndarray) -> Catalog:
        return cls(
            [
                CatalogItem(
                    it.item_id,
                    it.title,
                    it.categories,
                    it.brand,
                    year=it.year,
                    sid=tuple(tokens.sid_tokens(row)),
                )
                for it, row in zip(items, codes)
            ]
        )

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_levels(self) -> int:
        return self.codes.shape[1]

    @property
    def codebook_sizes(self) -> list[int]:
        return [int(c) + 1 for c in self.codes.max(0)]

    def sid_tokens(self) -> list[str]:
        """Every SID token this catalog's tokenizer needs."""
        return tokens.vocabulary(self.codebook_sizes)

    def sid(self, index: int) -> str:
        return self.items[index].sid_string

    def write(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            for it in self.items:
                row = {k: v for k, v in asdict(it).items() if k != "description"}
                fh.write(json.dumps({**row, "sid": list(it.sid)}, ensure_ascii=False) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> Catalog:
        items = []
        try:
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    items.append(_item(line, path, n))
        except UnicodeDecodeError as err:
            raise UserError(f"corrupt catalog {path}: not UTF-8 text ({err.reason})") from None
        except OSError as err:
            raise UserError(f"cannot read catalog {path}: {err.strerror}") from None
        if not items:
            raise UserError(f"catalog {path} is empty")
        return cls(items)


def _item(line: str, path, n: int) -> CatalogItem:
    """One ``items.jsonl`` line; every field a string, ``sid`` a list of SID tokens."""
    try:
        row = json.loads(line)
        if not isinstance(row, dict):
            raise TypeError("not an object")
        sid = row.pop("sid")
        if (
            not isinstance(sid, list)
            or not sid
            or not all(isinstance(t, str) and tokens.is_sid_token(t) for t in sid)
        ):
            raise TypeError(f"sid must be a list of SID tokens, got {sid!r}")
        bad = [k for k, v in row.items() if not isinstance(v, str)]
        if bad:
            raise TypeError(f"field(s) {', '.join(bad)} must be strings")
        return CatalogItem(**row, sid=tuple(sid))
    except (json.JSONDecodeError, TypeError, KeyError, RecursionError) as err:
        raise UserError(f"corrupt catalog {path} line {n}: {err or 'nested too deeply'}") from None
