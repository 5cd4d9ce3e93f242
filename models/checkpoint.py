"""Checkpoints: a `state_dict` file plus a JSON sidecar, written atomically.

`<name>.pt` holds only tensors (loaded with `torch.load(weights_only=True)`, so a file with
pickled objects is refused). `<name>.json` beside it records the architecture and widths (so a
pruned model reloads into the right shape), the data normalisation, the seed, metrics and the
sha256 of the `.pt` bytes; loading refuses weights whose hash does not match.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onnxship.core.artifact import (
    Artifact,
    atomic_write_bytes,
    atomic_write_json,
    sha256_bytes,
    sha256_file,
)
from onnxship.core.mnist import MNIST_CLASSES, MNIST_MEAN, MNIST_STD
from onnxship.models.errors import ModelsError
from onnxship.models.registry import create_model

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
        }


def sidecar_path(weights_path: str | os.PathLike[str]) -> Path:
    return Path(weights_path).with_suffix(".json")


def model_arch(model: nn.Module) -> str:
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
) -> Artifact:
    """Write `path` (.pt) and its sidecar (.json); return the weights file as an Artifact."""
    weights_path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    meta = CheckpointMeta(
        arch=model_arch(model),
        widths=dict(model.widths()),  # type: ignore[operator]
        weights_sha256=sha256_bytes(data),
        mean=tuple(mean),
        std=tuple(std),
        seed=seed,
        metrics=dict(metrics or {}),
        parent_sha256=parent_sha256,
        extra=dict(extra or {}),
    )
    # Weights first, sidecar second: a sidecar only ever describes weights already in place.
    atomic_write_bytes(weights_path, data)
    atomic_write_json(sidecar_path(weights_path), meta.to_json())
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
    model = create_model(meta.arch, **meta.widths)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelsError(
            f"checkpoint {weights_path} does not match architecture {meta.arch} with widths "
            f"{meta.widths}: {first}"
        ) from exc
    model.eval()
    return model, meta
