"""Architectures as plain functions in a registry (timm style), and users' own factories.

`create_model("simple_cnn", conv_channels=8, hidden=32)` builds a model; a pruned student is
the same architecture with smaller widths, so its checkpoint reloads by name + widths alone.
Every model exposes `widths() -> dict[str, int]` (the keyword arguments that rebuild it).

An architecture declares its structured-pruning channel groups when it is registered
(`register_model(name, prune_groups=...)`): which width a producer's output channels set, the
BatchNorm pruned with it and the modules that read those channels. `prune_groups(arch)` reads
them back; nothing else keeps a second table.

A user's own network comes from a factory, `ModelFactory("pkg.module:function", kwargs)`,
imported with a given folder (the config file's) first on `sys.path`; `build()` checks that it
returns an `nn.Module`. Such models are pruned with Torch-Pruning's dependency graph
(`models.prune`), not with channel groups.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onnxship.core.flags import sorted_kwargs  # noqa: F401  (re-exported)
from onnxship.models.errors import ModelsError

ModelFn = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFn] = {}

NUM_CLASSES = 10
IMAGE_SIZE = 28


@dataclass(frozen=True)
class ChannelGroup:
    """One registry width for structured pruning: `producer` (Conv2d or Linear) owns the
    channels as output rows, `norm` (a BatchNorm2d, or None) is pruned with it, and every
    module in `consumers` loses the matching input slices. A Linear consumer of a conv producer
    (through a flatten) owns `in_features // channels` columns per channel, read off the
    layers at prune time, so the table never repeats a spatial size."""

    width: str  # the registry width it sets (create_model keyword)
    producer: str
    norm: str | None
    consumers: tuple[str, ...]


_PRUNE_GROUPS: dict[str, tuple[ChannelGroup, ...]] = {}


def register_model(
    name: str, *, prune_groups: tuple[ChannelGroup, ...] = ()
) -> Callable[[ModelFn], ModelFn]:
    def decorator(fn: ModelFn) -> ModelFn:
        if name in _REGISTRY:
            raise ModelsError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = fn
        if prune_groups:
            _PRUNE_GROUPS[name] = tuple(prune_groups)
        return fn

    return decorator


def prune_groups(arch: str) -> tuple[ChannelGroup, ...]:
    """The channel groups `arch` declared at registration (structured pruning)."""
    if arch not in _PRUNE_GROUPS:
        raise ModelsError(
            f"architecture {arch!r} declares no structured-pruning channel groups; supported: "
            f"{', '.join(sorted(_PRUNE_GROUPS))} (or use method=unstructured)"
        )
    return _PRUNE_GROUPS[arch]


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


_SIMPLE_CNN_GROUPS = (
    ChannelGroup("conv_channels", "conv1", None, ("fc1",)),
    ChannelGroup("hidden", "fc1", None, ("fc2",)),
)


@register_model("simple_cnn", prune_groups=_SIMPLE_CNN_GROUPS)
def simple_cnn(conv_channels: int = 32, hidden: int = 128) -> SimpleCNN:
    return SimpleCNN(conv_channels=conv_channels, hidden=hidden)


@register_model(
    "bn_cnn",
    prune_groups=(
        ChannelGroup("conv1_channels", "conv1", "bn1", ("conv2",)),
        ChannelGroup("conv2_channels", "conv2", "bn2", ("fc1",)),
        ChannelGroup("hidden", "fc1", None, ("fc2",)),
    ),
)
def bn_cnn(conv1_channels: int = 16, conv2_channels: int = 32, hidden: int = 128) -> BnCNN:
    return BnCNN(conv1_channels=conv1_channels, conv2_channels=conv2_channels, hidden=hidden)


@register_model("tiny_cnn", prune_groups=_SIMPLE_CNN_GROUPS)
def tiny_cnn(conv_channels: int = 4, hidden: int = 8) -> SimpleCNN:
    """A SimpleCNN small enough for unit tests (registered like a real model, as in timm)."""
    model = SimpleCNN(conv_channels=conv_channels, hidden=hidden)
    model.arch_name = "tiny_cnn"
    return model


# --------------------------------------------------------------------------------------------
# A user's own network: "pkg.module:function" plus keyword arguments.


@dataclass(frozen=True)
class ModelFactory:
    """`factory` = "pkg.module:function" returning an `nn.Module`; `kwargs` its keyword
    arguments; `search_path` the folder put first on `sys.path` while importing (the config
    file's folder), or None."""

    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    search_path: str | None = None

    def split(self) -> tuple[str, str]:
        module, sep, function = self.factory.partition(":")
        if not sep or not module.strip() or not function.strip() or ":" in function:
            raise ModelsError(
                f"model factory {self.factory!r} is not 'pkg.module:function'; write e.g. "
                'factory = "my_pkg.nets:small_resnet"'
            )
        return module.strip(), function.strip()

    def resolve(self) -> Callable[..., Any]:
        module_name, function_name = self.split()
        where = f" (searched {self.search_path} first)" if self.search_path else ""
        added = False
        if self.search_path:
            _forget_if_elsewhere(module_name, Path(self.search_path))
        if self.search_path and self.search_path not in sys.path:
            sys.path.insert(0, self.search_path)
            added = True
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # ImportError, SyntaxError, anything the module raises
            first = " ".join(str(exc).split())[:200]
            raise ModelsError(
                f"model factory {self.factory!r}: module {module_name!r} does not import{where} "
                f"({type(exc).__name__}: {first}); put {module_name.replace('.', '/')}.py next "
                "to the config file or make it importable"
            ) from exc
        finally:
            if added:
                sys.path.remove(self.search_path)  # type: ignore[arg-type]
        fn = getattr(module, function_name, None)
        if not callable(fn):
            raise ModelsError(
                f"model factory {self.factory!r}: module {module_name!r} "
                f"({getattr(module, '__file__', '?')}) has no function {function_name!r}; "
                "name a function that returns an nn.Module"
            )
        return fn

    def build(self) -> nn.Module:
        fn = self.resolve()
        try:
            model = fn(**dict(self.kwargs))
        except Exception as exc:
            first = " ".join(str(exc).split())[:200]
            raise ModelsError(
                f"model factory {self.factory!r} failed with kwargs {dict(self.kwargs)} "
                f"({type(exc).__name__}: {first}); check [model] kwargs"
            ) from exc
        if not isinstance(model, nn.Module):
            raise ModelsError(
                f"model factory {self.factory!r} returned {type(model).__name__}, expected a "
                "torch.nn.Module; return the network itself"
            )
        return model

    def to_json(self) -> dict[str, Any]:
        return {
            "factory": self.factory,
            "kwargs": dict(self.kwargs),
            "search_path": self.search_path,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ModelFactory:
        return cls(
            factory=str(raw["factory"]),
            kwargs=dict(raw.get("kwargs", {})),
            search_path=raw.get("search_path"),
        )


def _forget_if_elsewhere(module_name: str, folder: Path) -> None:
    """Drop an already imported `module_name` package from sys.modules when `folder` holds a
    module of that name too: the config's own module wins over one imported earlier from
    another folder (two projects with a `nets.py` each, in one process)."""
    top = module_name.split(".")[0]
    cached = sys.modules.get(top)
    if cached is None or not ((folder / f"{top}.py").is_file() or (folder / top).is_dir()):
        return
    origin = getattr(cached, "__file__", None)
    if origin and Path(origin).resolve().is_relative_to(folder.resolve()):
        return
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]


def factory_search_path(config_file: str | os.PathLike[str] | None) -> str | None:
    return None if config_file is None else os.fspath(Path(config_file).resolve().parent)


# --------------------------------------------------------------------------------------------
# Latency-shaped students: a strided or patchify stem instead of a full-resolution
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
