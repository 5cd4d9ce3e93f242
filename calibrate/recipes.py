"""Quantization recipes: typed options for everything `quantize_static` offers, and their names.

A recipe is one point of the grid format x types x per-channel x reduce_range x calibration
method x scope. Its name spells those choices, e.g. `qdq-u8s8-perchannel-minmax` or
`qop-u8s8-pertensor-rr-entropy-linear`, so `--recipe NAME` accepts any point of the grid (not
only the named presets) and a record read months later says exactly what was done.

    name := FORMAT "-" TYPES "-" GRANULARITY ["-rr"] "-" METHOD ["-linear"]
    FORMAT := qdq | qop          TYPES := u8s8 | s8s8 | u8u8
    GRANULARITY := pertensor | perchannel          METHOD := minmax | entropy | percentile
    -linear: quantize only Gemm / MatMul (the nn.Linear layers); convolutions, pooling and
             everything else stay in float. Without it every op ORT can quantize is quantized.

Why a scope axis: on x86 ORT's QLinearConv is slow for convolutions with one input channel
(im2col with K = 9): measured 4x slower than the float NCHWc Conv for SimpleCNN's first layer,
which makes the fully quantized model slower than FP32 at batch 64 while the INT8 Gemm alone is
3.6x faster than the float one. Which scope wins depends on the model and the CPU, so it is
searched, not assumed.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

from onnxship.calibrate.errors import CalibrateError


class QuantFormatChoice(enum.Enum):
    QDQ = "qdq"  # QuantizeLinear/DequantizeLinear pairs around float ops (ORT fuses them)
    QOPERATOR = "qop"  # quantized operators (QLinearConv, QLinearMatMul, ...)

    def to_ort(self) -> Any:
        from onnxruntime.quantization import QuantFormat

        return QuantFormat.QDQ if self is QuantFormatChoice.QDQ else QuantFormat.QOperator


class QuantTypes(enum.Enum):
    """Activation and weight integer types: U8S8 = uint8 activations, int8 weights, ..."""

    U8S8 = "u8s8"
    S8S8 = "s8s8"
    U8U8 = "u8u8"

    def to_ort(self) -> tuple[Any, Any]:
        """(activation_type, weight_type) as onnxruntime QuantType values."""
        from onnxruntime.quantization import QuantType

        u8, s8 = QuantType.QUInt8, QuantType.QInt8
        return {
            QuantTypes.U8S8: (u8, s8),
            QuantTypes.S8S8: (s8, s8),
            QuantTypes.U8U8: (u8, u8),
        }[self]


class QuantScope(enum.Enum):
    ALL = "all"  # every op type ORT can quantize
    LINEAR = "linear"  # only Gemm / MatMul

    def op_types(self) -> list[str] | None:
        """`op_types_to_quantize` for quantize_static (None = ORT's full registry)."""
        return None if self is QuantScope.ALL else list(LINEAR_OPS)


LINEAR_OPS = ("Gemm", "MatMul")


class CalibMethod(enum.Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"

    def to_ort(self) -> Any:
        from onnxruntime.quantization import CalibrationMethod

        return {
            CalibMethod.MINMAX: CalibrationMethod.MinMax,
            CalibMethod.ENTROPY: CalibrationMethod.Entropy,
            CalibMethod.PERCENTILE: CalibrationMethod.Percentile,
        }[self]

    @property
    def uses_histograms(self) -> bool:
        """Entropy and Percentile keep intermediate outputs to build histograms (memory-hungry)."""
        return self is not CalibMethod.MINMAX


@dataclass(frozen=True)
class Recipe:
    """One static-quantization recipe (the options passed to `quantize_static`)."""

    format: QuantFormatChoice = QuantFormatChoice.QDQ
    types: QuantTypes = QuantTypes.U8S8
    per_channel: bool = True
    reduce_range: bool = False
    method: CalibMethod = CalibMethod.MINMAX
    scope: QuantScope = QuantScope.ALL

    @property
    def name(self) -> str:
        parts = [
            self.format.value,
            self.types.value,
            "perchannel" if self.per_channel else "pertensor",
        ]
        if self.reduce_range:
            parts.append("rr")
        parts.append(self.method.value)
        if self.scope is QuantScope.LINEAR:
            parts.append("linear")
        return "-".join(parts)

    def options(self) -> dict[str, Any]:
        return {
            "format": self.format.value,
            "activation_type": {"u8s8": "uint8", "s8s8": "int8", "u8u8": "uint8"}[self.types.value],
            "weight_type": {"u8s8": "int8", "s8s8": "int8", "u8u8": "uint8"}[self.types.value],
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "calibration_method": self.method.value,
            "scope": self.scope.value,
        }

    def with_format(self, fmt: QuantFormatChoice) -> Recipe:
        return dataclasses.replace(self, format=fmt)


# Presets, in the order `auto` tries them. The grid is deliberately small (each candidate costs
# a quantization, a validation pass and a latency run): the axes that matter for speed on x86
# (scope, format, per-channel, types, reduce_range) with MinMax, plus Entropy and Percentile
# points for accuracy. On a CPU without VNNI, U8S8 can saturate (VPMADDUBSW) -> the `-rr` points.
_Q, _O = QuantFormatChoice.QDQ, QuantFormatChoice.QOPERATOR
_MM, _EN, _PC = CalibMethod.MINMAX, CalibMethod.ENTROPY, CalibMethod.PERCENTILE
_ALL, _LIN = QuantScope.ALL, QuantScope.LINEAR
_U8S8, _S8S8, _U8U8 = QuantTypes.U8S8, QuantTypes.S8S8, QuantTypes.U8U8
PRESETS: tuple[Recipe, ...] = (
    Recipe(_Q, _U8S8, True, False, _MM, _ALL),  # ORT's documented CPU default
    Recipe(_Q, _U8S8, False, False, _MM, _ALL),
    Recipe(_Q, _U8S8, True, True, _MM, _ALL),
    Recipe(_Q, _S8S8, True, False, _MM, _ALL),
    Recipe(_O, _U8S8, True, False, _MM, _ALL),
    Recipe(_Q, _U8S8, True, False, _MM, _LIN),
    Recipe(_Q, _U8S8, False, False, _MM, _LIN),
    Recipe(_Q, _U8S8, True, True, _MM, _LIN),
    Recipe(_Q, _S8S8, True, False, _MM, _LIN),
    Recipe(_Q, _U8U8, False, False, _MM, _LIN),
    Recipe(_O, _U8S8, True, False, _MM, _LIN),
    Recipe(_O, _U8S8, False, False, _MM, _LIN),
    Recipe(_Q, _U8S8, True, False, _EN, _LIN),
    Recipe(_Q, _U8S8, True, False, _PC, _LIN),
)
PRESET_NAMES: tuple[str, ...] = tuple(r.name for r in PRESETS)
AUTO = "auto"
GRAMMAR = (
    "FORMAT-TYPES-GRANULARITY[-rr]-METHOD[-linear] with FORMAT qdq|qop, TYPES u8s8|s8s8|u8u8, "
    "GRANULARITY pertensor|perchannel, METHOD minmax|entropy|percentile"
)


def parse_recipe(name: str) -> Recipe:
    """A recipe from its name (any grid point); an unknown name lists the presets."""
    parts = name.strip().lower().split("-")
    scope = QuantScope.ALL
    if parts and parts[-1] == "linear":
        scope = QuantScope.LINEAR
        parts = parts[:-1]
    try:
        if len(parts) not in (4, 5) or (len(parts) == 5 and parts[3] != "rr"):
            raise ValueError(name)
        fmt = QuantFormatChoice(parts[0])
        types = QuantTypes(parts[1])
        if parts[2] not in ("pertensor", "perchannel"):
            raise ValueError(parts[2])
        method = CalibMethod(parts[-1])
    except ValueError:
        raise CalibrateError(
            f"unknown recipe {name!r}; known recipes: {AUTO}, {', '.join(PRESET_NAMES)} "
            f"(or any name of the form {GRAMMAR})"
        ) from None
    return Recipe(fmt, types, parts[2] == "perchannel", len(parts) == 5, method, scope)


def recipes_for(choice: str) -> tuple[Recipe, ...]:
    """`auto` -> the presets (searched); a name -> that one recipe."""
    if choice.strip().lower() == AUTO:
        return PRESETS
    return (parse_recipe(choice),)
