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
