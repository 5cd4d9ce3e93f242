"""models.evaluate: batched forward passes into one preallocated output."""

from __future__ import annotations

import pytest
import torch

from onnxship.models.distill import teacher_logits
from onnxship.models.evaluate import outputs_in_batches, predict_logits
from onnxship.models.registry import create_model


@pytest.mark.parametrize("batch_size", [1, 7, 256, 1000])
def test_outputs_in_batches_equal_the_concatenated_batches_bit_for_bit(batch_size: int) -> None:
    torch.manual_seed(0)
    model = create_model("simple_cnn", conv_channels=4, hidden=8).eval()
    x = torch.randn(300, 1, 28, 28)
    with torch.no_grad():
        ref = torch.cat([model(x[i : i + batch_size]) for i in range(0, 300, batch_size)])
    assert torch.equal(outputs_in_batches(model, x, batch_size), ref)
    assert torch.equal(teacher_logits(model, x, batch_size), ref)
    model.train()
    assert torch.equal(predict_logits(model, x, batch_size), ref)
    assert model.training  # predict_logits restores the mode


def test_outputs_in_batches_of_no_rows_is_an_error() -> None:
    model = create_model("simple_cnn", conv_channels=4, hidden=8).eval()
    with pytest.raises(ValueError, match="no rows"):
        outputs_in_batches(model, torch.empty(0, 1, 28, 28), 8)
