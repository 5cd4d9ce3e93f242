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
from onnxship.core.env import INTEGER_CLASSES, X86_INTEGER_CLASSES

# Integer classes (`onnxship.core.env.integer_class`) whose U8S8 kernels multiply u8 x s8 pairs
# with VPMADDUBSW: the sum of two products is kept in int16 and saturates (255 x 127 x 2 =
# 64770 > 32767). ORT documents it; measured on an AVX2 EPYC with onnxruntime 1.32: QDQ
# U8S8 and QDQ S8S8 (ORT turns int8 activations into uint8 on x86) per-channel minmax put a
# 3x3 conv 13 % of the output span off the unfused QDQ reference; their reduce_range twins,
# U8U8 and QOperator S8S8 matched it exactly. VNNI/AMX and arm64 accumulate in int32: exact.
SATURATING_CLASSES = frozenset({"avx512", "avx2", "sse"})
EXACT_CLASSES = tuple(c for c in INTEGER_CLASSES if c not in SATURATING_CLASSES | {"unknown"})


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

    @property
    def may_saturate(self) -> bool:
        """True when, without VNNI, ORT runs this recipe's integer products through the
        saturating u8 x s8 kernel: U8S8, and QDQ S8S8 (converted to U8S8 on x86), with full
        8-bit weights. reduce_range (7-bit weights) and U8U8 cannot saturate."""
        if self.reduce_range:
            return False
        if self.types is QuantTypes.U8S8:
            return True
        return self.types is QuantTypes.S8S8 and self.format is QuantFormatChoice.QDQ

    def safe_on(self, integer_class: str) -> bool:
        """True when this recipe computes the exact quantized arithmetic on `integer_class`."""
        if integer_class == "unknown":
            return not self.may_saturate
        return not (self.may_saturate and integer_class in SATURATING_CLASSES)

    def safe_integer_classes(self) -> list[str]:
        """The known integer classes on which this recipe is exact."""
        return [c for c in INTEGER_CLASSES if c != "unknown" and self.safe_on(c)]

    @property
    def risk(self) -> str:
        """What this recipe risks on other CPUs, in words (recorded with every INT8 file)."""
        what = f"{self.types.value.upper()} {self.format.value.upper()}"
        if self.may_saturate:
            return (
                f"{what} without reduce_range: exact on VNNI, AMX and arm64, may saturate on "
                "AVX2, AVX-512 without VNNI and SSE (int16 sums of u8 x s8 pairs, VPMADDUBSW)"
            )
        why = "7-bit weights" if self.reduce_range else "no u8 x s8 pair products"
        return f"{what}{' with reduce_range' if self.reduce_range else ''}: exact on every " + (
            f"integer class ({why}, so no int16 saturation)"
        )

    def exact_twin(self) -> Recipe:
        """This recipe if it cannot saturate, else the same recipe with reduce_range."""
        return dataclasses.replace(self, reduce_range=True) if self.may_saturate else self


# Presets, in the order `auto` tries them. The grid is deliberately small (each candidate costs
# a quantization, a validation pass and a latency run): the axes that matter for speed on x86
# (scope, format, per-channel, types, reduce_range) with MinMax, plus Entropy and Percentile
# points for accuracy. On a CPU without VNNI, U8S8 can saturate (VPMADDUBSW): `auto_grid` swaps
# those for their `-rr` twins there.
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


# Added to the grid where U8S8 may saturate: U8U8 on every quantizable op (exact everywhere).
SATURATION_FREE_EXTRAS: tuple[Recipe, ...] = (Recipe(_Q, _U8U8, False, False, _MM, _ALL),)


def auto_grid(integer_class: str, *, portable: bool = False) -> tuple[Recipe, ...]:
    """The recipes `auto` searches on a CPU of `integer_class`.

    Every preset that is exact on the class (on every x86 class with `portable`) is kept; one
    that may saturate there is replaced by its reduce_range twin, and U8U8 on every op is added.
    Saturating recipes are dropped rather than kept when they measure within budget: their
    integer kernel is the same as their reduce_range twin's (same speed on the class), and a
    validation set passing says nothing about inputs that saturate later.
    """
    classes = (*X86_INTEGER_CLASSES, integer_class) if portable else (integer_class,)
    grid: list[Recipe] = []
    replaced = False
    for recipe in PRESETS:
        if all(recipe.safe_on(c) for c in classes):
            chosen = recipe
        else:
            chosen, replaced = recipe.exact_twin(), True
        if chosen not in grid:
            grid.append(chosen)
    if replaced:
        grid += [r for r in SATURATION_FREE_EXTRAS if r not in grid]
    return tuple(grid)


def recipes_for(
    choice: str, integer_class: str | None = None, *, portable: bool = False
) -> tuple[Recipe, ...]:
    """`auto` -> the grid for `integer_class` (`auto_grid`; None: the presets as they are);
    a name -> that one recipe (with `portable`, it must be exact on every x86 class)."""
    if choice.strip().lower() == AUTO:
        if integer_class is None and not portable:
            return PRESETS
        return auto_grid(integer_class or "unknown", portable=portable)
    recipe = parse_recipe(choice)
    if portable and not all(recipe.safe_on(c) for c in X86_INTEGER_CLASSES):
        raise CalibrateError(
            f"recipe {recipe.name!r} is not portable: {recipe.risk}; use "
            f"{recipe.exact_twin().name!r} (reduce_range), a u8u8 recipe, or drop --portable"
        )
    return (recipe,)


def exact_recipe_on(name: str, integer_class: str) -> Recipe:
    """The recipe `name` if it is exact on `integer_class`, else its reduce_range twin."""
    recipe = parse_recipe(name)
    return recipe if recipe.safe_on(integer_class) else recipe.exact_twin()
