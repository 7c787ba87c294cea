"""Plain dataclass configs, TOML presets and CLI flags that override single fields.

Unknown keys and wrong types are errors (a :class:`UserError`), never silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from pauserec.errors import UserError

T = TypeVar("T")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; allow only lossless conversions (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError:
                pass
        raise UserError(f"config key '{key}': {value!r} is not of type {tp}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, key) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str) and isinstance(value, tp) and not isinstance(value, bool):
        return value
    raise UserError(f"config key '{key}': expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(cls: type[T], values: dict[str, Any], base: T | None = None) -> T:
    """Build ``cls`` from ``values`` (on top of ``base`` if given); unknown keys are errors."""
    known = _field_types(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(
            f"unknown config key(s) {', '.join(unknown)} for {cls.__name__} "
            f"(known: {', '.join(sorted(known))})"
        )
    checked = {k: _coerce(v, known[k], k) for k, v in values.items()}
    if base is not None:
        return dataclasses.replace(base, **checked)
    return cls(**checked)


def load_preset(name: str) -> dict[str, Any]:
    """A preset by name (``configs/NAME.toml``) or by path to a TOML file."""
    path = Path(name)
    if not path.suffix:
        path = CONFIG_DIR / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise UserError(f"unknown preset '{name}' (known: {', '.join(known)})")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"preset {path} is not valid TOML: {err}") from None


def preset_section(preset: dict[str, Any], section: str) -> dict[str, Any]:
    """``preset["a"]["b"]`` for ``section="a.b"``; missing sections are empty."""
    node: Any = preset
    for part in section.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return {k: v for k, v in node.items() if not isinstance(v, dict)}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # argparse's own errors become one line, exit 2
        raise UserError(f"{self.prog}: {message}")


def build_parser(cls, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per dataclass field; field ``metadata["help"]`` is its help."""
    parser = _Parser(prog=prog, description=description or (cls.__doc__ or "").strip())
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        help_ = f.metadata.get("help", "")
        if f.metadata.get("positional"):
            nargs = "+" if typing.get_origin(tp) in (list, tuple) else None
            parser.add_argument(f.name, nargs=nargs, help=help_)
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")  # e.g. --from for from_ckpt
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_)
    return parser


def parse_args(cls: type[T], argv: list[str] | None, prog: str, section: str | None = None) -> T:
    """Parse CLI flags into ``cls``; ``--preset P`` (a field of ``cls``) supplies defaults first."""
    ns = vars(build_parser(cls, prog).parse_args(argv))
    given = {k: v for k, v in ns.items() if v is not None}
    types_ = _field_types(cls)
    for key, value in list(given.items()):
        if isinstance(value, str) and types_[key] is not str:
            given[key] = _parse_scalar(value, types_[key], key)
    base: dict[str, Any] = {}
    if section and given.get("preset"):
        base = preset_section(load_preset(given["preset"]), section)
    return from_dict(cls, {**base, **given})


def _parse_scalar(text: str, tp: Any, key: str) -> Any:
    """Turn a CLI string into the field's type before the common type check."""
    target = tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        non_none = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() == "none":
            return None
        target = non_none[0]
    try:
        if target is int:
            return int(text)
        if target is float:
            return float(text)
    except ValueError:
        raise UserError(f"--{key.replace('_', '-')}: {text!r} is not a {target.__name__}") from None
    return text


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-ready values (tuples become lists)."""
    return json_ready(dataclasses.asdict(obj))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
