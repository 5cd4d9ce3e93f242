"""Checkpoints: a `state_dict` file plus a JSON sidecar, written atomically.

`<name>.pt` holds only tensors (loaded with `torch.load(weights_only=True)`, so a file with
pickled objects is refused). `<name>.json` beside it records the architecture and widths (so a
pruned model reloads into the right shape), the data normalisation, the seed, metrics and the
sha256 of the `.pt` bytes; loading refuses weights whose hash does not match.

It also records the dataset (`dataset`: the DatasetInfo, `data`: where it is read from), so
later stages know input shape, normalisation and classes without flags. A user's own network
(`factory`: "pkg.module:function" + kwargs) is stored with its module shapes (`shapes`: the
channel counts of every conv, linear and norm layer, see `module_shapes`): a structurally
pruned one reloads by building the factory's model, resizing those layers to the recorded
shapes and loading the plain state_dict - no pickled module, ever.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onnxship.core.artifact import (
    Artifact,
    atomic_companion,
    atomic_write_bytes,
    json_bytes,
    sha256_bytes,
    sha256_file,
)
from onnxship.core.dataset import DatasetInfo
from onnxship.core.mnist import MNIST_CLASSES, MNIST_MEAN, MNIST_STD
from onnxship.models.errors import ModelsError
from onnxship.models.registry import ModelFactory, create_model

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class CheckpointMeta:
    arch: str
    widths: dict[str, int]
    weights_sha256: str
    mean: tuple[float, ...] = MNIST_MEAN
    std: tuple[float, ...] = MNIST_STD
    class_labels: tuple[str, ...] = MNIST_CLASSES
    seed: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    parent_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    dataset: DatasetInfo | None = (
        None  # None: MNIST (checkpoints written before datasets were recorded)
    )
    data: dict[str, Any] | None = (
        None  # models.training_data.DataConfig.to_json(): where to read it
    )
    factory: ModelFactory | None = None  # a user's own network
    shapes: dict[str, dict[str, Any]] | None = None  # module_shapes() of a factory model

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.dataset.input_shape if self.dataset is not None else (1, 28, 28)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "arch": self.arch,
            "widths": dict(self.widths),
            "weights_sha256": self.weights_sha256,
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "class_labels": list(self.class_labels),
            "seed": self.seed,
            "metrics": dict(self.metrics),
            "parent_sha256": self.parent_sha256,
            "extra": dict(self.extra),
            "dataset": None if self.dataset is None else self.dataset.to_json(),
            "data": self.data,
            "factory": None if self.factory is None else self.factory.to_json(),
            "shapes": self.shapes,
        }


# Layer attributes that structured pruning changes; recorded per module of a factory model.
SHAPE_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "num_channels",
    "num_groups",
    "normalized_shape",
)


def module_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{module name: {attribute: value}} for every layer with channel-count attributes."""
    shapes: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        attrs: dict[str, Any] = {}
        for attr in SHAPE_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                attrs[attr] = value
            elif isinstance(value, tuple) and all(isinstance(v, int) for v in value):
                attrs[attr] = list(value)
        if attrs and name:
            shapes[name] = attrs
    return shapes


def apply_shapes(
    model: nn.Module, shapes: dict[str, dict[str, Any]], state: dict[str, torch.Tensor]
) -> None:
    """Resize a freshly built factory model to recorded (pruned) shapes, in place: layer
    attributes from `shapes`, parameter and buffer tensors to the state_dict's shapes (their
    values come from `load_state_dict` next)."""
    for name, attrs in shapes.items():
        try:
            module = model.get_submodule(name)
        except AttributeError as exc:
            raise ModelsError(
                f"the checkpoint's shapes name layer {name!r}, which the factory's model lacks; "
                "the factory changed since the checkpoint was written"
            ) from exc
        for attr, value in attrs.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    with torch.no_grad():
        for key, tensor in state.items():
            owner, _, leaf = key.rpartition(".")
            try:
                module = model.get_submodule(owner) if owner else model
            except AttributeError:
                continue  # load_state_dict names the unexpected key
            param = module._parameters.get(leaf)
            if param is not None and param.shape != tensor.shape:
                module._parameters[leaf] = nn.Parameter(
                    torch.empty_like(tensor), requires_grad=param.requires_grad
                )
            buf = module._buffers.get(leaf)
            if buf is not None and buf.shape != tensor.shape:
                module._buffers[leaf] = torch.empty_like(tensor)


def identity_normalisation(info: DatasetInfo) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The data's mean/std, or for preprocessed data (npz) the identity: mean 0, std 1 per
    channel - the model's input is the data as given."""
    if info.mean is not None and info.std is not None:
        return tuple(info.mean), tuple(info.std)
    channels = info.input_shape[0] if info.input_shape else 1
    return (0.0,) * channels, (1.0,) * channels


def sidecar_path(weights_path: str | os.PathLike[str]) -> Path:
    return Path(weights_path).with_suffix(".json")


def model_arch(model: nn.Module, factory: ModelFactory | None = None) -> str:
    if factory is not None:
        return factory.factory
    name = getattr(model, "arch_name", None)
    if not name:
        raise ModelsError(f"{type(model).__name__} has no arch_name; build it with create_model()")
    return str(name)


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    stage: str,
    seed: int | None = None,
    metrics: dict[str, Any] | None = None,
    parent_sha256: str | None = None,
    config: Any = None,
    extra: dict[str, Any] | None = None,
    mean: tuple[float, ...] = MNIST_MEAN,
    std: tuple[float, ...] = MNIST_STD,
    like: CheckpointMeta | None = None,
    dataset: DatasetInfo | None = None,
    data: dict[str, Any] | None = None,
    factory: ModelFactory | None = None,
) -> Artifact:
    """Write `path` (.pt) and its sidecar (.json); return the weights file as an Artifact.

    `like`: a source checkpoint's meta whose dataset, data source, factory and normalisation
    carry over (prune, distill). `dataset` sets the normalisation unless `like` gives it."""
    weights_path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data_bytes = buffer.getvalue()
    if like is not None:
        dataset = dataset or like.dataset
        data = data or like.data
        factory = factory or like.factory
        mean, std = like.mean, like.std
    elif dataset is not None:
        mean, std = identity_normalisation(dataset)
    meta = CheckpointMeta(
        arch=model_arch(model, factory),
        widths={} if factory is not None else dict(model.widths()),  # type: ignore[operator]
        weights_sha256=sha256_bytes(data_bytes),
        mean=tuple(mean),
        std=tuple(std),
        class_labels=dataset.class_names if dataset is not None else MNIST_CLASSES,
        seed=seed,
        metrics=dict(metrics or {}),
        parent_sha256=parent_sha256,
        extra=dict(extra or {}),
        dataset=dataset,
        data=data,
        factory=factory,
        shapes=module_shapes(model) if factory is not None else None,
    )
    # Both files or neither (also when the sidecar's write or rename fails): the sidecar is
    # written to its temporary file first, the weights are renamed into place, then the sidecar,
    # so a sidecar only ever describes weights already in place.
    sidecar = sidecar_path(weights_path)
    with atomic_companion(sidecar, json_bytes(meta.to_json()), primary=weights_path):
        atomic_write_bytes(weights_path, data_bytes)
    return Artifact.from_file(
        weights_path, stage=stage, config=config, parent_sha256=parent_sha256, metrics=metrics
    )


def read_checkpoint_meta(path: str | os.PathLike[str]) -> CheckpointMeta:
    weights_path = Path(path)
    side = sidecar_path(weights_path)
    if not weights_path.is_file():
        raise ModelsError(f"checkpoint {weights_path} does not exist; train or pass another path")
    if not side.is_file():
        raise ModelsError(
            f"checkpoint {weights_path} has no sidecar {side.name}: architecture and widths are "
            "unknown; save checkpoints with onnxship (train/prune/distill)"
        )
    try:
        raw = json.loads(side.read_text())
        norm = raw["normalization"]
        return CheckpointMeta(
            arch=str(raw["arch"]),
            widths={str(k): int(v) for k, v in raw["widths"].items()},
            weights_sha256=str(raw["weights_sha256"]),
            mean=tuple(float(v) for v in norm["mean"]),
            std=tuple(float(v) for v in norm["std"]),
            class_labels=tuple(str(v) for v in raw.get("class_labels", MNIST_CLASSES)),
            seed=raw.get("seed"),
            metrics=dict(raw.get("metrics", {})),
            parent_sha256=raw.get("parent_sha256"),
            extra=dict(raw.get("extra", {})),
            dataset=None
            if raw.get("dataset") is None
            else DatasetInfo.from_json(raw["dataset"], source=str(side)),
            data=raw.get("data"),
            factory=None if raw.get("factory") is None else ModelFactory.from_json(raw["factory"]),
            shapes=raw.get("shapes"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelsError(
            f"checkpoint sidecar {side} is unreadable ({exc!r}); re-save the checkpoint"
        ) from exc


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from its sidecar and load the verified weights (eval mode)."""
    weights_path = Path(path)
    meta = read_checkpoint_meta(weights_path)
    actual = sha256_file(weights_path)
    if actual != meta.weights_sha256:
        raise ModelsError(
            f"checkpoint {weights_path}: sha256 {actual} does not match its sidecar "
            f"({meta.weights_sha256}); the weights were changed or replaced; restore or retrain"
        )
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError subclasses
        raise ModelsError(
            f"checkpoint {weights_path} was refused by torch.load(weights_only=True): it holds "
            f"more than tensors ({type(exc).__name__}); only state_dict files are accepted"
        ) from exc
    model = model_from_state(meta, state, source=weights_path)
    return model, meta


def model_from_state(
    meta: CheckpointMeta, state: dict[str, torch.Tensor], *, source: str | os.PathLike[str]
) -> nn.Module:
    """The model a sidecar describes (registry architecture, or factory + pruned shapes) with
    `state` loaded strictly, in eval mode. `source` names the checkpoint in errors."""
    if meta.factory is not None:
        model = meta.factory.build()
        if meta.shapes:
            apply_shapes(model, meta.shapes, state)
    else:
        model = create_model(meta.arch, **meta.widths)
    load_state_strictly(
        model,
        state,
        f"checkpoint {source} does not match architecture {meta.arch} with widths {meta.widths}",
    )
    return model.eval()


def load_state_strictly(model: nn.Module, state: Mapping[str, Any], mismatch: str) -> None:
    """`model.load_state_dict(state, strict=True)`; a state that does not fit raises
    ModelsError "`mismatch`: <the first line of torch's error>"."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelsError(f"{mismatch}: {first}") from exc
