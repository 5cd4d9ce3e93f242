"""The quantize stage on a real (quickly trained) SimpleCNN exported to ONNX, with real MNIST.

The FP32 model is built here (train on 10,000 images, torch.onnx.export with the dynamo exporter, the
onnxship metadata added) so these tests do not depend on the export stage.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.ort_static import RangeOverride
from onnxship.calibrate.quantize import FP32_ROW, LatencyConfig, QuantizeConfig, int8_from_onnx
from onnxship.calibrate.recipes import PRESETS, SATURATING_CLASSES, auto_grid, exact_recipe_on
from onnxship.core import mnist
from onnxship.core.artifact import sha256_file
from onnxship.core.env import detected_integer_class, integer_class

# Fast latency settings: these tests check structure and accuracy, never timings.
FAST = LatencyConfig(seconds_per_batch_size=0.05, min_iterations=3, warmup=1)
# The recipe exact on this CPU's integer class (U8S8 saturates in int16 without VNNI; on such a
# CPU its reduce_range twin): the tolerances below are the quantization's, on any x86 CPU.
RECIPE = exact_recipe_on("qdq-u8s8-perchannel-minmax", detected_integer_class()).name
TRAIN_IMAGES = 10_000
META = {
    "onnxship.input_mean": "[0.1307]",
    "onnxship.input_std": "[0.3081]",
    "onnxship.class_labels": json.dumps([str(i) for i in range(10)]),
    "onnxship.architecture": "simple_cnn",
    "onnxship.widths": json.dumps({"conv_channels": 8, "hidden": 32}),
    "onnxship.precision": "fp32",
}


def build_simplecnn_onnx(folder: Path, mnist_root: Path, *, metadata: bool = True) -> Path:
    """simple_cnn(8, 32) trained one epoch on 10,000 fit images (~93 % test top-1, a few
    seconds), exported with the dynamo exporter and saved self-contained."""
    path = folder / ("simplecnn-fp32.onnx" if metadata else "simplecnn-nometa.onnx")
    if path.is_file():
        return path
    raw = folder / "simplecnn-raw.onnx"
    if not raw.is_file():
        import torch

        from onnxship.models.loop import SgdConfig, train_sgd
        from onnxship.models.registry import create_model

        fit = mnist.load_split(mnist_root, "fit")
        x = torch.from_numpy(mnist.normalize(fit.images[:TRAIN_IMAGES]))
        y = torch.from_numpy(fit.labels[:TRAIN_IMAGES])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # faster than fighting over 2 shared cores
        try:
            torch.manual_seed(0)
            model = create_model("simple_cnn", conv_channels=8, hidden=32)
            cfg = SgdConfig(epochs=1, lr=0.05, batch_size=64)
            train_sgd(model, x, y, cfg, seed=0, progress=False)
            torch.onnx.export(
                model.eval(),
                (torch.randn(2, 1, 28, 28),),
                str(folder / "export.onnx"),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            )
        finally:
            torch.set_num_threads(threads)
        onnx.save(onnx.load(str(folder / "export.onnx")), str(raw))  # weights inline
    proto = onnx.load(str(raw))
    if metadata:
        for key, value in META.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="session")
def simplecnn(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    folder = tmp_path_factory.getbasetemp() / "calibrate_simplecnn"
    folder.mkdir(exist_ok=True)
    return build_simplecnn_onnx(folder, mnist_root)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _quantize(src: Path, tmp_path: Path, root: Path, **cfg: Any) -> Any:
    cfg.setdefault("recipe", RECIPE)
    cfg.setdefault("latency", FAST)
    return int8_from_onnx(
        src,
        QuantizeConfig(**cfg),
        tmp_path / "int8.onnx",
        data_dir=root,
        calib_out=tmp_path / "calib.npz",
    )


def test_int8_from_onnx_writes_a_quantized_model_with_lineage(
    simplecnn: Path, tmp_path: Path, mnist_root: Path
) -> None:
    art = _quantize(simplecnn, tmp_path, mnist_root, exclude_nodes=("node_linear_1",))
    m = art.metrics
    # Structure: QDQ pairs around the conv and fc1; the excluded fc2 stays float.
    graph = onnx.load(str(art.path)).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["QuantizeLinear"] >= 3 and ops["DequantizeLinear"] >= 5
    producers = {o: n.op_type for n in graph.node for o in n.output}
    by_name = {n.name: n for n in graph.node}
    assert all(producers.get(i) == "DequantizeLinear" for i in by_name["node_conv2d"].input)
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert list(by_name["node_linear_1"].input[1:]) == ["fc2.weight", "fc2.bias"]
    assert {"fc2.weight", "fc2.bias"} <= floats  # its weights stay float
    assert {
        "node": "node_linear_1",
        "op_type": "Gemm",
        "reason": "excluded by config (exclude_nodes)",
    } in m["nodes_in_float"]
    # Lineage: the source's metadata, precision int8, the FP32 file's sha256.
    meta = _meta(art.path)
    assert meta["onnxship.precision"] == "int8"
    assert meta["onnxship.source_sha256"] == sha256_file(simplecnn) == art.parent_sha256
    assert (
        meta["onnxship.input_mean"] == "[0.1307]" and meta["onnxship.architecture"] == "simple_cnn"
    )
    assert meta["onnxship.quant_recipe"] == RECIPE
    assert not any(ext.is_file() for ext in tmp_path.glob("*.data"))  # self-contained
    # Metrics the contract's stage record needs.
    assert m["recipe"]["name"] == RECIPE and m["recipe"]["options"]["per_channel"] is True
    assert [c["name"] for c in m["candidates"]] == [FP32_ROW, RECIPE]
    row = m["candidates"][1]
    assert set(row) >= {"options", "val_top1", "val_drop", "latency", "within_budget"}
    # batch 64 is timed, or skipped and said when FAST's tiny budget cannot hold its rounds
    skipped = set(m["search"]["latency"]["skipped"])
    assert "1" in row["latency"] and set(row["latency"]) | skipped == {"1", "64"}
    for entry in row["latency"].values():
        assert set(entry) >= {"p50_ms", "fp32_p50_ms", "p50_ratio", "min_ratio", "speedup_ci"}
    assert m["fp32_val_top1"] - m["int8_val_top1"] <= 0.003 + 1e-9
    assert isinstance(m["int8_faster_than_fp32"], bool) and m["int8_faster_than_fp32_why"]
    assert m["bytes_ratio"] <= 0.30
    calib = m["calibration"]
    assert calib["sha256"] == sha256_file(tmp_path / "calib.npz")
    assert calib["samples"] == 256 and calib["source_split"] == "train:validation"
    assert m["val_samples"] == 5000 - 256


def test_int8_from_onnx_matches_float_on_test_images(
    simplecnn: Path, tmp_path: Path, mnist_root: Path
) -> None:
    """Float vs INT8 ORT sessions on 2,000 test images: >= 99 % argmax agreement and a
    median |logit difference| <= 2 % of the logit range."""
    art = _quantize(simplecnn, tmp_path, mnist_root)
    test = mnist.load_split(mnist_root, "test")
    x = mnist.normalize(test.images[:2000])
    ref, got = _run(simplecnn, x), _run(art.path, x)
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.99
    assert float(np.median(np.abs(ref - got))) <= 0.02 * float(ref.max() - ref.min())
    top1_fp32 = np.mean(ref.argmax(1) == test.labels[:2000])
    top1_int8 = np.mean(got.argmax(1) == test.labels[:2000])
    assert top1_int8 >= top1_fp32 - 0.005


def test_int8_from_onnx_never_reads_the_test_split(
    simplecnn: Path, tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits: list[str] = []
    real = mnist.load_split

    def spy(root: Any, split: str) -> Any:
        splits.append(split)
        return real(root, split)

    monkeypatch.setattr(mnist, "load_split", spy)
    art = _quantize(simplecnn, tmp_path, mnist_root)
    assert splits and set(splits) == {"val"}
    with np.load(tmp_path / "calib.npz") as data:
        _, val_idx = mnist.validation_split(60_000)
        assert np.isin(data["train_indices"], val_idx).all()
    assert art.metrics["calibration"]["source_split"] == "train:validation"


def test_int8_from_onnx_auto_search_records_the_whole_table(
    simplecnn: Path, tmp_path: Path, mnist_root: Path
) -> None:
    art = _quantize(simplecnn, tmp_path, mnist_root, recipe="auto")
    m = art.metrics
    names = [c["name"] for c in m["candidates"]]
    # The grid exact on this CPU's integer class (the presets, saturating ones swapped for
    # their reduce_range twins where U8S8 may saturate).
    grid = auto_grid(integer_class())
    assert names == [FP32_ROW, *(r.name for r in grid)]
    assert (tuple(grid) == PRESETS) is (integer_class() not in SATURATING_CLASSES)
    assert m["integer_class"] == integer_class() and m["grid"]
    chosen = next(c for c in m["candidates"] if c["name"] == m["recipe"]["name"])
    assert chosen["within_budget"] and m["recipe"]["searched"] is True
    assert all("faster_than_fp32" in c for c in m["candidates"][1:])
    assert m["int8_faster_than_fp32"] in (True, False)
    if not m["int8_faster_than_fp32"]:
        assert "no INT8 recipe" in m["int8_faster_than_fp32_why"]
    assert m["search_wall_s"] > 0 and m["target"]["provider"] == "CPUExecutionProvider"
    assert any(r["after"] == "Flatten(axis=1)" for r in m["graph_rewrites"])


def test_int8_from_onnx_fallback_restores_a_node_fed_out_of_range_calibration(
    simplecnn: Path, tmp_path: Path, mnist_root: Path
) -> None:
    """The conv's input is given a calibration range of [-0.05, 0.05] (real inputs span
    [-0.42, 2.8]): quantized, it saturates and top-1 collapses; the fallback must find the conv,
    keep it in float and come back within budget."""
    broken = (RangeOverride("input", -0.05, 0.05),)
    art = _quantize(simplecnn, tmp_path, mnist_root, range_overrides=broken)
    m = art.metrics
    first = m["candidates"][1]
    # the broken model: scoring stopped as soon as it could not reach the budget any more
    assert first["name"] == RECIPE and not first["within_budget"] and not first["timed"]
    assert "scoring stopped after" in first["screened"]
    fixed = m["candidates"][-1]
    assert fixed["name"] == f"{RECIPE}+fallback" and fixed["within_budget"]
    assert m["recipe"]["name"] == f"{RECIPE}+fallback"
    assert [n["node"] for n in m["nodes_in_float"]] == ["node_conv2d"]
    assert "accuracy fallback" in m["nodes_in_float"][0]["reason"]
    steps = fixed["fallback"]["steps"]
    assert steps[-1]["float_nodes"] == ["node_conv2d"] and steps[-1]["val_drop"] <= 0.003
    sens = {s["node"]: s for s in fixed["fallback"]["sensitivity"]}
    assert sens["node_conv2d"]["sqnr_db"] < sens["node_linear"]["sqnr_db"]
    conv = next(n for n in onnx.load(str(art.path)).graph.node if n.name == "node_conv2d")
    assert conv.input[0] == "input"  # fed the float input directly


def test_int8_from_onnx_budget_no_recipe_meets_exits_1_and_writes_nothing(
    simplecnn: Path, tmp_path: Path, mnist_root: Path
) -> None:
    broken = (RangeOverride("input", -0.05, 0.05),)
    with pytest.raises(CalibrateError) as info:
        _quantize(simplecnn, tmp_path, mnist_root, range_overrides=broken, fallback=False)
    assert info.value.exit_code == 1
    message = str(info.value)
    assert "no INT8 recipe" in message and f"best found {RECIPE}" in message
    assert "0.30 pp" in message
    assert not (tmp_path / "int8.onnx").exists() and not (tmp_path / "calib.npz").exists()
    assert list(tmp_path.iterdir()) == []


def test_int8_from_onnx_model_without_metadata_asks_for_mean_and_std(
    simplecnn: Path, tmp_path: Path, mnist_root: Path
) -> None:
    bare = build_simplecnn_onnx(simplecnn.parent, mnist_root, metadata=False)
    with pytest.raises(CalibrateError, match="--mean and --std") as info:
        _quantize(bare, tmp_path, mnist_root)
    assert info.value.exit_code == 2
    art = _quantize(bare, tmp_path, mnist_root, mean=(0.1307,), std=(0.3081,))
    meta = _meta(art.path)
    assert meta["onnxship.input_mean"] == "[0.1307]" and meta["onnxship.precision"] == "int8"
    assert art.metrics["calibration"]["normalisation"]["from"] == "override (--mean/--std)"


def test_int8_from_onnx_unknown_recipe_lists_the_known_ones(
    simplecnn: Path, tmp_path: Path, mnist_root: Path
) -> None:
    with pytest.raises(CalibrateError, match="unknown recipe 'fastest'.*qdq-u8s8-perchannel"):
        _quantize(simplecnn, tmp_path, mnist_root, recipe="fastest")


def test_int8_from_onnx_calibration_npz_of_the_wrong_shape_names_the_input(
    simplecnn: Path, tmp_path: Path, mnist_root: Path
) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((64, 28, 28), np.float32))
    with pytest.raises(
        CalibrateError, match=r"model expects input 'input' float32 \[N, 1, 28, 28\]"
    ):
        int8_from_onnx(
            simplecnn, QuantizeConfig(recipe=RECIPE), tmp_path / "x.onnx", data_dir=mnist_root,
            calib_npz=bad,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"max_drop": 1.5}, "max_drop must be a fraction"),
        ({"mean": (0.1,)}, "both --mean and --std"),
        ({"mean": (0.1,), "std": (0.0,)}, "--std values must be > 0"),
        ({"exclude_nodes": ("nope",)}, "nodes to exclude \\['nope'\\]"),
        ({"provider": "NoSuchExecutionProvider"}, "unknown execution provider"),
    ],
)
def test_int8_from_onnx_rejects_bad_config(
    simplecnn: Path, tmp_path: Path, mnist_root: Path, cfg: dict[str, Any], match: str
) -> None:
    from onnxship.core.errors import OnnxshipError

    with pytest.raises(OnnxshipError, match=match) as info:
        _quantize(simplecnn, tmp_path, mnist_root, **cfg)
    assert info.value.exit_code == 2
    assert not (tmp_path / "int8.onnx").exists()


def test_int8_from_onnx_require_faster_exits_1_when_int8_is_not_faster(
    simplecnn: Path, tmp_path: Path, mnist_root: Path
) -> None:
    # A margin of 0.99 means "faster" needs INT8 under 1 % of the FP32 time: never, anywhere.
    never = LatencyConfig(seconds_per_batch_size=0.05, min_iterations=3, faster_margin=0.99)
    with pytest.raises(CalibrateError, match="not faster than FP32.*require_faster") as info:
        _quantize(simplecnn, tmp_path, mnist_root, latency=never, require_faster=True)
    assert info.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []
    art = _quantize(simplecnn, tmp_path, mnist_root, latency=never)  # default: written, flagged
    assert art.metrics["int8_faster_than_fp32"] is False
    assert (
        "no INT8 recipe within the accuracy budget was faster"
        in art.metrics["int8_faster_than_fp32_why"]
    )
