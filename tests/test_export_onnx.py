"""torch -> ONNX export on real checkpoints, checked in real ONNX Runtime sessions.

One dynamo export of the trained SimpleCNN (module fixture) serves the interface, metadata,
dynamic-batch and file-layout tests; the BatchNorm architecture gets its own export. The
cheap TorchScript exporter is used where the exporter is not what a test is about.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from onnxship.core import model_meta
from onnxship.core.artifact import sha256_file
from onnxship.core.mnist import MNIST_MEAN, MNIST_STD
from onnxship.export.checks import describe_onnx, onnx_parity, ort_session, run_batched
from onnxship.export.errors import ExportError
from onnxship.export.onnx_export import (
    DEFAULT_OPSET,
    ExportConfig,
    ExporterKind,
    OptimizeLevel,
    mnist_test_inputs,
    onnx_from_checkpoint,
    ort_opset_range,
)
from onnxship.models.checkpoint import load_checkpoint, save_checkpoint
from onnxship.models.errors import ModelsError
from onnxship.models.registry import create_model


@pytest.fixture(scope="module")
def teacher_export(
    tmp_path_factory: pytest.TempPathFactory, trained_checkpoint: Path, mnist_root: Path
):
    out = tmp_path_factory.mktemp("export") / "teacher-fp32.onnx"
    return onnx_from_checkpoint(trained_checkpoint, ExportConfig(), out, data_dir=mnist_root)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(create_model("tiny_cnn"), path, stage="train", seed=0)
    return path


def _test_images(mnist_root: Path, n: int) -> np.ndarray:
    x, _ = mnist_test_inputs(mnist_root, n, MNIST_MEAN, MNIST_STD)
    return x


# ------------------------------------------------------------------------- the dynamo export


def test_onnx_from_checkpoint_uses_dynamo_at_the_portable_default_opset(teacher_export) -> None:
    m = teacher_export.metrics
    assert m["exporter"] == "dynamo" and m["exporter_fallback_reason"] is None
    # 18, not the newest the build machine's onnxruntime loads: the artifact must load on an
    # older onnxruntime at the deployment target (1.31 refused opset 28).
    assert m["opset"] == min(DEFAULT_OPSET, ort_opset_range()[1]) == 18
    assert describe_onnx(teacher_export.path)["opset"] == m["opset"]
    assert m["export_wall_s"] > 0


def test_onnx_from_checkpoint_interface_has_symbolic_batch(teacher_export) -> None:
    desc = describe_onnx(teacher_export.path)
    assert desc["inputs"] == [{"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32"}]
    assert desc["outputs"] == [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]
    assert teacher_export.metrics["inputs"] == desc["inputs"]


def test_onnx_from_checkpoint_writes_one_self_contained_file(teacher_export) -> None:
    folder = teacher_export.path.parent
    assert sorted(p.name for p in folder.iterdir()) == ["teacher-fp32.onnx"]  # no .data, no temp
    model = onnx.load(teacher_export.path, load_external_data=False)
    assert all(init.data_location == onnx.TensorProto.DEFAULT for init in model.graph.initializer)
    assert teacher_export.sha256 == sha256_file(teacher_export.path)
    assert teacher_export.bytes == teacher_export.path.stat().st_size


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_exported_model_matches_pytorch_at_batch(
    teacher_export, trained_checkpoint: Path, mnist_root: Path, batch: int
) -> None:
    x = _test_images(mnist_root, 512)
    model, _ = load_checkpoint(trained_checkpoint)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort_session(teacher_export.path)
    got = run_batched(session, x, batch)
    assert session.run(None, {"input": x[:batch]})[0].shape == (batch, 10)
    assert np.max(np.abs(got - expected)) <= 1e-4  # the FP32 parity tolerance of the export
    assert np.array_equal(got.argmax(1), expected.argmax(1))


def test_onnx_from_checkpoint_records_parity_on_1000_test_images(teacher_export) -> None:
    parity = teacher_export.metrics["parity"]
    assert parity["samples"] == 1000 and parity["batch_sizes"] == [1, 250]
    assert parity["max_abs_logit_diff"] <= 1e-4
    assert parity["argmax_agreement"] == 1.0


def test_exported_metadata_round_trips(teacher_export, trained_checkpoint: Path) -> None:
    session = ort_session(teacher_export.path)
    raw = dict(session.get_modelmeta().custom_metadata_map)
    meta = model_meta.parse_meta(raw, source=str(teacher_export.path))
    _, ckpt = load_checkpoint(trained_checkpoint)
    assert meta.mean == ckpt.mean and meta.std == ckpt.std
    assert meta.class_labels == tuple(str(i) for i in range(10))
    assert meta.architecture == "simple_cnn"
    assert json.loads(raw[model_meta.WIDTHS]) == {"conv_channels": 32, "hidden": 128}
    assert raw[model_meta.PRECISION] == "fp32"
    assert raw[model_meta.SOURCE_SHA256] == sha256_file(trained_checkpoint)
    assert raw[model_meta.PRODUCER].startswith("onnxship ")
    assert raw[model_meta.INPUT_PREPROCESS] == model_meta.PREPROCESS_TEXT
    assert teacher_export.parent_sha256 == sha256_file(trained_checkpoint)


def test_onnx_parity_shows_worst_element_when_onnx_is_perturbed(
    teacher_export, trained_checkpoint: Path, mnist_root: Path, tmp_path: Path
) -> None:
    model = onnx.load(teacher_export.path)
    bias = next(i for i in model.graph.initializer if i.name == "fc2.bias")
    values = numpy_helper.to_array(bias).copy()
    values[3] += 5.0  # class 3 gets +5 on every sample
    bias.CopyFrom(numpy_helper.from_array(values, "fc2.bias"))
    perturbed = tmp_path / "perturbed.onnx"
    onnx.save_model(model, perturbed)

    x = _test_images(mnist_root, 1000)
    torch_model, _ = load_checkpoint(trained_checkpoint)
    with torch.no_grad():
        reference = torch_model(torch.from_numpy(x)).numpy()
    result = onnx_parity(perturbed, x, reference, batch_sizes=(1, 250), reference_name="pytorch")
    assert result.worst.cls == 3
    assert result.max_abs_logit_diff == pytest.approx(5.0, abs=1e-3)
    with pytest.raises(ExportError) as info:
        result.require(what="perturbed.onnx", atol=1e-4, min_agreement=1.0, fix="re-export")
    assert info.value.exit_code == 1
    assert f"sample {result.worst.sample}, class 3" in str(info.value)


# -------------------------------------------------------------------------- other models


def test_bn_cnn_exports_with_batchnorm_folded_and_matches(
    trained_bn_checkpoint: Path, mnist_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bn.onnx"
    artifact = onnx_from_checkpoint(trained_bn_checkpoint, ExportConfig(), out, data_dir=mnist_root)
    model = onnx.load(out)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 2
    assert artifact.metrics["batchnorm_nodes"] == 0
    assert artifact.metrics["parity"]["max_abs_logit_diff"] <= 1e-4
    assert artifact.metrics["parity"]["argmax_agreement"] == 1.0
    x = _test_images(mnist_root, 300)
    torch_model, _ = load_checkpoint(trained_bn_checkpoint)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    got = run_batched(ort_session(out), x, 7)
    assert np.max(np.abs(got - expected)) <= 1e-4


def test_onnx_from_checkpoint_falls_back_to_torchscript_when_dynamo_cannot_reach_opset(
    tiny_checkpoint: Path, mnist_root: Path, tmp_path: Path
) -> None:
    # The dynamo exporter builds opset 18 and cannot convert this graph down to 13 (no
    # adapter for Shape-15); that counts as a dynamo failure and TorchScript runs instead.
    out = tmp_path / "tiny13.onnx"
    artifact = onnx_from_checkpoint(
        tiny_checkpoint, ExportConfig(opset=13), out, data_dir=mnist_root
    )
    assert artifact.metrics["exporter"] == "torchscript"
    assert "dynamo at opset 13" in artifact.metrics["exporter_fallback_reason"]
    assert describe_onnx(out)["opset"] == 13
    assert describe_onnx(out)["inputs"][0]["shape"][0] == "batch"


@pytest.mark.parametrize("level", [OptimizeLevel.BASIC, OptimizeLevel.EXTENDED])
def test_onnx_from_checkpoint_saves_ort_optimized_graph(
    tiny_checkpoint: Path, mnist_root: Path, tmp_path: Path, level: OptimizeLevel
) -> None:
    out = tmp_path / "tiny-opt.onnx"
    cfg = ExportConfig(exporter=ExporterKind.TORCHSCRIPT, optimize=level)
    artifact = onnx_from_checkpoint(tiny_checkpoint, cfg, out, data_dir=mnist_root)
    assert artifact.metrics["optimize_level"] == level.value
    assert artifact.metrics["parity"]["max_abs_logit_diff"] <= 1e-4
    ops = artifact.metrics["op_types"]
    if level is OptimizeLevel.EXTENDED:
        assert "FusedConv" in ops  # ORT-only fused op: the file now needs onnxruntime
    else:
        assert "FusedConv" not in ops
    assert model_meta.PRECISION in {p.key for p in onnx.load(out).metadata_props}


# ----------------------------------------------------------------------------- bad input


def test_onnx_from_checkpoint_refuses_opset_ort_cannot_run(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    low, high = ort_opset_range()
    for opset in (high + 1, low - 1):
        with pytest.raises(ExportError) as info:
            onnx_from_checkpoint(tiny_checkpoint, ExportConfig(opset=opset), tmp_path / "m.onnx")
        assert info.value.exit_code == 2
        assert f"opset {opset} cannot be run" in str(info.value)
        assert f"{low}..{high}" in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_from_checkpoint_refuses_checkpoint_not_matching_architecture(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(tiny_checkpoint.read_bytes())
    sidecar = json.loads(tiny_checkpoint.with_suffix(".json").read_text())
    sidecar["widths"]["conv_channels"] = 5  # the weights were saved with 4 channels
    bad.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelsError) as info:
        onnx_from_checkpoint(bad, ExportConfig(), tmp_path / "m.onnx")
    assert info.value.exit_code == 2
    assert "does not match architecture tiny_cnn" in str(info.value)


def test_onnx_from_checkpoint_fails_parity_with_zero_tolerance(
    tiny_checkpoint: Path, mnist_root: Path, tmp_path: Path
) -> None:
    # ORT (MLAS) and PyTorch sum in different orders, so logits differ by ~1e-7: a tolerance
    # of 0 must fail, show the worst element, and leave nothing under the output name.
    out = tmp_path / "strict.onnx"
    cfg = ExportConfig(exporter=ExporterKind.TORCHSCRIPT, parity_atol=0.0)
    with pytest.raises(ExportError) as info:
        onnx_from_checkpoint(tiny_checkpoint, cfg, out, data_dir=mnist_root)
    message = str(info.value)
    assert info.value.exit_code == 1
    assert "max |Δlogit|" in message and "worst element: sample" in message and "class" in message
    assert sorted(os.listdir(tmp_path)) == []


def test_onnx_from_checkpoint_refuses_missing_output_folder(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="does not exist") as info:
        onnx_from_checkpoint(tiny_checkpoint, ExportConfig(), tmp_path / "nope" / "m.onnx")
    assert info.value.exit_code == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_onnx_from_checkpoint_refuses_read_only_output_folder(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ExportError, match="not writable"):
            onnx_from_checkpoint(tiny_checkpoint, ExportConfig(), folder / "m.onnx")
    finally:
        folder.chmod(0o700)


def test_onnx_from_checkpoint_refuses_unwritable_output_folder_as_seen_by_access(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, for whom a chmod 0500 folder is writable; os.access is what the
    # stage consults, so make it answer as it would for an ordinary user.
    real_access = os.access
    folder = tmp_path / "ro"
    folder.mkdir()
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode)
    )
    with pytest.raises(ExportError, match="not writable") as info:
        onnx_from_checkpoint(tiny_checkpoint, ExportConfig(), folder / "m.onnx")
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (ExportConfig(export_batch=1), "export_batch must be >= 2"),
        (ExportConfig(parity_batch_sizes=(1,)), "distinct positive sizes"),
        (ExportConfig(parity_samples=100), "parity_samples must be in"),
        (ExportConfig(parity_atol=-1.0), "parity_atol"),
    ],
)
def test_export_config_validate_rejects_bad_values(cfg: ExportConfig, expected: str) -> None:
    with pytest.raises(ExportError, match=expected):
        cfg.validate()


def test_require_interface_rejects_fixed_batch_dimension() -> None:
    from onnx import TensorProto, helper

    from onnxship.export.onnx_export import _require_interface

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 1, 28, 28])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 10])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ExportError, match="fixed the batch dimension of 'input' to 2"):
        _require_interface(model, num_classes=10, exporter="dynamo")
