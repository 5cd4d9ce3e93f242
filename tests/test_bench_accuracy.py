"""runtime_bench.accuracy: exact top-1 on crafted data, real MNIST agreement, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)

from onnxship.core.errors import CoreError
from onnxship.core.mnist import load_split, normalize
from onnxship.runtime_bench.accuracy import evaluate_onnx, top1_on_arrays
from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.session import create_session


@pytest.fixture
def crafted_root(tmp_path: Path) -> Path:
    """250 test images, exactly 173 of which show their label to `pixel_classifier`."""
    images, labels = tiny.crafted_mnist(250, 173, seed=1)
    return tiny.write_fake_mnist(tmp_path / "data", images, labels)


def test_evaluate_onnx_exact_accuracy_on_crafted_data(tmp_path: Path, crafted_root: Path):
    model = tiny.pixel_classifier(tmp_path / "pixel.onnx")
    # batch 64 leaves a partial last batch (250 = 3 * 64 + 58)
    result = evaluate_onnx(model, data_dir=crafted_root, batch_size=64)
    assert result["correct"] == 173 and result["n"] == 250
    assert result["top1"] == 173 / 250
    assert result["split"] == "test" and result["mean"] == [0.1307] and result["std"] == [0.3081]
    assert result["normalization_from"] == "model metadata"
    assert len(result["model_sha256"]) == 64


def test_evaluate_onnx_fixed_batch_model_pads_last_batch(tmp_path: Path, crafted_root: Path):
    """A batch-1 model gives the same count as the dynamic-batch one."""
    dyn = tiny.linear_classifier(tmp_path / "dyn.onnx")
    b1 = tiny.linear_classifier(tmp_path / "b1.onnx", batch=1)
    assert (
        evaluate_onnx(b1, data_dir=crafted_root)["correct"]
        == evaluate_onnx(dyn, data_dir=crafted_root, batch_size=32)["correct"]
    )


def test_evaluate_onnx_real_mnist_matches_numpy_and_is_deterministic(
    tmp_path: Path, mnist_root: Path
):
    model = tiny.linear_classifier(tmp_path / "lin.onnx", seed=5)
    first = evaluate_onnx(model, data_dir=mnist_root)
    second = evaluate_onnx(model, data_dir=mnist_root)
    assert first == second  # exactly the same top1 / correct
    assert first["n"] == 10_000
    data = load_split(mnist_root, "test")
    w, b = tiny.linear_weights(5)
    x = normalize(data.images).reshape(10_000, 784).astype(np.float64)
    expected = np.mean(np.argmax(x @ w + b, axis=1) == data.labels)
    # float32 (ORT) vs float64 (numpy) may flip a near-tie or two out of 10,000
    assert abs(first["top1"] - expected) <= 3 / 10_000


def test_top1_on_arrays_flat_input_model(tmp_path: Path):
    handle = create_session(tiny.pixel_classifier(tmp_path / "p.onnx"))
    images, labels = tiny.crafted_mnist(40, 30, seed=2)
    assert top1_on_arrays(handle, normalize(images), labels, batch_size=7) == 30 / 40
    flat = create_session(tiny.linear_classifier(tmp_path / "flat.onnx", flat_input=True))
    score = top1_on_arrays(flat.session, normalize(images), labels)
    assert 0.0 <= score <= 1.0


def test_evaluate_onnx_without_metadata_asks_for_mean_std(tmp_path: Path, crafted_root: Path):
    model = tiny.linear_classifier(tmp_path / "nometa.onnx", metadata=False)
    with pytest.raises(CoreError, match="no onnxship metadata") as info:
        evaluate_onnx(model, data_dir=crafted_root)
    assert info.value.exit_code == 2
    result = evaluate_onnx(model, data_dir=crafted_root, mean=(0.1307,), std=(0.3081,))
    assert result["normalization_from"] == "arguments"


def test_evaluate_onnx_missing_data_names_files(tmp_path: Path):
    model = tiny.pixel_classifier(tmp_path / "p.onnx")
    with pytest.raises(CoreError, match="t10k-images-idx3-ubyte"):
        evaluate_onnx(model, data_dir=tmp_path / "empty")


def test_top1_on_arrays_rejects_multi_input_models(tmp_path: Path):
    handle = create_session(tiny.two_input_model(tmp_path / "two.onnx"))
    with pytest.raises(BenchError, match="one input"):
        top1_on_arrays(handle, np.zeros((2, 4), np.float32), np.zeros(2))


# ------------------------------------------------------------------ your own data (npz)


def test_evaluate_npz_exact_top1_and_fixed_batch_padding(tmp_path: Path):
    """The crafted images as a preprocessed npz: exactly 173 of 250 right, fixed batch too."""
    from onnxship.runtime_bench.accuracy import evaluate_npz

    images, labels = tiny.crafted_mnist(250, 173, seed=1)
    data = tmp_path / "test.npz"
    np.savez(data, x=normalize(images), y=labels.astype(np.int64))
    result = evaluate_npz(tiny.pixel_classifier(tmp_path / "p.onnx"), data, batch_size=64)
    assert (result["correct"], result["n"], result["metric"]) == (173, 250, "top1")
    dyn = evaluate_npz(tiny.linear_classifier(tmp_path / "dyn.onnx"), data, batch_size=32)
    b1 = evaluate_npz(tiny.linear_classifier(tmp_path / "b1.onnx", batch=1), data)
    assert b1["correct"] == dyn["correct"]


def test_evaluate_npz_integer_input_takes_its_own_dtype(tmp_path: Path):
    """Non-image inputs: one array per input name; an int64 input takes int64 data."""
    from onnxship.runtime_bench.accuracy import evaluate_npz

    model = tiny.two_input_model(tmp_path / "two.onnx")
    x = np.zeros((6, 4), np.float32)
    ids = np.tile(np.arange(4, dtype=np.int64), (6, 1))  # y = x + ids: argmax is class 3
    np.savez(tmp_path / "d.npz", x=x, ids=ids, y=np.full(6, 3, np.int64))
    assert evaluate_npz(model, tmp_path / "d.npz")["top1"] == 1.0
    np.savez(tmp_path / "f.npz", x=x, ids=ids.astype(np.float32), y=np.full(6, 3, np.int64))
    with pytest.raises(BenchError, match="'ids' has dtype float32, the model input expects int64"):
        evaluate_npz(model, tmp_path / "f.npz")


def test_fidelity_is_agreement_for_class_scores_and_sqnr_otherwise():
    from onnxship.runtime_bench.accuracy import SQNR_CAP_DB, fidelity

    ref = np.ones((10, 4), np.float32)
    ref[:, 0] = 2.0
    cand = ref.copy()
    cand[:3, 1] = 3.0  # 3 of 10 argmaxes move
    fid = fidelity(ref, cand)
    assert fid["metric"] == "top1_agreement" and fid["value"] == pytest.approx(0.7)
    assert fid["max_abs_error"] == pytest.approx(2.0)
    maps = np.ones((5, 2, 3, 3), np.float32)
    fid = fidelity(maps, maps * 1.1)  # noise = 1 % of the signal's energy: 20 dB
    assert fid["metric"] == "sqnr_db" and fid["value"] == pytest.approx(20.0, abs=1e-3)
    assert fidelity(maps, maps)["sqnr_db"] == SQNR_CAP_DB
    with pytest.raises(BenchError, match="same output"):
        fidelity(maps, maps[:, :1])
