"""FP32 ONNX -> FP16 ONNX: structure (node and initializer dtypes) and numbers (parity with
the FP32 model on the MNIST test set) asserted separately, in real ONNX Runtime sessions.

The FP32 source is the trained SimpleCNN exported with the (fast) TorchScript exporter: the
FP16 stage does not depend on which exporter wrote its input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)
from onnx import TensorProto

from onnxship.core import model_meta
from onnxship.core.artifact import sha256_file
from onnxship.core.mnist import MNIST_MEAN, MNIST_STD
from onnxship.export.checks import check_onnx_file, describe_onnx, ort_session, run_batched
from onnxship.export.errors import ExportError
from onnxship.export.fp16 import FP16_MAX, Fp16Config, fp16_from_onnx
from onnxship.export.onnx_export import (
    ExportConfig,
    ExporterKind,
    mnist_test_inputs,
    onnx_from_checkpoint,
)


@pytest.fixture(scope="module")
def fp32_path(
    tmp_path_factory: pytest.TempPathFactory, trained_checkpoint: Path, mnist_root: Path
) -> Path:
    out = tmp_path_factory.mktemp("fp32") / "teacher-fp32.onnx"
    cfg = ExportConfig(exporter=ExporterKind.TORCHSCRIPT)
    onnx_from_checkpoint(trained_checkpoint, cfg, out, data_dir=mnist_root)
    return out


@pytest.fixture(scope="module")
def fp16_artifact(tmp_path_factory: pytest.TempPathFactory, fp32_path: Path, mnist_root: Path):
    out = tmp_path_factory.mktemp("fp16") / "teacher-fp16.onnx"
    return fp16_from_onnx(fp32_path, Fp16Config(), out, data_dir=mnist_root)


# ------------------------------------------------------------------------------- structure


def test_fp16_structure_converts_weights_and_keeps_float32_io(fp16_artifact) -> None:
    model = onnx.load(fp16_artifact.path)
    init_types = sorted(
        (i.name, i.data_type) for i in model.graph.initializer if i.data_type != TensorProto.INT64
    )
    assert init_types and all(t == TensorProto.FLOAT16 for _, t in init_types)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Cast") == 2  # float32 input -> float16 ... float16 -> float32 logits
    assert ops[0] == "Cast" and ops[-1] == "Cast"  # topologically sorted (converter appends)
    assert ops.count("Conv") == 1 and ops.count("Gemm") == 2
    desc = describe_onnx(fp16_artifact.path)
    assert desc["inputs"] == [{"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32"}]
    assert desc["outputs"] == [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]
    check_onnx_file(fp16_artifact.path)  # onnx.checker full_check + strict shape inference
    assert fp16_artifact.metrics["initializer_dtypes"]["float16"] == len(init_types)


def test_fp16_metadata_names_precision_and_fp32_parent(fp16_artifact, fp32_path: Path) -> None:
    raw = dict(ort_session(fp16_artifact.path).get_modelmeta().custom_metadata_map)
    assert raw[model_meta.PRECISION] == "fp16"
    assert raw[model_meta.SOURCE_SHA256] == sha256_file(fp32_path)
    assert fp16_artifact.parent_sha256 == sha256_file(fp32_path)
    meta = model_meta.parse_meta(raw, source="fp16")
    assert meta.mean == MNIST_MEAN and meta.std == MNIST_STD
    assert meta.architecture == "simple_cnn"


def test_fp16_file_is_at_most_55_percent_of_fp32(fp16_artifact, fp32_path: Path) -> None:
    ratio = fp16_artifact.path.stat().st_size / fp32_path.stat().st_size
    assert ratio <= 0.55
    assert fp16_artifact.metrics["bytes_ratio"] == pytest.approx(ratio, abs=1e-4)
    assert fp16_artifact.metrics["bytes_ratio_ok"] is True


# --------------------------------------------------------------------------------- numbers


def test_fp16_parity_with_fp32_on_full_test_set(
    fp16_artifact, fp32_path: Path, mnist_root: Path
) -> None:
    x, labels = mnist_test_inputs(mnist_root, 10_000, MNIST_MEAN, MNIST_STD)
    ref = run_batched(ort_session(fp32_path), x, 1000)
    got = run_batched(ort_session(fp16_artifact.path), x, 1000)
    agreement = float((ref.argmax(1) == got.argmax(1)).mean())
    assert agreement >= 0.999
    # float16 keeps ~3 significant digits; logits of this model are O(10): |Δ| well under 0.05
    assert float(np.max(np.abs(ref - got))) < 0.05
    parity = fp16_artifact.metrics["parity"]
    assert parity["samples"] == 10_000 and parity["batch_sizes"] == [1, 1000]
    assert parity["argmax_agreement"] == pytest.approx(agreement, abs=1e-4)
    assert parity["max_abs_logit_diff"] == pytest.approx(float(np.max(np.abs(ref - got))), rel=0.05)
    top1 = fp16_artifact.metrics["top1_on_parity_samples"]
    assert abs(top1["fp16"] - float((got.argmax(1) == labels).mean())) < 1e-9
    assert abs(top1["fp16"] - top1["fp32"]) <= 0.001


def test_fp16_without_keep_io_types_takes_float16_input(
    fp32_path: Path, mnist_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "io16.onnx"
    cfg = Fp16Config(keep_io_types=False, parity_samples=1000)
    artifact = fp16_from_onnx(fp32_path, cfg, out, data_dir=mnist_root)
    desc = describe_onnx(out)
    assert desc["inputs"][0]["dtype"] == "float16" and desc["outputs"][0]["dtype"] == "float16"
    assert artifact.metrics["parity"]["argmax_agreement"] >= 0.999


# ------------------------------------------------------------------------ fp16 range report


def _linear_classifier(tmp_path: Path, w: np.ndarray, b: np.ndarray) -> Path:
    """input [batch,1,28,28] -> Flatten -> MatMul(W) -> Add(b) -> logits, with onnxship metadata."""
    model = tiny.linear_model(w, b)
    model_meta.set_metadata(
        model,
        {
            model_meta.INPUT_MEAN: json.dumps(list(MNIST_MEAN)),
            model_meta.INPUT_STD: json.dumps(list(MNIST_STD)),
            model_meta.CLASS_LABELS: json.dumps([str(i) for i in range(10)]),
            model_meta.PRECISION: "fp32",
        },
    )
    path = tmp_path / "linear-fp32.onnx"
    onnx.save_model(model, path)
    return path


def test_fp16_refuses_weights_beyond_float16_range(tmp_path: Path, mnist_root: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (784, 10)).astype(np.float32)
    w[0, 4] = 1.0e5  # pixel (0, 0), class 4: beyond float16's 65504
    b = np.zeros(10, np.float32)
    src = _linear_classifier(tmp_path, w, b)
    out = tmp_path / "linear-fp16.onnx"
    with pytest.raises(ExportError) as info:
        fp16_from_onnx(src, Fp16Config(parity_samples=1000), out, data_dir=mnist_root)
    message = str(info.value)
    assert info.value.exit_code == 1
    assert "exceed float16's range" in message and "W" in message and "100000" in message
    assert "--op-block-list MatMul" in message
    assert not out.exists()


def test_fp16_keeps_blocked_weights_in_float32_and_records_underflow(
    tmp_path: Path, mnist_root: Path
) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (784, 10)).astype(np.float32)
    w[0, 4] = 1.0e5  # only MatMul reads W: blocking MatMul keeps W in float32
    b = np.zeros(10, np.float32)
    b[2] = 1e-9  # below float16's smallest subnormal (2^-24 ~ 5.96e-8)
    src = _linear_classifier(tmp_path, w, b)
    out = tmp_path / "linear-fp16.onnx"
    cfg = Fp16Config(op_block_list=("MatMul",), parity_samples=1000, min_agreement=0.99)
    artifact = fp16_from_onnx(src, cfg, out, data_dir=mnist_root)
    inits = {i.name: i.data_type for i in onnx.load(out).graph.initializer}
    assert inits == {"W": TensorProto.FLOAT, "b": TensorProto.FLOAT16}
    ranges = artifact.metrics["fp16_range"]
    assert ranges["overflow_values"] == 0
    assert ranges["underflow_values"] == 1
    assert ranges["underflow_tensors"] == [
        {"name": "b", "count": 1, "min_abs": pytest.approx(1e-9)}
    ]
    assert ranges["max_abs_converted"] < FP16_MAX
    assert "MatMul" in artifact.metrics["op_block_list_effective"]


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_fp16_refuses_truncated_onnx_with_one_line_error(
    fp32_path: Path, tmp_path: Path, cut: float
) -> None:
    data = fp32_path.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ExportError) as info:
        fp16_from_onnx(bad, Fp16Config(), tmp_path / "out.onnx")
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "corrupt or truncated" in message and "\n" not in message
    assert not (tmp_path / "out.onnx").exists()


def test_fp16_refuses_non_fp32_source(fp16_artifact, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="is a fp16 model") as info:
        fp16_from_onnx(fp16_artifact.path, Fp16Config(), tmp_path / "again.onnx")
    assert info.value.exit_code == 2


def test_fp16_refuses_missing_output_folder_and_in_place(fp32_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist"):
        fp16_from_onnx(fp32_path, Fp16Config(), tmp_path / "nope" / "out.onnx")
    with pytest.raises(ExportError, match="its own source"):
        fp16_from_onnx(fp32_path, Fp16Config(), fp32_path)


def test_fp16_fails_when_agreement_is_below_requirement(tmp_path: Path, mnist_root: Path) -> None:
    # Ten near-tied classes: logits are 1000 + a pixel-dependent term of ~0.1, differences that
    # float16 (step 0.5 near 1000) cannot hold. The output is kept float16 (no keep_io_types)
    # because ONNX Runtime's CPU provider otherwise computes these ops in float32 and removes
    # the float32->float16->float32 cast pair, which hides the rounding.
    w = np.random.default_rng(3).normal(0, 0.01, (784, 10)).astype(np.float32)
    b = np.full(10, 1000.0, np.float32)
    src = _linear_classifier(tmp_path, w, b)
    cfg = Fp16Config(keep_io_types=False, parity_samples=1000, min_agreement=0.999)
    with pytest.raises(ExportError) as info:
        fp16_from_onnx(src, cfg, tmp_path / "tied-fp16.onnx", data_dir=mnist_root)
    message = str(info.value)
    assert info.value.exit_code == 1
    assert "argmax agreement" in message and "worst element: sample" in message
    assert not (tmp_path / "tied-fp16.onnx").exists()


def test_fp16_config_validate_rejects_bad_values() -> None:
    with pytest.raises(ExportError, match="min_agreement"):
        Fp16Config(min_agreement=1.5).validate()
    with pytest.raises(ExportError, match="op type names"):
        Fp16Config(op_block_list=("Gemm;rm",)).validate()
    with pytest.raises(ExportError, match="distinct positive sizes"):
        Fp16Config(parity_batch_sizes=(8, 8)).validate()
