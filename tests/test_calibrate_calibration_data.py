"""Calibration sets: drawn from MNIST's validation part only, re-iterable, saved reproducibly,
and every bad input rejected with a message that names the model's expected input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxship.calibrate.calibration_data import (
    INDICES_KEY,
    SOURCE_SPLIT,
    CalibrationConfig,
    CalibrationSet,
    InputSpec,
    calibration_set_from_mnist,
    calibration_set_from_npz,
)
from onnxship.calibrate.errors import CalibrateError
from onnxship.core import mnist

SPEC = InputSpec(name="input", shape=("batch", 1, 28, 28), ort_type="tensor(float)")
MEAN, STD = (0.1307,), (0.3081,)


def _random_set(n: int = 10, batch: int = 4) -> CalibrationSet:
    x = np.random.default_rng(0).standard_normal((n, 1, 28, 28)).astype(np.float32)
    return CalibrationSet(x, input_name="input", batch_size=batch, source="test")


def test_calibration_set_from_mnist_draws_only_validation_images(
    mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits: list[str] = []
    real = mnist.load_split

    def spy(root: object, split: str) -> mnist.MnistSplit:
        splits.append(split)
        return real(root, split)  # type: ignore[arg-type]

    monkeypatch.setattr(mnist, "load_split", spy)
    calib = calibration_set_from_mnist(mnist_root, SPEC, MEAN, STD, CalibrationConfig(size=100))
    assert splits == ["val"]  # the test split is never opened
    assert calib.source == SOURCE_SPLIT
    _, val_idx = mnist.validation_split(60_000)
    assert calib.train_indices is not None
    assert np.isin(calib.train_indices, val_idx).all()
    assert len(set(calib.train_indices.tolist())) == 100
    train = real(mnist_root, "train")
    expected = mnist.normalize(train.images[calib.train_indices], MEAN, STD)
    np.testing.assert_array_equal(calib.inputs, expected)
    np.testing.assert_array_equal(calib.labels, train.labels[calib.train_indices])
    # Class-balanced: 100 images over 10 classes -> 10 each.
    assert np.bincount(calib.labels, minlength=10).tolist() == [10] * 10


def test_calibration_set_from_mnist_is_the_same_for_the_same_seed(mnist_root: Path) -> None:
    a = calibration_set_from_mnist(mnist_root, SPEC, MEAN, STD, CalibrationConfig(size=64))
    b = calibration_set_from_mnist(mnist_root, SPEC, MEAN, STD, CalibrationConfig(size=64))
    c = calibration_set_from_mnist(mnist_root, SPEC, MEAN, STD, CalibrationConfig(size=64, seed=1))
    assert a.sha256() == b.sha256()
    assert a.sha256() != c.sha256()


def test_calibration_set_iterates_many_times_in_batches() -> None:
    calib = _random_set(n=10, batch=4)
    first = [feed["input"].shape[0] for feed in calib]
    second = [feed["input"].shape[0] for feed in calib]
    assert first == second == [4, 4, 2]
    assert len(calib) == 3


def test_ort_reader_is_one_shot_and_supports_strided_ranges() -> None:
    calib = _random_set(n=10, batch=4)
    reader = calib.ort_reader()
    assert len(reader) == 3
    feeds = list(iter(reader.get_next, None))
    assert len(feeds) == 3 and reader.get_next() is None  # one-shot, as ORT expects
    reader.set_range(start_index=1, end_index=3)
    assert [f["input"].shape[0] for f in iter(reader.get_next, None)] == [4, 2]
    # A fresh reader starts over: the set itself is never exhausted.
    assert len(list(iter(calib.ort_reader().get_next, None))) == 3


def test_calibration_set_head_keeps_whole_batches() -> None:
    calib = _random_set(n=10, batch=4)
    assert calib.head(5).samples == 4
    assert calib.head(1).samples == 4  # never below one batch
    assert calib.head(100) is calib


def test_calibration_set_save_is_byte_reproducible_and_loads_back(tmp_path: Path) -> None:
    calib = _random_set()
    calib.train_indices = np.arange(10, dtype=np.int64)
    sha_a = calib.save(tmp_path / "a.npz")
    sha_b = calib.save(tmp_path / "b.npz")
    assert sha_a == sha_b == calib.sha256()
    with np.load(tmp_path / "a.npz") as data:
        assert sorted(data.files) == ["input", INDICES_KEY]
        np.testing.assert_array_equal(data["input"], calib.inputs)
    back = calibration_set_from_npz(tmp_path / "a.npz", SPEC, CalibrationConfig(batch_size=4))
    np.testing.assert_array_equal(back.inputs, calib.inputs)


@pytest.mark.parametrize("key", ["input", "x", "inputs", "anything"])
def test_calibration_set_from_npz_finds_the_inputs_array(tmp_path: Path, key: str) -> None:
    x = np.zeros((8, 1, 28, 28), np.float32)
    np.savez(tmp_path / "c.npz", **{key: x})
    calib = calibration_set_from_npz(tmp_path / "c.npz", SPEC, CalibrationConfig(batch_size=4))
    assert calib.samples == 8 and calib.source == "npz:c.npz"


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "user.npz"
    np.savez(path, **arrays)
    return path


def test_calibration_npz_with_wrong_dtype_names_the_model_input(tmp_path: Path) -> None:
    path = _npz(tmp_path, input=np.zeros((8, 1, 28, 28), np.float64))
    with pytest.raises(
        CalibrateError, match=r"dtype float64.*input 'input' float32 \[N, 1, 28, 28\]"
    ):
        calibration_set_from_npz(path, SPEC, CalibrationConfig(batch_size=4))


def test_calibration_npz_of_raw_uint8_pixels_is_rejected(tmp_path: Path) -> None:
    path = _npz(tmp_path, input=np.zeros((8, 1, 28, 28), np.uint8))
    with pytest.raises(CalibrateError, match="preprocessed, not raw pixels") as info:
        calibration_set_from_npz(path, SPEC, CalibrationConfig(batch_size=4))
    assert info.value.exit_code == 2


@pytest.mark.parametrize("shape", [(8, 28, 28), (8, 1, 32, 32), (8, 3, 28, 28)])
def test_calibration_npz_with_wrong_shape_names_the_model_input(
    tmp_path: Path, shape: tuple[int, ...]
) -> None:
    path = _npz(tmp_path, input=np.zeros(shape, np.float32))
    with pytest.raises(CalibrateError, match=r"shape .*input 'input' float32 \[N, 1, 28, 28\]"):
        calibration_set_from_npz(path, SPEC, CalibrationConfig(batch_size=4))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_calibration_npz_with_nan_or_inf_is_rejected(tmp_path: Path, bad: float) -> None:
    x = np.zeros((8, 1, 28, 28), np.float32)
    x[3, 0, 5, 5] = bad
    x[6, 0, 1, 1] = bad
    with pytest.raises(CalibrateError, match="NaN or Inf in 2 of 8 samples"):
        calibration_set_from_npz(_npz(tmp_path, input=x), SPEC, CalibrationConfig(batch_size=4))


def test_calibration_npz_that_is_empty_is_rejected(tmp_path: Path) -> None:
    path = _npz(tmp_path, input=np.zeros((0, 1, 28, 28), np.float32))
    with pytest.raises(CalibrateError, match="is empty"):
        calibration_set_from_npz(path, SPEC, CalibrationConfig(batch_size=4))


def test_calibration_npz_smaller_than_one_batch_is_rejected(tmp_path: Path) -> None:
    path = _npz(tmp_path, input=np.zeros((3, 1, 28, 28), np.float32))
    with pytest.raises(CalibrateError, match="3 samples, fewer than one batch \\(4\\)"):
        calibration_set_from_npz(path, SPEC, CalibrationConfig(batch_size=4))


def test_calibration_npz_with_ambiguous_arrays_is_rejected(tmp_path: Path) -> None:
    x = np.zeros((8, 1, 28, 28), np.float32)
    with pytest.raises(CalibrateError, match="expected one named 'input'"):
        calibration_set_from_npz(_npz(tmp_path, a=x, b=x), SPEC, CalibrationConfig(batch_size=4))


def test_calibration_npz_that_is_not_an_npz_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(CalibrateError, match="not a readable .npz"):
        calibration_set_from_npz(path, SPEC, CalibrationConfig())
    with pytest.raises(CalibrateError, match="does not exist"):
        calibration_set_from_npz(tmp_path / "missing.npz", SPEC, CalibrationConfig())


def test_calibration_config_smaller_than_one_batch_is_rejected() -> None:
    with pytest.raises(CalibrateError, match="smaller than one batch"):
        CalibrationConfig(size=8, batch_size=32).validate()
    with pytest.raises(CalibrateError, match=">= 1"):
        CalibrationConfig(size=0).validate()


def test_calibration_set_from_mnist_larger_than_validation_is_rejected(mnist_root: Path) -> None:
    with pytest.raises(CalibrateError, match=r"expected >= 12000 rows, found 5000.*at most 2500"):
        calibration_set_from_mnist(mnist_root, SPEC, MEAN, STD, CalibrationConfig(size=6000))


def test_calibration_set_from_npz_with_several_inputs_feeds_each_by_name(tmp_path: Path) -> None:
    specs = [
        InputSpec(name="image", shape=("batch", 1, 8, 8), ort_type="tensor(float)"),
        InputSpec(name="extra", shape=("batch", 3), ort_type="tensor(float)"),
    ]
    image = np.random.default_rng(0).standard_normal((10, 1, 8, 8)).astype(np.float32)
    extra = np.ones((10, 3), np.float32)
    path = _npz(tmp_path, image=image, extra=extra, y=np.zeros(10, np.int64))
    calib = calibration_set_from_npz(path, specs, CalibrationConfig(batch_size=4))
    batches = list(calib)
    assert [sorted(b) for b in batches] == [["extra", "image"]] * 3
    assert [b["image"].shape[0] for b in batches] == [4, 4, 2]
    assert calib.head(4).samples == 4 and sorted(calib.head(4).feeds) == ["extra", "image"]
    with np.load(path) as data:
        np.savez(tmp_path / "one.npz", image=data["image"])
    with pytest.raises(CalibrateError, match="input 'extra'.*one array per input"):
        calibration_set_from_npz(tmp_path / "one.npz", specs, CalibrationConfig(batch_size=4))


def test_calibration_and_evaluation_from_an_npz_of_mnist_validation_equal_mnist_and_are_disjoint(
    mnist_root: Path, tmp_path: Path
) -> None:
    """The pipeline's data/val.npz: the calibration set drawn from it is MNIST's, byte for
    byte, and the budget is measured on exactly the other validation images."""
    from onnxship.calibrate.calibration_data import (
        calibration_and_evaluation_from_npz,
        evaluation_set_from_mnist,
    )
    from onnxship.core.dataset import npz_bytes

    val = tmp_path / "val.npz"
    val.write_bytes(npz_bytes(mnist.split_npz_arrays(mnist_root, "val", MEAN, STD)))
    cfg = CalibrationConfig(size=64)
    calib, evalset = calibration_and_evaluation_from_npz(val, [SPEC], cfg, batch_size=500)
    want = calibration_set_from_mnist(mnist_root, SPEC, MEAN, STD, cfg)
    assert calib.sha256() == want.sha256()
    want_eval = evaluation_set_from_mnist(mnist_root, want, SPEC, MEAN, STD)
    assert evalset.samples == want_eval.samples == 5000 - 64
    np.testing.assert_array_equal(evalset.inputs[SPEC.name], want_eval.inputs[SPEC.name])
    np.testing.assert_array_equal(evalset.labels, want_eval.labels)
    drawn = {tuple(r) for r in calib.inputs.reshape(64, -1)[:, ::7].tolist()}
    held = {tuple(r) for r in evalset.inputs[SPEC.name].reshape(evalset.samples, -1)[:, ::7]}
    assert calib.train_indices is not None and not drawn & held
    with pytest.raises(CalibrateError, match=r"expected >= 5002 rows, found 5000"):
        calibration_and_evaluation_from_npz(val, [SPEC], CalibrationConfig(size=2501))


def test_budget_block_says_when_max_drop_is_finer_than_one_sample() -> None:
    from onnxship.calibrate.calibration_data import EvaluationSet

    x = np.zeros((64, 1, 4, 4), np.float32)
    labelled = EvaluationSet({"input": x}, np.zeros(64, np.int64), source="npz:val.npz")
    block = labelled.describe(0.003, 25.0)
    assert block["one_sample"] == pytest.approx(1 / 64)
    assert block["resolution_note"] == (
        "max_drop 0.30 pp is below one of the 64 samples (1.56 pp): any changed prediction "
        "breaks the budget; more validation rows measure it finer"
    )
    # 0.02 on 64 samples: one sample (1.56 pp) fits in the budget, so no note
    assert "resolution_note" not in labelled.describe(0.02, 25.0)
