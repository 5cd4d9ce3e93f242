"""Command-line flags declared on the config dataclasses they fill (stdlib only).

A config field carries its flag in its metadata, so the flag's name, help and value parser
sit beside the field and its default, in one place:

    epochs: float = field(default=5.0, metadata=flag("--epochs", "passes (default: {default:g})",
                                                     type=positive_float))

A field holding a nested config names the flags of the nested fields it exposes, with help
worded for this parent (the same `SgdConfig.lr` is "--lr" under train and distill):

    sgd: SgdConfig = field(default=..., metadata=nested(lr=Flag("--lr", "peak LR ...")))

`onnxship.commands.common.add_config_flags` adds them to a parser, with the default read from
a config instance and substituted for `{default}` in the help; `config_from_args` builds the
config back from the parsed flags. The value parsers below raise `argparse.ArgumentTypeError`,
which argparse turns into a one-line usage error (exit 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

FLAG = "flag"
NESTED = "flags"


class _Unset:
    def __repr__(self) -> str:
        return "FROM_CONFIG"


FROM_CONFIG: Any = _Unset()


@dataclass(frozen=True)
class Flag:
    """One option of the CLI and how its value reaches the config field.

    help: argparse help; `{default}` (with an optional format spec) is the default shown.
    type / metavar / choices / nargs / const / dest: as in `add_argument`; `choices` defaults
      to the values of an enum-typed field, `dest` to the option's name.
    action: "store_true" for a switch, "append" for a repeatable flag (collected into a tuple).
    invert: a "--no-x" switch for a field that defaults to True (the field gets `not value`).
    default: the parser's default when it is not the config's (None: the command resolves it).
    """

    option: str
    help: str
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    action: str | None = None
    nargs: str | None = None
    const: Any = None
    dest: str | None = None
    invert: bool = False
    default: Any = FROM_CONFIG

    @property
    def key(self) -> str:
        """The attribute of the parsed namespace."""
        return self.dest or self.option.lstrip("-").replace("-", "_")


def flag(option: str, help: str, **kwargs: Any) -> Mapping[str, Flag]:
    """Field metadata declaring the field's flag."""
    return {FLAG: Flag(option, help, **kwargs)}


def nested(**flags: Flag) -> Mapping[str, Mapping[str, Flag]]:
    """Field metadata of a nested config: its fields' flags, by field name, in help order."""
    return {NESTED: flags}


def _checked(
    text: str,
    convert: Callable[[str], T],
    expected: str,
    ok: Callable[[T], bool],
    bad: str | None = None,
) -> T:
    """`convert(text)`, refused with "expected EXPECTED, got TEXT" when it does not convert,
    and with "expected BAD, got VALUE" when `ok(value)` is false (BAD defaults to EXPECTED)."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {bad or expected}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _checked(text, int, "a positive integer", lambda v: v >= 1, "a positive integer (>= 1)")


def non_negative_int(text: str) -> int:
    return _checked(text, int, "an integer >= 0", lambda v: v >= 0)


def number(text: str) -> float:
    """Any float; the library checks the range, so its message can explain the meaning."""
    return _checked(text, float, "a number", _any_value)


def positive_float(text: str) -> float:
    return _checked(text, float, "a positive number", lambda v: v > 0, "a positive number (> 0)")


def fraction(text: str) -> float:
    """A number in [0, 1) (budgets like --max-drop 0.003)."""
    return _checked(text, float, "a fraction in [0, 1)", lambda v: 0 <= v < 1)


def unit_interval(text: str) -> float:
    """A number in [0, 1] (agreement thresholds like --min-agreement 0.999)."""
    return _checked(text, float, "a fraction in [0, 1]", lambda v: 0 <= v <= 1)


def op_types(text: str) -> tuple[str, ...]:
    """'Gemm,Softmax' -> ('Gemm', 'Softmax'): ONNX op type names."""
    ops = tuple(op.strip() for op in text.split(",") if op.strip())
    if not ops or any(not op.replace("_", "").isalnum() for op in ops):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ONNX op types like Gemm,Softmax, got {text!r}"
        )
    return ops


def _csv(text: str, convert: Callable[[str], T]) -> tuple[T, ...]:
    """'1,64' -> (convert('1'), convert('64')); empty items skipped; ValueError propagates."""
    return tuple(convert(v) for v in text.split(",") if v.strip())


def int_csv(text: str) -> tuple[int, ...]:
    """'1,64' -> (1, 64), no range check (for configs that check ranges with a clearer error)."""
    return _checked(text, lambda s: _csv(s, int), "comma-separated integers like 1,64", _any_value)


def int_list(text: str) -> tuple[int, ...]:
    """'1,64' -> (1, 64); every value >= 1."""
    values = int_csv(text)
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers like 1,64, got {text!r}"
        )
    return values


def float_csv(text: str) -> tuple[float, ...]:
    return _checked(text, lambda s: _csv(s, float), "comma-separated numbers", _any_value)


def float_list(text: str) -> tuple[float, ...]:
    """'0.1307' or '0.485,0.456,0.406' -> floats, one per input channel."""
    values = _checked(
        text,
        lambda s: _csv(s, float),
        "comma-separated numbers (one per input channel) like 0.1307",
        _any_value,
    )
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def _any_value(value: object) -> bool:
    """Any value is in range."""
    return True


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def dim_value(text: str) -> tuple[str, int]:
    key, value = key_value(text)
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=INTEGER, got {text!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"dimension {key} must be >= 1, got {size}")
    return key, size


Value = TypeVar("Value")


def sorted_kwargs(
    kwargs: Mapping[str, Value] | Iterable[tuple[str, Value]],
) -> tuple[tuple[str, Value], ...]:
    """A model factory's keyword arguments (a mapping or (name, value) pairs) as (name, value)
    pairs sorted by name: hashable, so a frozen config can hold them."""
    items = kwargs.items() if isinstance(kwargs, Mapping) else kwargs
    return tuple(sorted((str(k), v) for k, v in items))


def width_value(text: str) -> tuple[str, int]:
    """'hidden=64' -> ('hidden', 64): one width of an architecture."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=INT like hidden=64, got {text!r}")
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=INT like hidden=64, got {text!r} ({value!r} is not an integer)"
        ) from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"width {key}={size} must be >= 1")
    return key.strip(), size


def parse_ratios(text: str) -> float | dict[str, float]:
    """'0.25' (every width) or 'conv_channels=0.25,hidden=0.3'. Range is checked by the library."""
    text = text.strip()
    if "=" not in text:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a fraction like 0.25 or NAME=FRACTION pairs like "
                f"conv_channels=0.25,hidden=0.3, got {text!r}"
            ) from None
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected NAME=FRACTION pairs like conv_channels=0.25,hidden=0.3, got {text!r}"
            ) from None
    return out
