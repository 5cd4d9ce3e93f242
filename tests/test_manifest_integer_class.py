"""The manifest's per-artifact integer-class fields, from a quantize stage record."""

from __future__ import annotations

from onnxship.calibrate.recipes import parse_recipe
from onnxship.core.env import integer_class
from onnxship.manifest import environment, integer_class_fields


def test_manifest_fields_name_the_class_measured_on_and_where_int8_is_safe() -> None:
    here = integer_class()
    recipe = parse_recipe("qdq-u8s8-perchannel-minmax")
    record = {"metrics": {"integer_class": here, "recipe": {
        "name": recipe.name, "safe_integer_classes": recipe.safe_integer_classes(),
        "risk": recipe.risk}}}  # fmt: skip
    accuracy = {"top1": 0.9871, "correct": 9871, "n": 10000}
    int8 = integer_class_fields("int8", record, accuracy)
    assert int8["integer_class"] == here and int8["validated_on"] == here
    assert int8["accuracy_by_class"] == {
        here: {"test_top1": 0.9871, "correct": 9871, "n": 10000, "measured_by": "run"}
    }
    assert int8["safe_integer_classes"] == recipe.safe_integer_classes()
    assert "avx2" not in int8["safe_integer_classes"] and "may saturate" in int8["quant_risk"]
    fp32 = integer_class_fields("fp32", {"metrics": {}}, accuracy)
    assert set(fp32) == {"integer_class", "accuracy_by_class"}
    assert environment()["integer_class"] == here
