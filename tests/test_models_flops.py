"""MACs and parameter counts (torch.utils.flop_counter), checked against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from onnxship.models.errors import ModelsError
from onnxship.models.flops import count_macs, count_nonzero_params, count_params
from onnxship.models.registry import create_model


def simple_cnn_macs(c: int, h: int) -> int:
    # conv 3x3 (1 -> c) on 26x26 outputs; fc1 (c*13*13 -> h); fc2 (h -> 10)
    return c * 26 * 26 * 9 + c * 13 * 13 * h + h * 10


def test_count_macs_simple_cnn_is_888192_at_article_widths() -> None:
    assert count_macs(create_model("simple_cnn")) == 888_192 == simple_cnn_macs(32, 128)


@pytest.mark.parametrize(("c", "h"), [(8, 32), (7, 38), (1, 1), (5, 68)])
def test_count_macs_simple_cnn_matches_formula_when_widths_shrink(c: int, h: int) -> None:
    assert count_macs(create_model("simple_cnn", conv_channels=c, hidden=h)) == simple_cnn_macs(
        c, h
    )


def test_count_macs_bn_cnn_matches_hand_count() -> None:
    # conv1 16*28*28*9, conv2 32*14*14*(16*9), fc1 32*7*7*128, fc2 128*10 (BN not counted)
    expected = 16 * 28 * 28 * 9 + 32 * 14 * 14 * 16 * 9 + 32 * 7 * 7 * 128 + 128 * 10
    assert count_macs(create_model("bn_cnn")) == expected == 1_218_048


def test_count_macs_is_per_batch_and_restores_training_mode() -> None:
    model = create_model("tiny_cnn").train()
    assert count_macs(model, (3, 1, 28, 28)) == 3 * count_macs(model)
    assert model.training


def test_count_macs_refuses_empty_dimension() -> None:
    with pytest.raises(ModelsError, match="every dimension >= 1"):
        count_macs(create_model("tiny_cnn"), (0, 1, 28, 28))


def test_count_params_counts_parameter_elements_only() -> None:
    model = create_model("bn_cnn")
    expected = sum(p.numel() for p in model.parameters())
    assert count_params(model) == expected == 206_970  # BN running stats are buffers
    assert count_params(create_model("simple_cnn")) == 693_962


def test_count_nonzero_params_sees_zeroed_weights() -> None:
    model = create_model("tiny_cnn")
    with torch.no_grad():
        model.fc1.weight.zero_()
    assert count_nonzero_params(model) == count_params(model) - model.fc1.weight.numel()
