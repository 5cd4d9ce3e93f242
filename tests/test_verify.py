"""`onnxship verify` on small hand-made bundles (tiny models, a crafted MNIST folder): what it
must refuse to vouch for - no artifacts, a missing contract artifact, a file whose content
does not match its precision label, external data under any name - and how accuracy is
compared when the environment differs from the manifest's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)

from onnxship.calibrate.calibration_data import CalibrationSet
from onnxship.calibrate.ort_static import preprocess_model, quantize_with_recipe
from onnxship.calibrate.recipes import parse_recipe
from onnxship.cli import main
from onnxship.core.artifact import sha256_file
from onnxship.core.mnist import normalize
from onnxship.runtime_bench.accuracy import evaluate_onnx
from onnxship.verify import current_environment, verify_bundle

N_TEST, N_CORRECT = 200, 180


def _fp16(src: Path, out: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(src), keep_io_types=True)
    onnx.save(model, out)
    return out


def _int8(src: Path, out: Path, images: np.ndarray, scratch: Path) -> Path:
    pre = preprocess_model(src, scratch / "pre.onnx")
    x = normalize(images[:64], tiny.MNIST_MEAN, tiny.MNIST_STD)
    (scratch / "cache").mkdir()
    quantize_with_recipe(
        pre, out, parse_recipe("qdq-u8s8-perchannel-minmax"),
        CalibrationSet(x, input_name="input", batch_size=16, source="test"),
        cache_dir=scratch / "cache",
    )  # fmt: skip
    model = onnx.load(out)
    onnx.helper.set_model_props(model, {p.key: p.value for p in onnx.load(src).metadata_props})
    onnx.save(model, out)
    return out


def _entry(root: Path, name: str, precision: str, data: Path) -> dict:
    path = root / "artifacts" / f"{name}.onnx"
    result = evaluate_onnx(path, data_dir=data, return_predictions=True)
    preds_path = root / "results" / f"{name}.npz"
    np.savez(preds_path, **{name: result["predictions"].astype(np.int32)})
    return {
        "path": f"artifacts/{name}.onnx",
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "precision": precision,
        "accuracy": {
            "test_top1": result["top1"], "correct": result["correct"], "n": result["n"],
            "split": "test", "provider": "CPUExecutionProvider", "batch_size": 1000,
            "predictions": {"path": f"results/{name}.npz", "key": name,
                            "sha256": sha256_file(preds_path)},
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle folder, data root): the four contract artifacts, all consistent."""
    base = tmp_path_factory.mktemp("verify")
    images, labels = tiny.crafted_mnist(N_TEST, N_CORRECT)
    data = tiny.write_fake_mnist(base / "data", images, labels)
    root = base / "bundle"
    (root / "artifacts").mkdir(parents=True)
    (root / "results").mkdir()
    fp32 = tiny.pixel_classifier(root / "artifacts" / "teacher-fp32.onnx")
    shutil.copy(fp32, root / "artifacts" / "student-fp32.onnx")
    _fp16(fp32, root / "artifacts" / "student-fp16.onnx")
    _int8(fp32, root / "artifacts" / "student-int8.onnx", images, base)
    labels_of = {"teacher-fp32": "fp32", "student-fp32": "fp32", "student-int8": "int8",
                 "student-fp16": "fp16"}  # fmt: skip
    artifacts = {n: _entry(root, n, p, data) for n, p in labels_of.items()}
    artifacts["student-int8"]["integer_macs"] = {"share": 1.0}
    manifest = {"schema_version": 1, "environment": current_environment(), "artifacts": artifacts}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root, data


def _copy(bundle: tuple[Path, Path], tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "bundle"
    shutil.copytree(bundle[0], root)
    return root, json.loads((root / "manifest.json").read_text())


def _save(root: Path, manifest: dict) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest))


def _failed(root: Path, data: Path, **kw: object) -> set[tuple[str, str]]:
    report = verify_bundle(root, data_dir=data, **kw)  # type: ignore[arg-type]
    return {(c.artifact, c.check) for c in report.checks if not c.ok}


def test_verify_passes_a_consistent_bundle(bundle: tuple[Path, Path]) -> None:
    root, data = bundle
    report = verify_bundle(root, data_dir=data)
    assert report.ok, report.markdown()
    precision = {c.artifact: c.detail for c in report.checks if c.check == "precision"}
    assert "100.0 % of MACs in integer kernels" in precision["student-int8"]
    assert precision["student-fp16"].startswith("fp16: found no quantized ops and")
    assert main(["verify", str(root), "--data-dir", str(data)]) == 0


def test_verify_fails_a_manifest_with_no_artifacts(
    bundle: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, manifest = _copy(bundle, tmp_path)
    manifest["artifacts"] = {}
    _save(root, manifest)
    assert main(["verify", str(root), "--skip-accuracy"]) == 1
    assert "the manifest lists no artifacts" in capsys.readouterr().out


def test_verify_fails_when_a_contract_artifact_is_missing(
    bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    root, manifest = _copy(bundle, tmp_path)
    del manifest["artifacts"]["student-fp16"]
    _save(root, manifest)
    assert _failed(root, bundle[1], check_accuracy=False) == {("student-fp16", "present")}


@pytest.mark.parametrize(
    ("name", "impostor"),
    [
        ("student-int8", "student-fp32"),  # 0.1.0 verified this one ok
        ("student-fp16", "student-fp32"),
        ("student-fp32", "student-int8"),
        ("student-fp32", "student-fp16"),
    ],
)
def test_verify_fails_a_file_whose_content_does_not_match_its_precision(
    bundle: tuple[Path, Path], tmp_path: Path, name: str, impostor: str
) -> None:
    """The impostor's file under the label's name, its sha256, size and accuracy updated."""
    root, manifest = _copy(bundle, tmp_path)
    target = root / "artifacts" / f"{name}.onnx"
    shutil.copy(root / "artifacts" / f"{impostor}.onnx", target)
    entry = manifest["artifacts"][name]
    entry.update(sha256=sha256_file(target), bytes=target.stat().st_size)
    entry["accuracy"] = manifest["artifacts"][impostor]["accuracy"]
    _save(root, manifest)
    assert _failed(root, bundle[1]) == {(name, "precision")}


def test_verify_fails_external_data_whatever_the_sidecar_is_called(
    bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    root, manifest = _copy(bundle, tmp_path)
    # 0.1.0 only looked for `<name>.onnx*.data`; this sidecar is called weights.bin.
    path = tiny.external_data_model(root / "artifacts", name="teacher-fp32.onnx",
                                    sidecar="weights.bin")  # fmt: skip
    entry = manifest["artifacts"]["teacher-fp32"]
    entry.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    _save(root, manifest)
    report = verify_bundle(root, check_accuracy=False)
    failed = {(c.artifact, c.check): c.detail for c in report.checks if not c.ok}
    assert list(failed) == [("teacher-fp32", "self-contained")]
    assert "weights.bin" in failed[("teacher-fp32", "self-contained")]


def _flip_predictions(root: Path, manifest: dict, name: str, count: int) -> None:
    """The recorded predictions of `name` differ in `count` places (and its top-1 with them)."""
    acc = manifest["artifacts"][name]["accuracy"]
    path = root / acc["predictions"]["path"]
    preds = np.load(path)[name].copy()
    preds[:count] = (preds[:count] + 1) % 10
    np.savez(path, **{name: preds})
    acc["predictions"]["sha256"] = sha256_file(path)
    acc["test_top1"] = round(acc["test_top1"] - count / N_TEST, 6)


def test_verify_accuracy_exact_when_the_environment_matches(
    bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    root, manifest = _copy(bundle, tmp_path)
    _flip_predictions(root, manifest, "student-fp32", 2)
    _save(root, manifest)
    report = verify_bundle(root, data_dir=bundle[1], max_differing=5)
    failed = [c for c in report.checks if not c.ok]
    assert [(c.artifact, c.check) for c in failed] == [("student-fp32", "accuracy")]
    assert "2 differing predictions" in failed[0].detail and "exact match" in failed[0].detail


def test_verify_accuracy_counts_differing_predictions_when_the_environment_differs(
    bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    root, manifest = _copy(bundle, tmp_path)
    manifest["environment"]["cpu"] = "Another CPU"
    manifest["environment"]["isa"] = ["avx512f"]
    _flip_predictions(root, manifest, "student-fp32", 2)
    _flip_predictions(root, manifest, "teacher-fp32", 4)
    _save(root, manifest)
    report = verify_bundle(root, data_dir=bundle[1], max_differing=3)
    by_name = {c.artifact: c for c in report.checks if c.check == "accuracy"}
    assert by_name["student-fp32"].ok  # 2 <= 3; 0.1.0 demanded equality and failed it
    assert "2 of 200 predictions differ, tolerance 3" in by_name["student-fp32"].detail
    assert (
        "cpu: " in by_name["student-fp32"].detail
        and "Another CPU" in by_name["student-fp32"].detail
    )
    assert not by_name["teacher-fp32"].ok
    assert "4 of 200 predictions differ" in by_name["teacher-fp32"].detail
    assert by_name["student-int8"].ok and "0 of 200" in by_name["student-int8"].detail


def test_verify_on_another_integer_class_names_both_and_records_this_one(
    bundle: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bundle measured on one CPU integer class, verified on this CPU (another class): the
    accuracy is re-measured, both classes are named, an INT8 recipe not exact here says so,
    and --record-class keeps this class's accuracy for gate --require-class."""
    from onnxship.calibrate.recipes import parse_recipe
    from onnxship.core.env import integer_class

    here = integer_class()
    other = "avx512_vnni" if here != "avx512_vnni" else "avx2"
    root, manifest = _copy(bundle, tmp_path)
    manifest["environment"]["integer_class"] = other
    recipe = parse_recipe("qdq-u8s8-perchannel-minmax")
    for name, entry in manifest["artifacts"].items():
        entry["integer_class"] = other
        entry["accuracy_by_class"] = {other: {"test_top1": entry["accuracy"]["test_top1"]}}
        if name == "student-int8":
            entry["safe_integer_classes"] = recipe.safe_integer_classes()
            entry["quant_risk"] = recipe.risk
    _save(root, manifest)
    report = verify_bundle(root, data_dir=bundle[1])
    checks = {c.artifact: c for c in report.checks if c.check == "accuracy"}
    assert report.ok, report.markdown()
    detail = checks["student-fp32"].detail
    assert f"on {here}, this CPU (the manifest's on {other})" in detail
    assert f"integer class: {other} (bundle) -> {here} (this CPU)" in detail
    int8 = checks["student-int8"].detail
    assert (f"not exact on {here}" in int8) is (not recipe.safe_on(here))
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"artifacts": {"student-int8": {"test_top1": 0.5}}}))
    gate_args = ["gate", "--manifest", str(root / "manifest.json"), "--baseline", str(baseline),
                 "--require-class", f"{other},{here}"]  # fmt: skip
    assert main(gate_args) == 1  # never measured on this class yet
    assert f"no accuracy measured on integer class {here}" in capsys.readouterr().out
    rc = main(["verify", str(root), "--data-dir", str(bundle[1]), "--record-class"])
    assert rc == 0
    recorded = json.loads((root / "manifest.json").read_text())["artifacts"]["student-int8"]
    assert recorded["accuracy_by_class"][here]["measured_by"] == "verify"
    assert (
        recorded["accuracy_by_class"][here]["test_top1"]
        == checks["student-int8"].measured["test_top1"]
    )
    capsys.readouterr()
    assert main(gate_args) == 0


@pytest.mark.parametrize(
    ("integer_macs", "expected"),
    [
        ({"share": 0.5}, "but the file has 100.0 % (re-measured)"),
        ({}, "the manifest records no integer MAC share"),
    ],
)
def test_verify_fails_an_int8_whose_integer_mac_share_is_not_the_recorded_one(
    bundle: tuple[Path, Path], tmp_path: Path, integer_macs: dict, expected: str
) -> None:
    root, manifest = _copy(bundle, tmp_path)
    manifest["artifacts"]["student-int8"]["integer_macs"] = integer_macs
    _save(root, manifest)
    report = verify_bundle(root, check_accuracy=False)
    failed = {(c.artifact, c.check): c.detail for c in report.checks if not c.ok}
    assert list(failed) == [("student-int8", "precision")]
    assert expected in failed[("student-int8", "precision")]


def test_verify_fails_an_int8_file_with_no_multiply_accumulate_in_integer_kernels(
    bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    """Quantized ops on the input alone (Q -> DQ -> float MatMul with float weights): an int8
    label with one quantized op, whose arithmetic is all float; the manifest says so (0.0)."""
    root, manifest = _copy(bundle, tmp_path)
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((784, 10), np.float32), "W")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "z")
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("QuantizeLinear", ["flat", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
        helper.make_node("MatMul", ["dq", "W"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "fake-int8",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [w, scale, zero],
    )  # fmt: skip
    target = root / "artifacts" / "student-int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), target)
    entry = manifest["artifacts"]["student-int8"]
    entry.update(sha256=sha256_file(target), bytes=target.stat().st_size)
    entry["integer_macs"] = {"share": 0.0}
    _save(root, manifest)
    failed = {
        (c.artifact, c.check): c.detail
        for c in verify_bundle(root, check_accuracy=False).checks
        if not c.ok
    }
    assert list(failed) == [("student-int8", "precision")]
    assert "no multiply-accumulate runs in integer kernels" in failed[("student-int8", "precision")]
