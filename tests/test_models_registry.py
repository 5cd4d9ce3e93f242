"""The architecture registry: names, widths, shapes."""

from __future__ import annotations

import pytest
import torch

from onnxship.models.errors import ModelsError
from onnxship.models.registry import SimpleCNN, create_model, list_models


def test_list_models_holds_the_reference_the_bn_model_and_the_tiny_test_model() -> None:
    assert {"simple_cnn", "bn_cnn", "tiny_cnn"} <= set(list_models())


def test_create_model_lists_known_architectures_when_name_is_unknown() -> None:
    with pytest.raises(ModelsError) as info:
        create_model("resnet50")
    message = str(info.value)
    assert "'resnet50'" in message
    for name in list_models():
        assert name in message
    assert info.value.exit_code == 2


@pytest.mark.parametrize("name", ["simple_cnn", "bn_cnn", "tiny_cnn"])
def test_create_model_gives_batch_by_10_logits_and_widths_that_rebuild_it(name: str) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.zeros(3, 1, 28, 28))
    assert tuple(out.shape) == (3, 10)
    assert model.arch_name == name
    rebuilt = create_model(name, **model.widths())
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


def test_simple_cnn_has_the_article_fixed_shape_and_888192_macs() -> None:
    model = create_model("simple_cnn")
    assert isinstance(model, SimpleCNN)
    assert model.widths() == {"conv_channels": 32, "hidden": 128}
    # The article's fc1 declared 32*7*7 inputs; an unpadded 3x3 conv + one 2x2 pool give 13x13.
    assert model.fc1.in_features == 32 * 13 * 13
    macs = 26 * 26 * 32 * 9 + 32 * 13 * 13 * 128 + 128 * 10
    assert macs == 888_192


def test_create_model_builds_smaller_widths_for_a_pruned_student() -> None:
    model = create_model("simple_cnn", conv_channels=8, hidden=32)
    assert model.widths() == {"conv_channels": 8, "hidden": 32}
    assert model.fc1.in_features == 8 * 13 * 13
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_create_model_refuses_width_when_not_a_positive_int(bad: object) -> None:
    with pytest.raises(ModelsError, match="conv_channels=.*positive integer"):
        create_model("simple_cnn", conv_channels=bad)


def test_create_model_names_the_architecture_when_width_is_unknown() -> None:
    with pytest.raises(ModelsError, match="'bn_cnn' does not take these widths"):
        create_model("bn_cnn", conv_channels=8)
