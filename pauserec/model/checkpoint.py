"""The one checkpoint format, and the only place a model is saved or loaded.

A checkpoint is a directory: Hugging Face ``save_pretrained`` files (weights, config, tokenizer with
the SID/pause/think tokens), ``items.jsonl`` (the catalog) and ``pauserec.json`` (what this
checkpoint is).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import subprocess
import time
import warnings
from collections.abc import Iterator
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

from pauserec import data, files, registry, tokens
from pauserec.errors import UserError
from pauserec.model.catalog import Catalog
from pauserec.model.device import torch_dtype

log = logging.getLogger(__name__)
# 2: the pause count is "n_pauses" (was "k"); cell, train_seed, train_targets added
FORMAT_VERSION = 2
META_FILE = "pauserec.json"
CATALOG_FILE = "items.jsonl"
KNOWN_KEYS = {
    "format_version",
    "variant",
    "stage",
    "cell",
    "n_pauses",
    "backbone",
    "dataset",
    "sid",
    "configs",
    "metrics",
    "timings",
    "git_commit",
    "parent",
    "created",
    "pause_init",
    "pause_token",
    "control",
    "rationale",
    "train_seed",
    "train_targets",
    "layout",
}
VARIANTS = ("base", "plain", "pause", "cot")
STAGES = ("init", *registry.STAGES)
# What every evaluation and probe row carries about the checkpoint it came from, so analysis never
# guesses from paths (see :func:`identity`).
IDENTITY = (
    "ckpt",
    "ckpt_hash",
    "dataset",
    "backbone",
    "variant",
    "stage",
    "cell",
    "n_pauses",
    "pause_init",
    "control",
    "rationale_source",
    "rationale_leaky",
    "train_seed",
    "train_targets",
    "layout",
    "sid_method",
)


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

    @property
    def n_pauses(self) -> int:
        return int(self.meta.get("n_pauses") or 0)

    def identity(self) -> dict[str, Any]:
        return identity(self.meta, self.path)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def save(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write ``ckpt`` to ``path`` atomically (a temp directory renamed into place)."""
    meta = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "git_commit": git_commit(),
        **ckpt.meta,
    }
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
    """``pauserec.json`` of a checkpoint, validated (format version, known keys, key types); a
    version-1 file is read as version 2."""
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise UserError(f"checkpoint {path} is not a directory")
    if not meta_path.is_file():
        raise UserError(f"checkpoint {path} is missing {META_FILE}")
    try:
        meta = files.read_json(meta_path)
    except OSError as err:
        raise UserError(f"checkpoint {path}: cannot read {META_FILE}: {err.strerror}") from None
    except UserError as err:
        raise UserError(f"checkpoint {path}: corrupt {META_FILE}: {err}") from None
    if not isinstance(meta, dict):
        raise UserError(
            f"checkpoint {path}: corrupt {META_FILE}: expected a JSON object, got "
            f"{type(meta).__name__}"
        )
    if meta.get("format_version") == 1:
        meta = _from_v1(meta)
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path}: unknown format version {meta.get('format_version')!r} "
            f"(this workbench reads {FORMAT_VERSION})"
        )
    _check_types(meta, path)
    unknown = sorted(set(meta) - KNOWN_KEYS)
    if unknown:
        warnings.warn(
            f"checkpoint {path}: unknown key(s) in {META_FILE}: {', '.join(unknown)}", stacklevel=2
        )
    return meta


def _from_v1(meta: dict[str, Any]) -> dict[str, Any]:
    out = {**meta, "format_version": FORMAT_VERSION, "n_pauses": meta.get("k") or 0}
    out.pop("k", None)
    stage = out.get("stage", "init")
    cfg = (out.get("configs") or {}).get(stage) or {}
    out.setdefault("train_seed", cfg.get("seed") if isinstance(cfg, dict) else None)
    out.setdefault("cell", stage)
    return out


_TYPES = {
    "variant": str,
    "stage": str,
    "cell": str,
    "n_pauses": int,
    "backbone": str,
    "dataset": dict,
    "sid": dict,
    "configs": dict,
    "metrics": dict,
    "timings": dict,
    "rationale": (dict, type(None)),
    "train_seed": (int, type(None)),
}


def _check_types(meta: dict[str, Any], path: Path) -> None:
    for key, tp in _TYPES.items():
        if (
            key in meta
            and not isinstance(meta[key], tp)
            or (tp is int and isinstance(meta.get(key), bool))
        ):
            want = tp.__name__ if isinstance(tp, type) else " or ".join(t.__name__ for t in tp)
            raise UserError(
                f"checkpoint {path}: {META_FILE} key '{key}' must be {want}, got "
                f"{type(meta[key]).__name__}"
            )
    name = (meta.get("dataset") or {}).get("name")
    if name is not None and not isinstance(name, str):
        raise UserError(
            f"checkpoint {path}: {META_FILE} dataset name must be a string, got {name!r}"
        )
    if meta.get("variant", "base") not in VARIANTS:
        raise UserError(
            f"checkpoint {path}: unknown variant {meta['variant']!r} (known: {', '.join(VARIANTS)})"
        )
    if meta.get("stage", "init") not in STAGES:
        raise UserError(
            f"checkpoint {path}: unknown stage {meta['stage']!r} (known: {', '.join(STAGES)})"
        )
    for key, top in (("n_pauses", registry.MAX_PAUSES), ("train_seed", None)):
        value = meta.get(key)
        if isinstance(value, int) and (value < 0 or top is not None and value > top):
            raise UserError(
                f"checkpoint {path}: {META_FILE} key '{key}' is {value}; it must be "
                f"between 0 and {top or 'any size'}"
            )


def source_paths(path: str | Path) -> list[Path]:
    """What a command reading the checkpoint at ``path`` reads: the checkpoint and its dataset
    (:func:`pauserec.data.source_paths`); an output may overlap none of them."""
    dataset = read_meta(path).get("dataset") or {}
    name = dataset.get("name")
    root = dataset.get("data_root")
    if not isinstance(name, str) or not name:
        return [Path(path)]
    return [Path(path), *data.source_paths(name, root if isinstance(root, str) else None)]


def fingerprint(path: str | Path) -> str:
    """A content hash of a checkpoint: metadata, catalog, config, and the weight files' sizes,
    headers and first MiB (changes whenever the weights do, in practice; reading 540 MB would take
    seconds)."""
    path = Path(path)
    h = hashlib.sha256()
    for name in (META_FILE, CATALOG_FILE, "config.json"):
        p = path / name
        if p.is_file():
            h.update(p.read_bytes())
    for p in sorted(path.glob("model*.safetensors")):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
        with open(p, "rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def _sid_method(cfg: dict[str, Any]) -> str:
    """How the SIDs were made: the build method, or ``index:FILE`` for a published index."""
    source = str(cfg.get("source") or "build")
    if source in ("build", "rq-kmeans"):
        return str(cfg.get("method") or "rq-kmeans")
    return f"index:{Path(source).name}"


def identity(meta: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """The :data:`IDENTITY` columns of a checkpoint (``path`` gives its name and hash)."""
    dataset = meta.get("dataset") or {}
    rationale = meta.get("rationale") or {}
    sid_cfg = (meta.get("sid") or {}).get("config") or {}
    stage = meta.get("stage", "init")
    return {
        "ckpt": Path(path).name if path else "",
        "ckpt_hash": fingerprint(path) if path else "",
        "dataset": str(dataset.get("name") or ""),
        "backbone": str(meta.get("backbone") or ""),
        "variant": meta.get("variant", "base"),
        "stage": stage,
        "cell": meta.get("cell") or stage,
        "n_pauses": int(meta.get("n_pauses") or 0),
        "pause_init": meta.get("pause_init") or "",
        "control": meta.get("control") or "",
        "rationale_source": str(rationale.get("source") or ""),
        "rationale_leaky": bool(rationale.get("leaky")),
        "train_seed": meta.get("train_seed"),
        "train_targets": meta.get("train_targets") or "",
        "layout": meta.get("layout") or "",
        "sid_method": _sid_method(sid_cfg),
    }


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


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> Checkpoint:
    """Load a checkpoint directory: the only loader anyone calls.

    ``dtype``: ``"bf16"``/``"fp16"``/``"fp32"`` (or a torch dtype) for the weights; default fp32.
    ``attn_implementation="eager"`` where attention weights are read (sdpa returns none).
    """
    if isinstance(dtype, str):
        dtype = torch_dtype(dtype)
    path = Path(path)
    meta = read_meta(path)
    _check_files(path)
    catalog = Catalog.read(path / CATALOG_FILE)
    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with _loading(path, "the tokenizer (tokenizer.json, tokenizer_config.json)"):
        tok = AutoTokenizer.from_pretrained(path)
    weights = ", ".join(p.name for p in sorted(path.glob("model*.safetensors")))
    with _loading(path, f"the model (config.json, {weights})"):
        model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    _check_weights(model, info, path, weights)
    model = model.to(device).eval()
    check_consistent(model, tok, catalog, where=str(path))
    return Checkpoint(model, tok, catalog, meta, path)


def _check_weights(model: PreTrainedModel, info: dict[str, Any], path: Path, weights: str) -> None:
    """Every parameter came from the weights file, and every value is finite: transformers only
    warns about a missing tensor (and initialises it afresh): a model nobody trained."""
    problems = {
        "missing": info.get("missing_keys"),
        "unexpected": info.get("unexpected_keys"),
        "wrongly shaped": info.get("mismatched_keys"),
    }
    for what, keys in problems.items():
        if keys:
            names = sorted(k if isinstance(k, str) else str(k[0]) for k in keys)
            raise UserError(
                f"checkpoint {path}: {weights} has {len(names)} {what} tensor(s), e.g. "
                f"{names[0]}; the weights are incomplete or belong to another model"
            )
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"checkpoint {path}: tensor {name} in {weights} holds NaN or infinite values"
            )


@contextlib.contextmanager
def _loading(path: Path, what: str) -> Iterator[None]:
    """A library error while loading ``what`` of a checkpoint becomes one line naming the files."""
    try:
        yield
    except UserError:
        raise
    # corrupt files raise library-specific types (SafetensorError)
    except Exception as err:  # noqa: BLE001
        if type(err).__name__ == "OutOfMemoryError":
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise UserError(f"checkpoint {path}: cannot load {what}: {first}") from None


def check_consistent(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    catalog: Catalog,
    where: str = "checkpoint",
) -> None:
    """Every catalog SID token (and pause/think) is one token of the tokenizer, with an embedding
    row."""
    vocab = tok.get_vocab()
    needed = catalog.sid_tokens() + [tokens.PAUSE, *tokens.THINK_TOKENS]
    missing = [t for t in needed if t not in vocab]
    if missing:
        raise UserError(
            f"{where}: tokenizer does not match the catalog: {len(missing)} token(s) missing, "
            f"e.g. {missing[0]}"
        )
    rows = model.get_input_embeddings().weight.shape[0]
    too_big = max(vocab[t] for t in needed)
    if too_big >= rows:
        raise UserError(
            f"{where}: tokenizer has token id {too_big} "
            f"but the model has only {rows} embedding rows"
        )


def dataset_of(ckpt: Checkpoint) -> data.Dataset:
    """The dataset a checkpoint was built on (``meta["dataset"]``), checked against its catalog."""
    spec = ckpt.meta.get("dataset") or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise UserError(f"checkpoint {ckpt.path} names no dataset in its metadata")
    ds = data.load_dataset(spec["name"], spec.get("data_root"))
    if [it.item_id for it in ds.items] != [it.item_id for it in ckpt.catalog.items]:
        raise UserError(
            f"checkpoint {ckpt.path}: its catalog does not match dataset '{spec['name']}'"
        )
    return ds
