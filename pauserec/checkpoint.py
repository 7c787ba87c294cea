"""The one checkpoint format, and the only place a model is saved or loaded.

A checkpoint is a directory: Hugging Face ``save_pretrained`` files (weights, config, tokenizer with the
SID/pause/think tokens), ``items.jsonl`` (the catalog) and ``pauserec.json`` (what this checkpoint is).
"""

from __future__ import annotations

import logging
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from pauserec import files, tokens
from pauserec.catalog import Catalog
from pauserec.errors import UserError

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
META_FILE = "pauserec.json"
CATALOG_FILE = "items.jsonl"
KNOWN_KEYS = {
    "format_version", "variant", "stage", "k", "backbone", "dataset", "sid", "configs", "metrics",
    "timings", "git_commit", "parent", "created", "pause_init", "rationale",
}
VARIANTS = ("base", "plain", "pause", "cot")


@dataclass
class Checkpoint:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    catalog: Catalog
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def variant(self) -> str:
        return self.meta.get("variant", "base")

    @property
    def stage(self) -> str:
        return self.meta.get("stage", "init")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def save(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write ``ckpt`` to ``path`` atomically (a temp directory renamed into place)."""
    meta = {"format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "git_commit": git_commit(), **ckpt.meta}
    meta["format_version"] = FORMAT_VERSION
    if meta.get("variant", "base") not in VARIANTS:
        raise ValueError(f"unknown variant {meta['variant']!r}")
    with files.atomic_dir(path) as tmp:
        ckpt.model.save_pretrained(tmp)
        ckpt.tokenizer.save_pretrained(tmp)
        ckpt.catalog.write(tmp / CATALOG_FILE)
        files.write_json(tmp / META_FILE, meta)
    ckpt.meta, ckpt.path = meta, Path(path)
    return Path(path)


def read_meta(path: str | Path) -> dict[str, Any]:
    """``pauserec.json`` of a checkpoint, validated (format version, known keys)."""
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise UserError(f"checkpoint {path} is not a directory")
    if not meta_path.is_file():
        raise UserError(f"checkpoint {path} is missing {META_FILE}")
    import json

    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"checkpoint {path}: corrupt {META_FILE}: {err}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"checkpoint {path}: unknown format version {meta.get('format_version')!r} "
                        f"(this workbench reads {FORMAT_VERSION})")
    unknown = sorted(set(meta) - KNOWN_KEYS)
    if unknown:
        warnings.warn(f"checkpoint {path}: unknown key(s) in {META_FILE}: {', '.join(unknown)}", stacklevel=2)
    return meta


def _check_files(path: Path) -> None:
    need = {
        "config.json": (path / "config.json").is_file(),
        "model weights (model.safetensors)": any(path.glob("model*.safetensors")),
        "tokenizer (tokenizer.json)": (path / "tokenizer.json").is_file(),
        CATALOG_FILE: (path / CATALOG_FILE).is_file(),
    }
    missing = [name for name, ok in need.items() if not ok]
    if missing:
        raise UserError(f"checkpoint {path} is missing {', '.join(missing)}")


def load(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
         attn_implementation: str | None = None) -> Checkpoint:
    """Load a checkpoint directory: the only loader anyone calls.

    ``attn_implementation="eager"`` where attention weights are read (sdpa returns none).
    """
    path = Path(path)
    meta = read_meta(path)
    _check_files(path)
    catalog = Catalog.read(path / CATALOG_FILE)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device)
    except (OSError, ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"checkpoint {path}: cannot load model/tokenizer: {first}") from None
    model.eval()
    check_consistent(model, tok, catalog, where=str(path))
    return Checkpoint(model, tok, catalog, meta, path)


def check_consistent(model: PreTrainedModel, tok: PreTrainedTokenizerBase, catalog: Catalog,
                     where: str = "checkpoint") -> None:
    """Every catalog SID token (and pause/think) is one token of the tokenizer, with an embedding row."""
    vocab = tok.get_vocab()
    needed = catalog.sid_tokens() + [tokens.PAUSE, *tokens.THINK_TOKENS]
    missing = [t for t in needed if t not in vocab]
    if missing:
        raise UserError(f"{where}: tokenizer does not match the catalog: {len(missing)} token(s) missing, "
                        f"e.g. {missing[0]}")
    rows = model.get_input_embeddings().weight.shape[0]
    too_big = max(vocab[t] for t in needed)
    if too_big >= rows:
        raise UserError(f"{where}: tokenizer has token id {too_big} but the model has only {rows} embedding rows")


def update_meta(path: str | Path, **changes: Any) -> dict[str, Any]:
    """Set top-level keys of a saved checkpoint's ``pauserec.json`` (one atomic rewrite of that file)."""
    path = Path(path)
    meta = read_meta(path)
    meta.update(changes)
    files.write_json(path / META_FILE, meta)
    return meta
