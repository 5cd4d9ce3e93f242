"""export.checks on tiny hand-built graphs: file checks, describe_onnx, logit comparison.

The graph used here (built with onnx.helper):

    input [batch,1,28,28] -> Flatten -> MatMul(W 784x10) -> Add(b) -> logits [batch,10]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)
from onnx import numpy_helper

from onnxship.export.checks import (
    check_onnx_file,
    compare_logits,
    describe_onnx,
    onnx_parity,
    ort_session,
    run_batched,
)
from onnxship.export.errors import ExportError


def linear_model() -> onnx.ModelProto:
    """The graph above, with small random weights and a zero bias (logits = flatten(x) @ W)."""
    w = np.random.default_rng(0).normal(0, 0.05, (784, 10)).astype(np.float32)
    return tiny.linear_model(w, np.zeros(10, np.float32))


@pytest.fixture
def linear_path(tmp_path: Path) -> Path:
    path = tmp_path / "linear.onnx"
    onnx.save_model(linear_model(), path)
    return path


def test_check_onnx_file_accepts_valid_model(linear_path: Path) -> None:
    model = check_onnx_file(linear_path)
    assert [n.op_type for n in model.graph.node] == ["Flatten", "MatMul", "Add"]


def test_check_onnx_file_reports_truncated_file_in_one_line(
    linear_path: Path, tmp_path: Path
) -> None:
    data = linear_path.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError) as info:
        check_onnx_file(bad)
    message = str(info.value)
    assert "corrupt or truncated" in message and str(bad) in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_check_onnx_file_reports_empty_missing_and_garbage_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ExportError, match="is empty"):
        check_onnx_file(empty)
    with pytest.raises(ExportError, match="does not exist"):
        check_onnx_file(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("this is not an onnx model\n" * 20)
    with pytest.raises(ExportError, match="corrupt or truncated|not an ONNX model"):
        check_onnx_file(garbage)


def test_check_onnx_file_reports_checker_failure_when_graph_is_invalid(tmp_path: Path) -> None:
    model = linear_model()
    model.graph.node[1].input[1] = "W_missing"  # refers to a tensor nothing defines
    path = tmp_path / "invalid.onnx"
    onnx.save_model(model, path)
    with pytest.raises(ExportError, match="fails onnx.checker") as info:
        check_onnx_file(path)
    assert "\n" not in str(info.value)


def test_describe_onnx_reports_symbolic_dims_and_dtypes(linear_path: Path) -> None:
    desc = describe_onnx(linear_path)
    assert desc["opset"] == 18
    assert desc["inputs"] == [{"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32"}]
    assert desc["outputs"] == [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]


def test_compare_logits_names_worst_element_when_outputs_differ() -> None:
    ref = np.zeros((20, 10), np.float32)
    ref[:, 0] = 1.0  # every sample predicts class 0
    cand = ref.copy()
    cand[3, 5] = 2.5  # sample 3 now predicts class 5, |Δ| = 2.5
    cand[7, 2] = 1e-3
    result = compare_logits(ref, {1: cand, 4: cand}, reference_name="pytorch", candidate_name="ort")
    assert result.max_abs_logit_diff == pytest.approx(2.5)
    assert (result.worst.sample, result.worst.cls) == (3, 5)
    assert result.argmax_agreement == pytest.approx(19 / 20)
    assert result.disagreements == 1
    with pytest.raises(ExportError) as info:
        result.require(what="m.onnx", atol=1e-4, min_agreement=1.0, fix="fix it")
    message = str(info.value)
    assert info.value.exit_code == 1
    assert (
        "sample 3, class 5" in message
        and "pytorch 0.000000" in message
        and "ort 2.500000" in message
    )
    assert "argmax agreement 95.0000%" in message


def test_compare_logits_passes_within_tolerance() -> None:
    ref = np.random.default_rng(1).normal(size=(50, 10)).astype(np.float32)
    cand = ref + np.float32(5e-5)
    result = compare_logits(ref, {1: cand, 50: cand}, reference_name="a", candidate_name="b")
    result.require(what="m", atol=1e-4, min_agreement=1.0, fix="")
    assert result.argmax_agreement == 1.0
    assert result.max_abs_logit_diff == pytest.approx(5e-5, rel=1e-2)


def test_onnx_parity_runs_real_session_at_each_batch_size(linear_path: Path) -> None:
    model = linear_model()
    w = numpy_helper.to_array(model.graph.initializer[0])
    x = np.random.default_rng(2).normal(size=(37, 1, 28, 28)).astype(np.float32)
    reference = x.reshape(37, -1) @ w
    result = onnx_parity(linear_path, x, reference, batch_sizes=(1, 7, 256), reference_name="numpy")
    assert result.batch_sizes == (1, 7, 256)
    assert result.max_abs_logit_diff <= 1e-4
    assert result.argmax_agreement == 1.0
    session = ort_session(linear_path)
    assert run_batched(session, x, 7).shape == (37, 10)
