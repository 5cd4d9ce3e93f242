"""Compute and size of a model: multiply-accumulates and parameter counts.

MACs come from `torch.utils.flop_counter.FlopCounterMode` (not a hand-written counter): it
counts the FLOPs of the aten matmul/convolution kernels a real forward pass dispatches, and one
multiply-accumulate is two FLOPs. Element-wise work (bias, ReLU, pooling, BatchNorm in eval) is
not counted, which is the usual convention for "MACs". The count is per sample (batch 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from onnxship.models.errors import ModelsError

MNIST_INPUT_SHAPE = (1, 1, 28, 28)


def count_macs(model: nn.Module, input_shape: Sequence[int] = MNIST_INPUT_SHAPE) -> int:
    """Multiply-accumulates of one forward pass on a zero input of `input_shape`.

    The model is run in eval mode under `no_grad` and restored to its previous mode. Pass a
    batch-1 shape to get the per-sample count the manifest's `macs` field holds.
    """
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ModelsError(f"input shape {shape} must be non-empty with every dimension >= 1")
    try:
        first = next(model.parameters())
        device, dtype = first.device, first.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    flops = int(counter.get_total_flops())
    if flops % 2:
        raise ModelsError(f"FlopCounterMode reported an odd FLOP count ({flops}); cannot halve it")
    return flops // 2


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BatchNorm running stats excluded)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def count_nonzero_params(model: nn.Module) -> int:
    """Parameter elements that are not exactly zero (what unstructured pruning reduces)."""
    return int(sum(int(torch.count_nonzero(p.detach())) for p in model.parameters()))
