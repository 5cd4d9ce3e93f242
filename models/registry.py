"""Architectures as plain functions in a registry (timm style).

`create_model("simple_cnn", conv_channels=8, hidden=32)` builds a model; a pruned student is
the same architecture with smaller widths, so its checkpoint reloads by name + widths alone.
Every model exposes `widths() -> dict[str, int]` (the keyword arguments that rebuild it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from onnxship.models.errors import ModelsError

ModelFn = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFn] = {}

NUM_CLASSES = 10
IMAGE_SIZE = 28


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    def decorator(fn: ModelFn) -> ModelFn:
        if name in _REGISTRY:
            raise ModelsError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **widths: Any) -> nn.Module:
    if name not in _REGISTRY:
        raise ModelsError(
            f"unknown architecture {name!r}; known architectures: {', '.join(list_models())}"
        )
    for key, value in widths.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelsError(
                f"architecture {name!r}: width {key}={value!r} must be a positive integer"
            )
    try:
        return _REGISTRY[name](**widths)
    except TypeError as exc:
        raise ModelsError(
            f"architecture {name!r} does not take these widths {widths}: {exc}"
        ) from exc


class SimpleCNN(nn.Module):
    """The seed article's SimpleCNN: Conv2d(1->C, 3x3) -> ReLU -> MaxPool(2) -> Linear(->H)
    -> ReLU -> Linear(H->10).

    Fixed from the article: it declares `fc1 = nn.Linear(32 * 7 * 7, 128)`, but an unpadded
    3x3 convolution on 28x28 gives 26x26 and one 2x2 pool gives 13x13, so the flattened size is
    C * 13 * 13 (5,408 for C=32) and the article's model fails on its first forward pass.
    Here fc1's input is computed from the widths.

    Widths: `conv_channels` (C, 32 in the article) and `hidden` (H, 128). At the article's
    widths one sample costs 888,192 multiply-accumulates.
    """

    arch_name = "simple_cnn"

    def __init__(self, conv_channels: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.conv_channels = conv_channels
        self.hidden = hidden
        self.conv1 = nn.Conv2d(1, conv_channels, kernel_size=3)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(conv_channels * 13 * 13, hidden)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.relu2(self.fc1(self.flatten(x)))
        return self.fc2(x)

    def widths(self) -> dict[str, int]:
        return {"conv_channels": self.conv_channels, "hidden": self.hidden}


class BnCNN(nn.Module):
    """Two conv blocks with BatchNorm: [Conv3x3(pad 1) -> BN -> ReLU -> MaxPool2] x 2 ->
    Linear(C2*7*7 -> H) -> ReLU -> Linear(H -> 10).

    Exists so that pruning, export and quantization are proven on more than SimpleCNN
    (BatchNorm between a conv and its consumer, a conv feeding a conv).
    """

    arch_name = "bn_cnn"

    def __init__(
        self, conv1_channels: int = 16, conv2_channels: int = 32, hidden: int = 128
    ) -> None:
        super().__init__()
        self.conv1_channels = conv1_channels
        self.conv2_channels = conv2_channels
        self.hidden = hidden
        self.conv1 = nn.Conv2d(1, conv1_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(conv1_channels)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(conv1_channels, conv2_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(conv2_channels)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(conv2_channels * 7 * 7, hidden)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.fc1(self.flatten(x)))
        return self.fc2(x)

    def widths(self) -> dict[str, int]:
        return {
            "conv1_channels": self.conv1_channels,
            "conv2_channels": self.conv2_channels,
            "hidden": self.hidden,
        }


@register_model("simple_cnn")
def simple_cnn(conv_channels: int = 32, hidden: int = 128) -> SimpleCNN:
    return SimpleCNN(conv_channels=conv_channels, hidden=hidden)


@register_model("bn_cnn")
def bn_cnn(conv1_channels: int = 16, conv2_channels: int = 32, hidden: int = 128) -> BnCNN:
    return BnCNN(conv1_channels=conv1_channels, conv2_channels=conv2_channels, hidden=hidden)


@register_model("tiny_cnn")
def tiny_cnn(conv_channels: int = 4, hidden: int = 8) -> SimpleCNN:
    """A SimpleCNN small enough for unit tests (registered like a real model, as in timm)."""
    model = SimpleCNN(conv_channels=conv_channels, hidden=hidden)
    model.arch_name = "tiny_cnn"
    return model


# --------------------------------------------------------------------------------------------
# Latency-shaped students (issue 13): a strided or patchify stem instead of a full-resolution
# conv + max-pool. On ORT's CPU EP the student's time went to its 26x26 conv, the pool and the
# NCHWc reorders, not to its MACs; a stride-k stem cuts those per-pixel costs by k^2.


class PatchCNN(nn.Module):
    """Conv(1->C, k x k, stride s, no padding) -> BN -> ReLU -> Linear(C*g*g -> H) -> ReLU ->
    Linear(H -> 10), with g = (28 - k) // s + 1.

    `kernel == stride` is a patchify stem (non-overlapping k x k patches, e.g. 4x4/4 -> 7x7
    grid); `kernel > stride` overlaps neighbouring patches. The BatchNorm is folded into the
    conv on export (eval mode), so it costs nothing at inference. Widths: `kernel`, `stride`,
    `conv_channels`, `hidden` (all positive integers, so checkpoints rebuild it by name).
    """

    arch_name = "patch_cnn"

    def __init__(
        self, kernel: int = 4, stride: int = 4, conv_channels: int = 16, hidden: int = 64
    ) -> None:
        super().__init__()
        if kernel > IMAGE_SIZE or stride > kernel:
            raise ModelsError(
                f"patch_cnn: kernel={kernel}, stride={stride} must satisfy stride <= kernel <= "
                f"{IMAGE_SIZE}; e.g. kernel=4, stride=4 (patchify)"
            )
        self.kernel, self.stride = kernel, stride
        self.conv_channels, self.hidden = conv_channels, hidden
        self.grid = (IMAGE_SIZE - kernel) // stride + 1
        self.conv1 = nn.Conv2d(1, conv_channels, kernel_size=kernel, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(conv_channels)
        self.relu1 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(conv_channels * self.grid * self.grid, hidden)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.fc1(self.flatten(x)))
        return self.fc2(x)

    def widths(self) -> dict[str, int]:
        return {
            "kernel": self.kernel,
            "stride": self.stride,
            "conv_channels": self.conv_channels,
            "hidden": self.hidden,
        }


@register_model("patch_cnn")
def patch_cnn(
    kernel: int = 4, stride: int = 4, conv_channels: int = 16, hidden: int = 64
) -> PatchCNN:
    return PatchCNN(kernel=kernel, stride=stride, conv_channels=conv_channels, hidden=hidden)
