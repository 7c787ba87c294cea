"""Plain dataclass configs, TOML presets and CLI flags that override single fields.

Unknown keys and wrong types are errors (a :class:`UserError`), never silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from pauserec.errors import UserError
from pauserec.registry import MAX_PAUSES, STAGES

T = TypeVar("T")
log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# What a preset may hold; an unknown (e.g. misspelled) section is an error, like an unknown key.
PROBE_NAMES = ("alignment", "attention", "verbalization", "rationale")
SECTIONS = (
    "sid",
    "init",
    "pipeline",
    "experiment",
    "evaluate",
    "baselines",
    "gpu",
    *(f"train.{s}" for s in STAGES),
    *(f"probes.{p}" for p in PROBE_NAMES),
)
# The field metadata this module reads besides "help" (see arg, check_value, build_parser).
FIELD_KEYS = frozenset(
    {"min", "max", "gt", "choices", "min_items", "positional", "flag", "aliases", "deprecated"}
)


def arg(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: typing.Callable[[], Any] | None = None,
    **meta: Any,
) -> Any:
    """A field of a command's arguments dataclass: ``n: int = arg(64, "users", min=1)``.

    ``help`` is the flag's ``--help`` line, where ``{choices}`` lists ``choices`` ("" left out);
    ``factory`` replaces ``default`` for a mutable one (``factory=list``). ``meta`` holds what
    :func:`check_value` checks (``min``, ``max``, ``gt``, ``choices``, ``min_items``) and how
    :func:`build_parser` spells the flag (``positional``, ``flag``, ``aliases``, ``deprecated``);
    any other key is an error.
    """
    unknown = set(meta) - FIELD_KEYS
    if unknown:
        raise TypeError(f"arg(): unknown key(s) {sorted(unknown)} (known: {sorted(FIELD_KEYS)})")
    listed = [str(c) for c in meta.get("choices", ()) if c != ""]  # "": none of them
    help = help.replace("{choices}", ", ".join(listed))
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help, **meta})
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def pauses_arg(default: int | None, help: str) -> Any:
    """The pause count of training and evaluation: ``--n-pauses`` (formerly ``--k``), 0 to
    ``MAX_PAUSES``."""
    return arg(default, help, min=0, max=MAX_PAUSES, deprecated=("--k",))


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; allow only lossless conversions (int ->
    float)."""
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
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):  # a CLI flag: "1,3" -> [1, 3]
            value = [_parse_scalar(v.strip(), item_tp, key) for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in checked.items():
        check_value(key, value, fields[key].metadata)
    if base is not None:
        return dataclasses.replace(base, **checked)
    return cls(**checked)


def check_value(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    """A field's allowed range (``metadata`` ``min``/``max`` inclusive, ``gt`` exclusive) and
    ``choices``, for a scalar or every item of a list (``min_items``: how short the list may be);
    the message names the flag and what is allowed."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, (list, tuple)) and len(value) < meta.get("min_items", 0):
        raise UserError(f"{flag}: needs at least {meta['min_items']} value(s), got {len(value)}")
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item is None:
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise UserError(f"{flag}: {item!r} is not a finite number")
        if "gt" in meta and item <= meta["gt"]:
            raise UserError(f"{flag}: {item!r} must be greater than {meta['gt']!r}")
        if "min" in meta and item < meta["min"]:
            raise UserError(f"{flag}: {item!r} is below the allowed minimum {meta['min']!r}")
        if "max" in meta and item > meta["max"]:
            raise UserError(f"{flag}: {item!r} is above the allowed maximum {meta['max']!r}")
        if "choices" in meta and item not in meta["choices"]:
            raise UserError(
                f"{flag}: unknown value {item!r} (known: {', '.join(map(str, meta['choices']))})"
            )


Sections = str | tuple[str, ...] | None


def build(
    cls: type[T], values: dict[str, Any], preset: str | None = None, section: Sections = None
) -> T:
    """``cls`` from ``values`` over the ``[section]`` of ``preset`` (when both are given; several
    sections merge in order, a later one winning): what drivers call instead of building argv lists.
    Unknown keys, wrong types and out-of-range values are errors."""
    base: dict[str, Any] = {}
    if preset and section:
        loaded = load_preset(preset)
        for name in (section,) if isinstance(section, str) else section:
            base |= preset_section(loaded, name)
    return from_dict(cls, {**base, **values})


def load_preset(name: str) -> dict[str, Any]:
    """A preset by name (``configs/NAME.toml``) or by path to a TOML file."""
    path = Path(name)
    if not path.suffix:
        path = CONFIG_DIR / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise UserError(f"unknown preset '{name}' (known: {', '.join(known)})")
    try:
        preset = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as err:
        raise UserError(f"preset {path} cannot be read: {err or 'nested too deeply'}") from None
    unknown = sorted(set(_section_names(preset)) - set(SECTIONS))
    if unknown:
        raise UserError(
            f"preset {path}: unknown section(s) {', '.join(f'[{u}]' for u in unknown)} "
            f"(known: {', '.join(SECTIONS)})"
        )
    return preset


def check_preset(name: str, schemas: typing.Mapping[str, type]) -> None:
    """Every section of the preset ``name`` that ``schemas`` names, against its class (section ->
    the arguments dataclass of the command that reads it): unknown keys, wrong types and
    out-of-range values are errors before any work -- also in the section of a stage that runs
    last."""
    preset = load_preset(name)
    for section in _section_names(preset):
        if section in schemas:
            try:
                from_dict(schemas[section], preset_section(preset, section))
            except UserError as err:
                raise UserError(f"preset {name} [{section}]: {err}") from None


def _section_names(preset: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the tables that hold values (``train.sft``), not of their parents
    (``train``)."""
    names = []
    for key, value in preset.items():
        if isinstance(value, dict):
            inner = _section_names(value, f"{prefix}{key}.")
            holds = any(not isinstance(v, dict) for v in value.values())
            names += inner + ([f"{prefix}{key}"] if holds or not inner else [])
        elif not prefix:
            names.append(key)  # a bare top-level key is not a section either
    return names


def preset_section(preset: dict[str, Any], section: str) -> dict[str, Any]:
    """``preset["a"]["b"]`` for ``section="a.b"``; missing sections are empty."""
    node: Any = preset
    for part in section.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return {k: v for k, v in node.items() if not isinstance(v, dict)}


class _Parser(argparse.ArgumentParser):
    """No abbreviated flags: ``--over`` must not be read as ``--overwrite``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    # argparse's own errors become one line, exit 2
    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{self.prog}: {message}")


def build_parser(cls, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per dataclass field; field ``metadata["help"]`` is its
    help."""
    parser = _Parser(prog=prog, description=description or (cls.__doc__ or "").strip())
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        help_ = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if f.metadata.get("positional"):
            nargs = "+" if typing.get_origin(tp) in (list, tuple) else None
            parser.add_argument(f.name, nargs=nargs, help=help_)
            continue
        # e.g. --from for from_ckpt
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        # other names keep working; a deprecated one warns (see parse_args) and goes in the next
        # release
        flags = [flag, *f.metadata.get("aliases", ()), *f.metadata.get("deprecated", ())]
        if tp is bool:
            parser.add_argument(
                *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_
            )
        else:
            parser.add_argument(
                *flags, dest=f.name, default=None, metavar=f.name.upper(), help=help_
            )
    return parser


def parse_args(cls: type[T], argv: list[str] | None, prog: str, section: Sections = None) -> T:
    """Parse CLI flags into ``cls``; ``--preset P`` (a field of ``cls``) supplies defaults first. A
    deprecated flag (field metadata ``deprecated``) still works and logs which flag replaces it."""
    for f in dataclasses.fields(cls):
        for old in f.metadata.get("deprecated", ()):
            if any(a == old or a.startswith(old + "=") for a in argv or []):
                new = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
                log.warning(
                    "%s: %s is deprecated and goes in the next release: use %s", prog, old, new
                )
    ns = vars(build_parser(cls, prog).parse_args(argv))
    given = {k: v for k, v in ns.items() if v is not None}
    types_ = _field_types(cls)
    for key, value in list(given.items()):
        if isinstance(value, str) and types_[key] is not str:
            given[key] = _parse_scalar(value, types_[key], key)
    preset = given.get("preset")
    if preset is None:  # the dataclass's default preset supplies the section too
        preset = next((f.default for f in dataclasses.fields(cls) if f.name == "preset"), None)
    return build(cls, given, preset if isinstance(preset, str) else None, section)


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
