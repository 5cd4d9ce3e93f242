"""runtime_bench.session: model-file checks, provider resolution, no silent fallback."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)

from onnxship.core.errors import CoreError
from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.session import (
    CPU_EP,
    CUDA_EP,
    GraphOptimization,
    SessionConfig,
    check_model_file,
    create_session,
    resolve_provider,
)

HAS_CUDA = CUDA_EP in ort.get_available_providers()


@pytest.fixture
def linear(tmp_path: Path) -> Path:
    return tiny.linear_classifier(tmp_path / "linear.onnx")


def test_resolve_provider_maps_aliases_and_keeps_ep_names():
    assert resolve_provider("cpu") == CPU_EP
    assert resolve_provider("CUDA") == CUDA_EP
    assert resolve_provider("OpenVINOExecutionProvider") == "OpenVINOExecutionProvider"


def test_check_model_file_accepts_inline_and_external_data(tmp_path: Path, linear: Path):
    check_model_file(linear)
    check_model_file(tiny.external_data_model(tmp_path))


def test_check_model_file_rejects_missing_file(tmp_path: Path):
    with pytest.raises(CoreError, match="does not exist") as info:
        check_model_file(tmp_path / "nope.onnx")
    assert info.value.exit_code == 2


def test_check_model_file_rejects_folder_and_empty_file(tmp_path: Path):
    with pytest.raises(CoreError, match="not a file"):
        check_model_file(tmp_path)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(CoreError, match="empty"):
        check_model_file(empty)


@pytest.mark.parametrize(
    "payload",
    [b"hello, this is text\n", b'{"json": true}', bytes(range(256)), b"\x08\xff\xff\xff\xff\x0f"],
)
def test_check_model_file_rejects_non_onnx_bytes(tmp_path: Path, payload: bytes):
    path = tmp_path / "bad.onnx"
    path.write_bytes(payload)
    with pytest.raises(CoreError, match="not an ONNX model") as info:
        check_model_file(path)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.99])
def test_check_model_file_rejects_truncated_file(tmp_path: Path, linear: Path, keep: float):
    data = linear.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CoreError, match="truncated") as info:
        check_model_file(cut)
    assert str(cut) in str(info.value)


def test_check_model_file_names_missing_sidecar(tmp_path: Path):
    path = tiny.external_data_model(tmp_path, sidecar="weights.bin")
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(CoreError, match="sidecar 'weights.bin', which is missing") as info:
        check_model_file(path)
    assert info.value.exit_code == 2


def test_check_model_file_rejects_short_sidecar(tmp_path: Path):
    path = tiny.external_data_model(tmp_path)
    sidecar = tmp_path / "ext.data"
    sidecar.write_bytes(sidecar.read_bytes()[:100])
    with pytest.raises(CoreError, match=r"which has 100 bytes \(truncated\)"):
        check_model_file(path)


def test_create_session_runs_on_cpu_and_counts_nodes(linear: Path):
    handle = create_session(
        linear, "cpu", SessionConfig(graph_optimization=GraphOptimization.DISABLE)
    )
    assert handle.provider == CPU_EP
    assert handle.providers[0] == CPU_EP
    assert handle.nodes_per_provider == {CPU_EP: 3}  # Flatten, MatMul, Add unoptimised
    assert handle.create_ms > 0
    assert handle.config["intra_op_threads"] == 1
    assert handle.session._enable_fallback is False


def test_create_session_optimised_graph_reports_cpu_nodes_only(linear: Path):
    handle = create_session(linear)
    assert set(handle.nodes_per_provider) == {CPU_EP}
    assert 1 <= handle.nodes_per_provider[CPU_EP] <= 3


def test_session_config_validates_and_normalises():
    cfg = SessionConfig(provider_options={"b": 2, "a": "x"}, graph_optimization="basic")
    assert cfg.provider_options == (("a", "x"), ("b", "2"))
    assert cfg.graph_optimization is GraphOptimization.BASIC
    with pytest.raises(BenchError, match="intra_op_threads"):
        SessionConfig(intra_op_threads=-1)
    with pytest.raises(BenchError, match="unknown graph optimisation level"):
        SessionConfig(graph_optimization="max")


def test_create_session_unknown_ep_lists_available(linear: Path):
    with pytest.raises(BenchError, match="unknown execution provider 'NoSuchEP'") as info:
        create_session(linear, "NoSuchEP")
    assert "CPUExecutionProvider" in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.skipif(HAS_CUDA, reason="this install has CUDAExecutionProvider")
def test_create_session_cuda_unavailable_names_fix(linear: Path):
    with pytest.raises(BenchError) as info:
        create_session(linear, "cuda")
    message = str(info.value)
    assert "no CUDAExecutionProvider" in message
    assert "available: " in message and "CPUExecutionProvider" in message
    assert "pip uninstall onnxruntime && pip install onnxruntime-gpu" in message
    assert info.value.exit_code == 2


def test_create_session_known_ep_absent_from_build(linear: Path):
    absent = [p for p in ort.get_all_providers() if p not in ort.get_available_providers()]
    if not absent:
        pytest.skip("this build has every EP it knows")
    with pytest.raises(BenchError, match="not in this onnxruntime"):
        create_session(linear, absent[0])


def test_create_session_wraps_ort_load_errors(tmp_path: Path):
    """A well-formed protobuf that ORT rejects (an operator that does not exist)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path / "badop.onnx"
    onnx.save(model, path)
    with pytest.raises(BenchError, match="could not create a CPUExecutionProvider session"):
        create_session(path)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="CUDAExecutionProvider absent")
def test_create_session_cuda_first_provider_is_cuda(linear: Path):
    handle = create_session(linear, "cuda")
    assert handle.providers[0] == CUDA_EP
    assert handle.nodes_per_provider is None or CUDA_EP in handle.nodes_per_provider
