"""Recipe names <-> typed options, and the error for an unknown name."""

from __future__ import annotations

import pytest
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.recipes import (
    AUTO,
    PRESET_NAMES,
    PRESETS,
    CalibMethod,
    QuantFormatChoice,
    QuantScope,
    QuantTypes,
    Recipe,
    parse_recipe,
    recipes_for,
)


@pytest.mark.parametrize("recipe", PRESETS, ids=PRESET_NAMES)
def test_parse_recipe_round_trips_every_preset(recipe: Recipe) -> None:
    assert parse_recipe(recipe.name) == recipe


def test_parse_recipe_accepts_any_grid_point() -> None:
    recipe = parse_recipe("QOP-U8U8-pertensor-rr-entropy-linear")
    assert recipe == Recipe(
        QuantFormatChoice.QOPERATOR,
        QuantTypes.U8U8,
        per_channel=False,
        reduce_range=True,
        method=CalibMethod.ENTROPY,
        scope=QuantScope.LINEAR,
    )
    assert recipe.options() == {
        "format": "qop",
        "activation_type": "uint8",
        "weight_type": "uint8",
        "per_channel": False,
        "reduce_range": True,
        "calibration_method": "entropy",
        "scope": "linear",
    }


@pytest.mark.parametrize(
    "name", ["fast", "qdq-u8s8-perchannel", "qdq-u4s4-perchannel-minmax", "qdq-u8s8-x-minmax"]
)
def test_parse_recipe_unknown_name_lists_the_known_ones(name: str) -> None:
    with pytest.raises(CalibrateError) as info:
        parse_recipe(name)
    message = str(info.value)
    assert f"unknown recipe {name!r}" in message
    assert all(preset in message for preset in PRESET_NAMES)
    assert AUTO in message and "FORMAT-TYPES" in message
    assert info.value.exit_code == 2


def test_recipes_for_auto_is_the_preset_grid() -> None:
    assert recipes_for("auto") == PRESETS
    assert recipes_for("qdq-s8s8-perchannel-minmax") == (
        parse_recipe("qdq-s8s8-perchannel-minmax"),
    )
    # The grid covers every axis the search is meant to decide on.
    assert {r.format for r in PRESETS} == set(QuantFormatChoice)
    assert {r.types for r in PRESETS} == set(QuantTypes)
    assert {r.method for r in PRESETS} == set(CalibMethod)
    assert {r.scope for r in PRESETS} == set(QuantScope)
    assert {r.per_channel for r in PRESETS} == {True, False}
    assert {r.reduce_range for r in PRESETS} == {True, False}


def test_recipe_options_map_to_onnxruntime_enums() -> None:
    assert QuantTypes.U8S8.to_ort() == (QuantType.QUInt8, QuantType.QInt8)
    assert QuantTypes.S8S8.to_ort() == (QuantType.QInt8, QuantType.QInt8)
    assert QuantTypes.U8U8.to_ort() == (QuantType.QUInt8, QuantType.QUInt8)
    assert QuantFormatChoice.QDQ.to_ort() is QuantFormat.QDQ
    assert QuantFormatChoice.QOPERATOR.to_ort() is QuantFormat.QOperator
    assert CalibMethod.PERCENTILE.to_ort() is CalibrationMethod.Percentile
    assert QuantScope.ALL.op_types() is None
    assert QuantScope.LINEAR.op_types() == ["Gemm", "MatMul"]


def test_recipes_know_the_integer_classes_they_are_exact_on() -> None:
    from onnxship.calibrate.recipes import SATURATING_CLASSES

    u8s8 = parse_recipe("qdq-u8s8-perchannel-minmax")
    assert u8s8.may_saturate and not u8s8.safe_on("avx2") and u8s8.safe_on("avx512_vnni")
    assert "exact on VNNI" in u8s8.risk and "may saturate on AVX2" in u8s8.risk
    assert set(u8s8.safe_integer_classes()).isdisjoint(SATURATING_CLASSES)
    # QDQ S8S8 is turned into U8S8 on x86 (measured saturating on AVX2); QOperator S8S8 is not.
    assert parse_recipe("qdq-s8s8-perchannel-minmax").may_saturate
    assert not parse_recipe("qop-s8s8-perchannel-minmax").may_saturate
    for name in ("qdq-u8s8-perchannel-rr-minmax", "qdq-u8u8-pertensor-minmax-linear"):
        recipe = parse_recipe(name)
        assert not recipe.may_saturate and "exact on every integer class" in recipe.risk
        assert {"avx2", "sse", "avx512_vnni", "arm64"} <= set(recipe.safe_integer_classes())
    assert u8s8.exact_twin().name == "qdq-u8s8-perchannel-rr-minmax"


def test_auto_grid_is_exact_on_the_class_it_runs_on() -> None:
    from onnxship.calibrate.recipes import X86_INTEGER_CLASSES, auto_grid

    assert auto_grid("avx512_vnni") == PRESETS == auto_grid("arm64_dotprod")
    for cls in ("avx2", "avx512", "sse"):
        grid = auto_grid(cls)
        assert grid and all(r.safe_on(cls) for r in grid)
        assert "qdq-u8s8-perchannel-rr-minmax" in [r.name for r in grid]
        assert "qdq-u8u8-pertensor-minmax" in [r.name for r in grid]  # U8U8 on every op
    portable = auto_grid("avx512_vnni", portable=True)
    assert all(r.safe_on(c) for r in portable for c in X86_INTEGER_CLASSES)
    assert recipes_for("auto", "avx2") == auto_grid("avx2")
    assert recipes_for("auto", "avx512_vnni", portable=True) == portable
    with pytest.raises(CalibrateError, match="is not portable.*qdq-u8s8-perchannel-rr-minmax"):
        recipes_for("qdq-u8s8-perchannel-minmax", "avx2", portable=True)
