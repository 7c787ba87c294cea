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
class CatalogItem:
    item_id: str
    sid: tuple[str, ...]  # one token per level, e.g. ("<a_12>", "<b_3>", "<c_200>", "<d_0>")
    title: str
    categories: str = ""
    brand: str = ""
    year: str = ""

    @property
    def display_title(self) -> str:
        return self.title or f"untitled item {self.item_id}"

    @property
    def sid_string(self) -> str:
        return "".join(self.sid)


class Catalog:
    """Items in dataset order (position = item index) with their SIDs; every SID is unique."""

    def __init__(self, items: list[CatalogItem]):
        self.items = items
        self.codes = np.array([[code for _, code in tokens.parse_sid("".join(it.sid))] for it in items])
        self.by_sid = {it.sid_string: i for i, it in enumerate(items)}
        if len(self.by_sid) != len(items):
            raise UserError("catalog has duplicate SIDs; every item needs a unique SID")

    @classmethod
    def from_codes(cls, items: list[Item], codes: np.ndarray) -> Catalog:
        return cls([CatalogItem(it.item_id, tuple(tokens.sid_tokens(row)), it.title, it.categories,
                                it.brand, it.year) for it, row in zip(items, codes)])

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
        with open(path, "w") as fh:
            for it in self.items:
                fh.write(json.dumps({**asdict(it), "sid": list(it.sid)}) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> Catalog:
        items = []
        with open(path) as fh:
            for n, line in enumerate(fh, 1):
                try:
                    row = json.loads(line)
                    items.append(CatalogItem(**{**row, "sid": tuple(row["sid"])}))
                except (json.JSONDecodeError, TypeError, KeyError) as err:
                    raise UserError(f"corrupt catalog {path} line {n}: {err}") from None
        if not items:
            raise UserError(f"catalog {path} is empty")
        return cls(items)
