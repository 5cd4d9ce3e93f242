"""Checkpoints: state_dict + JSON sidecar, hash check, weights_only loading."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import pytest
import torch

from onnxship.core.artifact import sha256_file
from onnxship.core.mnist import MNIST_MEAN, MNIST_STD
from onnxship.models.checkpoint import (
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
    sidecar_path,
)
from onnxship.models.errors import ModelsError
from onnxship.models.registry import create_model


def _saved_tiny(tmp_path: Path, **widths: int) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = create_model("tiny_cnn", **widths).eval()
    path = tmp_path / "tiny.pt"
    save_checkpoint(model, path, stage="train", seed=7, metrics={"test_top1": 0.5})
    return model, path


def test_checkpoint_round_trip_restores_architecture_widths_and_outputs(tmp_path: Path) -> None:
    model, path = _saved_tiny(tmp_path, conv_channels=3, hidden=5)
    loaded, meta = load_checkpoint(path)
    assert meta.arch == "tiny_cnn"
    assert meta.widths == {"conv_channels": 3, "hidden": 5}
    assert meta.seed == 7 and meta.metrics == {"test_top1": 0.5}
    assert meta.mean == MNIST_MEAN and meta.std == MNIST_STD
    assert meta.weights_sha256 == sha256_file(path)
    assert not loaded.training
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_save_checkpoint_returns_artifact_and_writes_sidecar_with_sha256(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("tiny_cnn")
    artifact = save_checkpoint(model, tmp_path / "m.pt", stage="train", seed=1)
    side = json.loads(sidecar_path(tmp_path / "m.pt").read_text())
    assert artifact.sha256 == side["weights_sha256"] == sha256_file(tmp_path / "m.pt")
    assert artifact.bytes == (tmp_path / "m.pt").stat().st_size
    assert side["arch"] == "tiny_cnn" and side["normalization"]["mean"] == list(MNIST_MEAN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt"]  # no temp files left


def test_load_checkpoint_refuses_weights_when_sidecar_hash_mismatches(tmp_path: Path) -> None:
    _, path = _saved_tiny(tmp_path)
    other = create_model("tiny_cnn")
    torch.save(other.state_dict(), path)  # same shapes, different bytes
    with pytest.raises(ModelsError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "does not match its sidecar" in message
    assert info.value.exit_code == 2


class _Payload:
    """A pickled object that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (self.marker,))


def test_load_checkpoint_refuses_pickled_objects_via_weights_only(tmp_path: Path) -> None:
    _, path = _saved_tiny(tmp_path)
    marker = tmp_path / "payload-ran"
    state = torch.load(path, weights_only=True)
    state["extra"] = _Payload(marker)
    torch.save(state, path)
    # Re-sign the sidecar so the hash check passes and weights_only is what refuses the file.
    side = sidecar_path(path)
    raw = json.loads(side.read_text())
    raw["weights_sha256"] = sha256_file(path)
    side.write_text(json.dumps(raw))
    with pytest.raises(ModelsError) as info:
        load_checkpoint(path)
    assert "weights_only=True" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_load_checkpoint_names_missing_sidecar(tmp_path: Path) -> None:
    _, path = _saved_tiny(tmp_path)
    sidecar_path(path).unlink()
    with pytest.raises(ModelsError, match=r"has no sidecar tiny\.json"):
        load_checkpoint(path)


def test_load_checkpoint_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelsError, match="does not exist"):
        read_checkpoint_meta(tmp_path / "nope.pt")


def test_load_checkpoint_refuses_sidecar_when_widths_disagree_with_weights(tmp_path: Path) -> None:
    _, path = _saved_tiny(tmp_path, conv_channels=4, hidden=8)
    side = sidecar_path(path)
    raw = json.loads(side.read_text())
    raw["widths"]["hidden"] = 9
    side.write_text(json.dumps(raw))
    with pytest.raises(ModelsError, match="does not match architecture tiny_cnn"):
        load_checkpoint(path)


def test_read_checkpoint_meta_refuses_unreadable_sidecar(tmp_path: Path) -> None:
    _, path = _saved_tiny(tmp_path)
    sidecar_path(path).write_text("{not json")
    with pytest.raises(ModelsError, match="sidecar .* is unreadable"):
        read_checkpoint_meta(path)
