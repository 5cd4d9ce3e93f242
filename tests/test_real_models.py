"""Real architectures through the ONNX-side commands: torchvision resnet18 (residual adds,
BatchNorm) and mobilenet_v2 (depthwise convolutions, ReLU6), `weights=None`, exported with
plain `torch.onnx.export` at 64x64 (the real graph, a small input so the suite stays quick).

`eval --reference`, `fp16 --data`, `quantize --calib-npz --val-npz` and `bench` run on them
as a user would. Numbers are asserted with stated tolerances; nothing here is a timing
assertion (the quantize record's latencies are checked for structure and CIs only).

`verify` needs a bundle (a manifest naming the contract's artifacts), which only `onnxship
run` writes; so the same networks, at 32x32, go through `onnxship run` with the torchvision
constructor as `[model] factory`, their weights as `state_dict` and `[data] kind = "npz"`
(`real_models.write_project`), and `verify` checks that bundle, then a tampered copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import real_models  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)

from onnxship.calibrate.coverage import matmul_mac_share
from onnxship.calibrate.ort_static import calibration_scopes
from onnxship.calibrate.quantize import QuantizeConfig, recipe_grid
from onnxship.calibrate.recipes import QuantScope
from onnxship.cli import main

pytestmark = pytest.mark.slow

SIZE = 64
CLASSES = {"resnet18": 10, "mobilenet_v2": 0}
FAST = ("--batch-sizes", "1,4", "--bench-seconds", "0.4", "--calib-batch", "8")


@pytest.fixture(scope="module", params=real_models.ARCHS)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp(request.param)
    # resnet18: a fitted 10-way head and labelled val (budget: top-1 vs labels); mobilenet_v2:
    # unlabelled val (budget: top-1 agreement with FP32), so both budget kinds run
    classes = CLASSES[request.param]
    paths = real_models.export(request.param, SIZE, out, n_calib=16, n_val=32, classes=classes)
    return {"arch": request.param, "out": out, "labelled": bool(classes), **paths}


def test_real_model_graph_has_the_architecture_it_claims(exported: dict) -> None:
    ops = {n.op_type for n in onnx.load(str(exported["onnx"])).graph.node}
    assert "Conv" in ops
    if exported["arch"] == "resnet18":
        assert "Add" in ops  # residual connections
    else:
        model = onnx.load(str(exported["onnx"]))
        groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute
                  if a.name == "group"]  # fmt: skip
        assert max(groups) > 1  # depthwise convolutions


def test_real_model_through_eval_fp16_quantize_and_bench(
    exported: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    model, calib, val, out = exported["onnx"], exported["calib"], exported["val"], exported["out"]
    run = out / "run"

    assert main(["eval", str(model), "--data", str(val), "--reference", str(model),
                 "--json", str(out / "eval.json")]) == 0  # fmt: skip
    ev = json.loads((out / "eval.json").read_text())
    if exported["labelled"]:
        assert ev["top1"] >= 0.3, ev  # the fitted 10-way head beats chance (0.1) on held-out data
    assert ev["fidelity"]["top1_agreement"] == 1.0  # the model agrees with itself

    assert main(["fp16", str(model), "--out", str(run), "--name", "net-fp16",
                 "--data", str(val), "--min-agreement", "0.9"]) == 0  # fmt: skip
    assert (run / "artifacts" / "net-fp16.onnx").is_file()

    assert main(["quantize", str(model), "--out", str(run), "--name", "net-int8",
                 "--calib-npz", str(calib), "--val-npz", str(val), "--max-drop", "0.2" if exported["labelled"] else "0.5",
                 *FAST]) == 0  # fmt: skip
    record = json.loads((run / "stages" / "quantize.json").read_text())
    m = record["metrics"]
    # the '-linear' recipes are not searched where Gemm holds < 2 % of the MACs (quantizing
    # only it cannot make INT8 faster): resnet18's 10-way head; mobilenet_v2's 1000-way head
    # holds 5 % at 64x64. Calibrate once per method the searched recipes use.
    grid = recipe_grid(QuantizeConfig())
    linear = {r.name for r in grid if r.scope is QuantScope.LINEAR}
    share = matmul_mac_share(model)
    assert (share < 0.02) is (exported["arch"] == "resnet18"), share
    assert set(m["search"]["not_searched"]) == (linear if share < 0.02 else set())
    linear = set(m["search"]["not_searched"])
    searched = [r for r in grid if r.name not in linear]
    assert m["calibration"]["passes"] == len(calibration_scopes(searched)) < len(searched)
    assert {r["name"] for r in m["candidates"][1:]} >= {r.name for r in searched}
    assert m["peak_rss_mb"] > 0
    rows = m["candidates"][1:]
    assert {r["name"] for r in rows if r["timed"]} <= set(m["search"]["timed"])
    for r in rows:  # cheap first: a candidate outside the accuracy budget is never timed
        if not r["within_budget"]:
            assert r["timed"] is False and r["latency"] == {}
    by_batch = m["latency"]["by_batch"]
    assert "1" in by_batch
    lo, hi = by_batch["1"]["speedup_ci"]
    assert lo <= by_batch["1"]["speedup"] <= hi
    assert "CI" in m["int8_faster_than_fp32_why"]
    int8 = onnx.load(str(run / "artifacts" / "net-int8.onnx"))
    assert any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in int8.graph.node)

    assert main(["bench", str(model), str(run / "artifacts" / "net-int8.onnx"),
                 str(run / "artifacts" / "net-fp16.onnx"), "--batch-sizes", "1",
                 "--iterations", "5", "--warmup", "1", "--no-progress",
                 "--json", str(out / "bench.json")]) == 0  # fmt: skip
    assert (out / "bench.json").is_file()
    capsys.readouterr()


BUNDLE_SIZE = 32  # the smallest input the five stride-2 stages keep a 1x1 map for


@pytest.fixture(scope="module", params=real_models.ARCHS)
def bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`onnxship run` on the real network and npz data (~15-30 s of CPU per architecture)."""
    import torch

    torch.set_num_threads(1)
    project = tmp_path_factory.mktemp(f"{request.param}-project")
    config = real_models.write_project(project, request.param, BUNDLE_SIZE)
    assert main(["run", "--config", str(config), "--out", str(project / "bundle")]) == 0
    return project / "bundle"


def test_verify_passes_on_a_real_model_bundle_and_fails_on_a_tampered_copy(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    teacher = manifest["artifacts"]["teacher-fp32"]
    assert teacher["inputs"][0]["shape"] == ["batch", 3, BUNDLE_SIZE, BUNDLE_SIZE]
    assert teacher["params"] > 2_000_000  # the torchvision network, not a toy
    assert manifest["dataset"]["kind"] == "npz"
    ops = {n.op_type for n in onnx.load(str(bundle / teacher["path"])).graph.node}
    assert "Add" in ops  # residual adds in both (mobilenet_v2's inverted residual blocks)
    assert manifest["artifacts"]["student-int8"]["macs"] < teacher["macs"]  # pruned

    capsys.readouterr()
    assert main(["verify", str(bundle), "--json", str(tmp_path / "verify.json")]) == 0
    report = json.loads((tmp_path / "verify.json").read_text())
    done = {(c["artifact"], c["check"]) for c in report["checks"] if c["ok"]}
    for name in ("teacher-fp32", "student-fp32", "student-int8", "student-fp16"):
        for check in ("checksum", "precision", "loads in ORT", "accuracy"):
            assert (name, check) in done, (name, check)
    assert ("dataset", "test data") in done  # accuracy re-measured on the bundle's test npz

    # one changed byte in the INT8 file: its checksum fails, and so does verify (exit 1)
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    int8 = tampered / manifest["artifacts"]["student-int8"]["path"]
    data = bytearray(int8.read_bytes())
    data[len(data) // 2] ^= 0xFF
    int8.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(tampered)]) == 1
    out = capsys.readouterr().out
    assert "FAILED for student-int8" in out and "changed after the run" in out

    # a changed test set: the accuracy it re-measures on is not the recorded one
    test_npz = tampered / manifest["dataset"]["test_path"]
    with np.load(test_npz) as arrays:
        x, y = arrays["x"], arrays["y"]
    np.savez(test_npz, x=x, y=(y + 1) % 10)
    shutil.copy2(bundle / manifest["artifacts"]["student-int8"]["path"], int8)
    assert main(["verify", str(tampered)]) == 1
    assert "the test data changed after the run" in capsys.readouterr().out
