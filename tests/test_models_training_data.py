"""MNIST for the PyTorch side: data-root resolution, missing and corrupt files, the splits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from onnxship.core import mnist
from onnxship.models import training_data
from onnxship.models.errors import ModelsError

FOUR_FILES = mnist.MNIST_FILES


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, n_train: int = 6000, n_test: int = 20) -> Path:
    """A tiny MNIST in torchvision's layout with valid headers (random pixels)."""
    raw = mnist.raw_dir(root)
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for images, labels, n in (
        (mnist.TRAIN_IMAGES, mnist.TRAIN_LABELS, n_train),
        (mnist.TEST_IMAGES, mnist.TEST_LABELS, n_test),
    ):
        _write_idx(raw / images, rng.integers(0, 256, (n, 28, 28)), mnist.IMAGE_MAGIC)
        _write_idx(raw / labels, rng.integers(0, 10, (n,)), mnist.LABEL_MAGIC)
    return raw


def test_resolve_data_root_prefers_flag_then_env_then_dot_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(mnist.DATA_DIR_ENV, str(tmp_path / "from_env"))
    assert mnist.resolve_data_root(tmp_path / "from_flag") == tmp_path / "from_flag"
    assert mnist.resolve_data_root(None) == tmp_path / "from_env"
    monkeypatch.delenv(mnist.DATA_DIR_ENV)
    assert mnist.resolve_data_root(None) == Path("./data")


def test_ensure_mnist_names_folder_and_four_files_when_missing_and_download_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(training_data.NO_DOWNLOAD_ENV, "1")
    with pytest.raises(ModelsError) as info:
        training_data.ensure_mnist(tmp_path)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert str(mnist.raw_dir(tmp_path)) in message
    assert all(name in message for name in FOUR_FILES)
    assert "\n" not in message
    assert not (tmp_path / "MNIST").exists()  # nothing created when download is off


def test_ensure_mnist_reports_one_line_error_when_download_fails_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real torchvision download path, pointed at a closed local port so the test is
    offline and fails within milliseconds on any machine."""
    from torchvision.datasets import MNIST

    monkeypatch.delenv(training_data.NO_DOWNLOAD_ENV, raising=False)
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(ModelsError) as info:
        training_data.ensure_mnist(tmp_path)
    message = str(info.value)
    assert str(mnist.raw_dir(tmp_path)) in message
    assert all(name in message for name in FOUR_FILES)
    assert "download failed" in message
    assert "\n" not in message
    assert not (tmp_path / "MNIST").exists()  # the empty folders torchvision made are removed


def test_ensure_mnist_accepts_valid_files_without_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(training_data.NO_DOWNLOAD_ENV, "1")
    _fake_mnist(tmp_path)
    assert training_data.ensure_mnist(tmp_path) == tmp_path
    split = training_data.load_split(tmp_path, "test")
    assert tuple(split.x.shape) == (20, 1, 28, 28)
    assert split.x.dtype.is_floating_point and split.y.dtype.is_signed


def _wrong_magic(blob: bytes) -> bytes:
    return (1234).to_bytes(4, "big") + blob[4:]


def _truncated(blob: bytes) -> bytes:
    return blob[:-100]


@pytest.mark.parametrize(
    ("file", "corrupt", "split", "expected"),
    [
        (mnist.TEST_LABELS, _wrong_magic, "test", ["magic number 1234", str(mnist.LABEL_MAGIC)]),
        (mnist.TRAIN_IMAGES, _truncated, "fit", ["truncated", "(6000, 28, 28)"]),
    ],
    ids=["magic-is-wrong", "truncated"],
)
def test_ensure_mnist_refuses_idx_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    file: str,
    corrupt: Callable[[bytes], bytes],
    split: str,
    expected: list[str],
) -> None:
    monkeypatch.setenv(training_data.NO_DOWNLOAD_ENV, "1")
    bad = _fake_mnist(tmp_path) / file
    bad.write_bytes(corrupt(bad.read_bytes()))
    with pytest.raises(ModelsError) as info:
        training_data.load_split(tmp_path, split)
    message = str(info.value)
    assert str(bad) in message
    for part in expected:
        assert part in message


def test_load_split_rejects_unknown_split_name(mnist_root: Path) -> None:
    with pytest.raises(ModelsError, match="unknown split 'valid'.*train, fit, val, test"):
        training_data.load_split(mnist_root, "valid")


def test_validation_split_is_fixed_disjoint_and_matches_torch_free_loader(mnist_root: Path) -> None:
    fit_idx, val_idx = mnist.validation_split(60000)
    again_fit, again_val = mnist.validation_split(60000)
    np.testing.assert_array_equal(val_idx, again_val)
    np.testing.assert_array_equal(fit_idx, again_fit)
    assert len(val_idx) == mnist.VALIDATION_SIZE == 5000 and len(fit_idx) == 55000
    assert np.intersect1d(fit_idx, val_idx).size == 0
    assert np.union1d(fit_idx, val_idx).size == 60000

    fit = training_data.load_split(mnist_root, "fit")
    val = training_data.load_split(mnist_root, "val")
    test = training_data.load_split(mnist_root, "test")
    assert (len(fit), len(val), len(test)) == (55000, 5000, 10000)
    # The torch side and the torch-free side hold out exactly the same images.
    plain_val = mnist.load_split(mnist_root, "val")
    np.testing.assert_array_equal(val.y.numpy(), plain_val.labels)
    np.testing.assert_allclose(val.x.numpy(), mnist.normalize(plain_val.images), atol=1e-6)
    # Normalisation: pixel 0 maps to -mean/std; the fit split is ~zero-mean, unit-std.
    assert float(fit.x.min()) == pytest.approx(-mnist.MNIST_MEAN[0] / mnist.MNIST_STD[0], abs=1e-5)
    assert float(fit.x.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(fit.x.std()) == pytest.approx(1.0, abs=0.01)
