"""Frozen dataclasses from TOML tables and back.

Configs are typed dataclasses owned by the library packages; this module turns a TOML table into
one (unknown keys named, wrong types named, enums by value) and an effective config back into
TOML (`onnxship run --print-config`), so any run can be written out as the file that
reproduces it.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

from onnxship.errors import PipelineError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return "one of " + ", ".join(repr(m.value) for m in tp)
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except PipelineError as exc:
                errors.append(str(exc))
        raise PipelineError(f"{where}: expected {_type_name(tp)}, found {value!r}")
    if origin in (tuple, list, typing.Sequence) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise PipelineError(f"{where}: expected a list, found {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise PipelineError(f"{where}: expected {len(args)} values, found {len(value)}")
            return tuple(
                _convert(v, a, f"{where}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        inner = args[0] if args else Any
        converted = [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return converted if origin is list else tuple(converted)
    if origin in (dict, Mapping, typing.Mapping) or tp in (dict,):
        if not isinstance(value, Mapping):
            raise PipelineError(f"{where}: expected a table, found {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise PipelineError(f"{where}: expected a table, found {value!r}")
        return dataclass_from_mapping(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value == member.value or (
                isinstance(value, str) and value.lower() == str(member.value).lower()
            ):
                return member
        raise PipelineError(f"{where}: expected {_type_name(tp)}, found {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise PipelineError(f"{where}: expected true or false, found {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PipelineError(f"{where}: expected an integer, found {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PipelineError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise PipelineError(f"{where}: expected a string, found {value!r}")
        return value
    if tp in (Path, os.PathLike):
        if not isinstance(value, str):
            raise PipelineError(f"{where}: expected a path string, found {value!r}")
        return Path(value)
    return value


def dataclass_from_mapping(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """Build `cls` from a TOML table: unknown keys and wrong types are errors naming the key."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PipelineError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _convert(value, hints[name], f"{where}.{name}") for name, value in values.items()
    }
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{where}: {exc}") from exc
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except PipelineError:
            raise
        except Exception as exc:  # library errors (ModelsError, ...) carry a fix already
            raise PipelineError(f"{where}: {exc}") from exc
    return obj


def _toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_scalar(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_scalar(v)}" for k, v in value.items()) + " }"
    raise PipelineError(f"cannot write {value!r} as TOML")


def to_toml(data: Mapping[str, Any], *, prefix: str = "") -> str:
    """Write a JSON-able mapping (from `jsonable(config)`) as TOML; None values are omitted
    (TOML has no null: an omitted key means "the default")."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in data.items():
        if value is None:
            lines.append(f"# {key}: default (unset)")
        elif isinstance(value, Mapping) and value:
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_scalar(value)}")
    out = "\n".join(lines)
    for key, table in tables:
        name = f"{prefix}{key}"
        body = to_toml(table, prefix=f"{name}.")
        out += f"\n\n[{name}]\n{body}" if out else f"[{name}]\n{body}"
    return out.strip() + "\n" if not prefix else out.strip()
