"""runtime_bench.inputs: feeds from the input spec (random or .npz), dynamic dimensions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)

from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.inputs import input_specs, load_npz, make_feeds, random_feeds
from onnxship.runtime_bench.session import create_session


def test_random_feeds_shapes_dtypes_and_no_zeros(tmp_path: Path):
    handle = create_session(tiny.two_input_model(tmp_path / "two.onnx"))
    feeds = random_feeds(handle, 7, seed=3)
    assert feeds["x"].shape == (7, 4) and feeds["x"].dtype == np.float32
    assert feeds["ids"].shape == (7, 4) and feeds["ids"].dtype == np.int64
    assert np.all(feeds["x"] != 0) and np.all(feeds["ids"] != 0)
    again = random_feeds(handle, 7, seed=3)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    other = random_feeds(handle, 7, seed=4)
    assert not np.array_equal(feeds["x"], other["x"])
    handle.session.run(None, feeds)


def test_input_specs_report_symbolic_dims(tmp_path: Path):
    handle = create_session(tiny.seq_model(tmp_path / "seq.onnx"))
    (spec,) = input_specs(handle)
    assert spec.shape == ("batch", "seq") and spec.ort_type == "tensor(float)"


def test_make_feeds_non_batch_dynamic_dim_needs_value(tmp_path: Path):
    handle = create_session(tiny.seq_model(tmp_path / "seq.onnx"))
    with pytest.raises(BenchError, match=r"axis 1 is 'seq'.*pass --dim seq=N") as info:
        make_feeds(handle, 4)
    assert info.value.exit_code == 2
    feeds = make_feeds(handle, 4, dim_values={"seq": 9})
    assert feeds["x"].shape == (4, 9)


@pytest.mark.parametrize("bad", [0, -1])
def test_make_feeds_rejects_batch_size_below_one(tmp_path: Path, bad: int):
    handle = create_session(tiny.linear_classifier(tmp_path / "m.onnx"))
    with pytest.raises(BenchError, match=f"batch size must be >= 1, got {bad}"):
        make_feeds(handle, bad)


def test_make_feeds_fixed_batch_dim_mismatch(tmp_path: Path):
    handle = create_session(tiny.linear_classifier(tmp_path / "b1.onnx", batch=1))
    assert make_feeds(handle, 1)["input"].shape == (1, 1, 28, 28)
    with pytest.raises(BenchError, match="fixed batch dimension 1.*batch size 64"):
        make_feeds(handle, 64)


def test_npz_feeds_cycle_rows_and_cast(tmp_path: Path):
    handle = create_session(tiny.linear_classifier(tmp_path / "m.onnx"))
    data = np.arange(3 * 784, dtype=np.float64).reshape(3, 1, 28, 28)
    np.savez(tmp_path / "in.npz", whatever=data)
    arrays = load_npz(tmp_path / "in.npz")
    feeds = make_feeds(handle, 5, npz=arrays)  # one input, one array: the name need not match
    x = feeds["input"]
    assert x.dtype == np.float32 and x.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(x[3], data[0].astype(np.float32))
    np.testing.assert_array_equal(x[4], data[1].astype(np.float32))


def test_npz_feeds_missing_input_and_bad_shape(tmp_path: Path):
    two = create_session(tiny.two_input_model(tmp_path / "two.onnx"))
    with pytest.raises(BenchError, match=r"need \['ids'\]"):
        make_feeds(two, 2, npz={"x": np.ones((2, 4), np.float32)})
    lin = create_session(tiny.linear_classifier(tmp_path / "m.onnx"))
    with pytest.raises(BenchError, match=r"has shape \[2, 784\]"):
        make_feeds(lin, 2, npz={"input": np.ones((2, 784), np.float32)})


def test_load_npz_rejects_missing_and_garbage(tmp_path: Path):
    with pytest.raises(BenchError, match="does not exist"):
        load_npz(tmp_path / "none.npz")
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(BenchError, match="not a readable .npz"):
        load_npz(bad)
