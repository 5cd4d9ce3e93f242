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
