"""quantize_static through calibrate/ on tiny hand-built graphs: structure (node types counted)
and numbers (float vs quantized ORT sessions) are asserted separately, as in ORT's own tests.

Every test uses the graph below (onnx.helper, opset 17 unless stated):

        input [N, 1, 6, 6]
          |
        Conv "conv"        W [2, 1, 3, 3], B [2]        -> [N, 2, 4, 4]
          |
        Relu "relu"
          |
        MaxPool "pool"     kernel 2x2, stride 2          -> [N, 2, 2, 2]
          |
        Reshape "flatten"  shape [-1, 8]                 -> [N, 8]
          |
        Gemm "fc"          W [3, 8] (transB=1), B [3]    -> output [N, 3]
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import load_tensors_data

from onnxship.calibrate.calibration_data import CalibrationSet, input_spec_of
from onnxship.calibrate.coverage import integer_mac_share
from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.graph_prep import cap_opset, ort_max_qdq_opset, reshape_to_flatten
from onnxship.calibrate.int8_file import drop_unused_opset_imports
from onnxship.calibrate.ort_static import (
    HistogramCaps,
    calibrate_ranges,
    calibration_for,
    calibration_scopes,
    node_table,
    preprocess_model,
    quantize_with_recipe,
    ranges_path,
    resolve_exclusions,
)
from onnxship.calibrate.recipes import (
    PRESETS,
    CalibMethod,
    QuantScope,
    exact_recipe_on,
    parse_recipe,
)
from onnxship.core.env import detected_integer_class

# Quantized outputs must match float ones to within this fraction of the float output range
# (8-bit activations: one step is range/255; a few steps of accumulated error are allowed).
REL_TOL = 0.05
# The tolerance holds for the quantized arithmetic itself: tests that assert it quantize with
# the recipe exact on this CPU's integer class (U8S8 saturates in int16 on x86 without VNNI;
# its reduce_range twin has the same graph and is exact there). The saturation itself is
# asserted on purpose in test_calibrate_saturation.py.
HERE = detected_integer_class()


def tiny_model(
    opset: int = 17,
    shape: tuple[int, ...] = (-1, 8),
    allowzero: int | None = None,
    check: bool = True,
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "W_conv"),
        numpy_helper.from_array(np.array([0.1, -0.1], np.float32), "B_conv"),
        numpy_helper.from_array(np.array(shape, np.int64), "flat_shape"),
        numpy_helper.from_array(rng.standard_normal((3, 8)).astype(np.float32), "W_fc"),
        numpy_helper.from_array(np.array([0.0, 0.5, -0.5], np.float32), "B_fc"),
    ]
    reshape_attrs = {} if allowzero is None else {"allowzero": allowzero}
    nodes = [
        helper.make_node("Conv", ["input", "W_conv", "B_conv"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "flat_shape"], ["f"], name="flatten", **reshape_attrs),
        helper.make_node("Gemm", ["f", "W_fc", "B_fc"], ["output"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    if check:
        onnx.checker.check_model(model)
    return model


def _data(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 6, 6)).astype(np.float32)


def _calib(n: int = 32, batch: int = 8) -> CalibrationSet:
    return CalibrationSet(_data(n), input_name="input", batch_size=batch, source="test")


@pytest.fixture()
def prepared(tmp_path: Path) -> Path:
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), src)
    return preprocess_model(src, tmp_path / "tiny_pre.onnx")


def _quantize(prepared: Path, tmp_path: Path, name: str, **kw: object) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    recipe = exact_recipe_on(name, HERE)
    return quantize_with_recipe(
        prepared, tmp_path / "q.onnx", recipe, _calib(), cache_dir=cache, **kw
    )


def _ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(path).graph.node)


def _producers(path: Path) -> dict[str, str]:
    return {o: n.op_type for n in onnx.load(path).graph.node for o in n.output}


def _node(path: Path, name: str) -> onnx.NodeProto:
    return next(n for n in onnx.load(path).graph.node if n.name == name)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _assert_close(float_path: Path, quant_path: Path) -> None:
    """Compared on the calibration inputs: data outside the calibrated range is clipped by
    design, which is the fallback's business, not this comparison's."""
    x = _calib().inputs
    ref, got = _run(float_path, x), _run(quant_path, x)
    span = float(ref.max() - ref.min())
    assert np.abs(ref - got).max() <= REL_TOL * span


def _assert_only_fc_quantized(path: Path) -> None:
    """conv stays float (no input from a DequantizeLinear); every input of fc is dequantized."""
    producers = _producers(path)
    assert all(producers.get(i) != "DequantizeLinear" for i in _node(path, "conv").input)
    assert [producers.get(i) for i in _node(path, "fc").input] == ["DequantizeLinear"] * 3


def test_quantize_with_recipe_qdq_wraps_every_quantizable_op(
    prepared: Path, tmp_path: Path
) -> None:
    out = _quantize(prepared, tmp_path, "qdq-u8s8-perchannel-minmax")
    ops = _ops(out)
    # Q/DQ on: input, conv out (relu folded), pool out, flatten out, fc out; DQ also on the
    # two weights and two biases.
    assert ops["QuantizeLinear"] == 5
    assert ops["DequantizeLinear"] == 9
    assert "Relu" not in ops  # folded into the conv's output quantization (asymmetric u8)
    producers = _producers(out)
    for name in ("conv", "fc"):
        node = _node(out, name)
        assert all(producers.get(i) == "DequantizeLinear" for i in node.input)
    _assert_close(prepared, out)


def test_quantize_with_recipe_qoperator_uses_integer_operators(
    prepared: Path, tmp_path: Path
) -> None:
    out = _quantize(prepared, tmp_path, "qop-u8s8-pertensor-minmax")
    ops = _ops(out)
    assert ops["QLinearConv"] == 1 and ops["QGemm"] == 1
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1
    assert "Conv" not in ops and "Gemm" not in ops
    _assert_close(prepared, out)


def test_quantize_with_recipe_keeps_excluded_node_in_float(prepared: Path, tmp_path: Path) -> None:
    out = _quantize(prepared, tmp_path, "qdq-u8s8-perchannel-minmax", nodes_to_exclude=["conv"])
    assert _node(out, "conv").input[0] == "input"  # the graph input, not a DQ output
    _assert_only_fc_quantized(out)
    _assert_close(prepared, out)


def test_quantize_with_recipe_linear_scope_quantizes_only_gemm(
    prepared: Path, tmp_path: Path
) -> None:
    out = _quantize(prepared, tmp_path, "qdq-u8s8-perchannel-minmax-linear")
    ops = _ops(out)
    assert ops["Conv"] == 1 and ops["Relu"] == 1  # float, untouched
    _assert_only_fc_quantized(out)
    _assert_close(prepared, out)


def test_quantize_with_recipe_minmax_range_covers_every_batch(
    prepared: Path, tmp_path: Path
) -> None:
    """The input's range comes from all batches (guards against ORT 1.32's
    CalibMaxIntermediateOutputs, which drops batches: calibrate/ must not use it)."""
    x = _data(40)
    x[0, 0, 0, 0] = 9.0  # the extremes sit in the first and the last batch
    x[-1, 0, 0, 0] = -7.0
    calib = CalibrationSet(x, input_name="input", batch_size=4, source="test")
    quantize_with_recipe(
        prepared, tmp_path / "q.onnx", parse_recipe("qdq-u8s8-pertensor-minmax"), calib,
        cache_dir=tmp_path,
    )  # fmt: skip
    ranges = load_tensors_data(ranges_path(tmp_path, CalibMethod.MINMAX, QuantScope.ALL))
    low, high = (float(np.asarray(v).reshape(-1)[0]) for v in ranges.data["input"].range_value)
    assert low == pytest.approx(-7.0) and high == pytest.approx(9.0)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_quantize_with_recipe_histogram_methods_run_on_capped_strides(
    prepared: Path, tmp_path: Path, method: str
) -> None:
    calib = CalibrationSet(_data(48), input_name="input", batch_size=4, source="test")
    caps = HistogramCaps(max_samples=20, batches_in_memory=2)
    fed, extra = calibration_for(CalibMethod(method), calib, caps)
    assert fed.samples == 20  # 5 whole batches
    assert extra == {"CalibStridedMinMax": 1}  # 2 does not divide 5 batches; 1 does
    out = quantize_with_recipe(
        prepared, tmp_path / "q.onnx", exact_recipe_on(f"qdq-u8s8-perchannel-{method}", HERE), calib,
        cache_dir=tmp_path, caps=caps,
    )  # fmt: skip
    assert _ops(out)["QuantizeLinear"] >= 1
    # Entropy / percentile ranges clip rare outliers on purpose: compare the typical error.
    x = calib.inputs
    ref, got = _run(prepared, x), _run(out, x)
    assert float(np.median(np.abs(ref - got))) <= REL_TOL * float(ref.max() - ref.min())
    assert calibration_for(CalibMethod.MINMAX, calib, caps) == (calib, {})


def test_reshape_to_flatten_is_exact(tmp_path: Path) -> None:
    assert reshape_to_flatten(tiny_model()) == []  # dims unknown without shape inference
    inferred = onnx.shape_inference.infer_shapes(tiny_model())
    rewrites = reshape_to_flatten(inferred)
    assert [r.to_json() for r in rewrites] == [
        {"node": "flatten", "before": "Reshape(shape=[-1, 8])", "after": "Flatten(axis=1)"}
    ]
    onnx.checker.check_model(inferred)
    before, after = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(tiny_model(), before)
    onnx.save(inferred, after)
    x = _data(5)
    np.testing.assert_array_equal(_run(before, x), _run(after, x))


@pytest.mark.parametrize(
    ("shape", "allowzero", "rewritten"),
    [((0, -1), None, True), ((-1, 8), 1, True), ((0, -1), 1, False), ((-1, 4), None, False)],
)
def test_reshape_to_flatten_only_rewrites_true_flattens(
    shape: tuple[int, ...], allowzero: int | None, rewritten: bool
) -> None:
    model = tiny_model(shape=shape, allowzero=allowzero, check=False)
    model = onnx.shape_inference.infer_shapes(model)
    assert bool(reshape_to_flatten(model)) is rewritten


def test_cap_opset_makes_a_newer_model_quantizable(tmp_path: Path) -> None:
    newest = onnx.defs.onnx_opset_version()
    model = tiny_model(opset=newest)
    target = ort_max_qdq_opset(newest)
    rewrites = cap_opset(model, target)
    assert model.opset_import[0].version == target
    assert bool(rewrites) is (target < newest)
    src = tmp_path / "new.onnx"
    onnx.save(model, src)
    prepped = preprocess_model(src, tmp_path / "new_pre.onnx")
    out = _quantize(prepped, tmp_path, "qdq-u8s8-perchannel-minmax")
    _assert_close(prepped, out)  # loads and runs in this onnxruntime


def test_resolve_exclusions_by_name_and_op_type(prepared: Path) -> None:
    nodes = node_table(prepared)
    assert resolve_exclusions(nodes, ["fc"], ["Conv"], model="m") == ["fc", "conv"]
    with pytest.raises(CalibrateError, match=r"\['nope'\] are not in m .*its nodes are: conv"):
        resolve_exclusions(nodes, ["nope"], [], model="m")
    with pytest.raises(CalibrateError, match=r"op types to exclude \['LSTM'\].*Conv, Gemm"):
        resolve_exclusions(nodes, [], ["LSTM"], model="m")


def test_input_spec_of_reads_the_single_input(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), path)
    spec = input_spec_of(path)
    assert (spec.name, spec.shape, spec.dtype) == ("input", ("N", 1, 6, 6), "float32")
    assert spec.describe() == "input 'input' float32 [N, 1, 6, 6]"
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(CalibrateError, match="not a readable ONNX model"):
        input_spec_of(tmp_path / "bad.onnx")


# MACs of the tiny graph for one sample, by hand: conv 2 x 4 x 4 outputs x (1 x 3 x 3) = 288;
# fc 3 outputs x 8 = 24.
CONV_MACS, FC_MACS = 288, 24


@pytest.mark.parametrize(
    ("recipe", "exclude", "integer"),
    [
        ("qdq-u8s8-perchannel-minmax", [], CONV_MACS + FC_MACS),
        ("qop-u8s8-pertensor-minmax", [], CONV_MACS + FC_MACS),
        ("qdq-u8s8-perchannel-minmax-linear", [], FC_MACS),
        ("qdq-u8s8-perchannel-minmax", ["conv"], FC_MACS),
    ],
)
def test_integer_mac_share_counts_the_macs_of_quantized_nodes(
    prepared: Path, tmp_path: Path, recipe: str, exclude: list[str], integer: int
) -> None:
    out = _quantize(prepared, tmp_path, recipe, nodes_to_exclude=exclude)
    share = integer_mac_share(out)
    assert share["total_macs"] == CONV_MACS + FC_MACS
    assert share["integer_macs"] == integer
    assert share["share"] == pytest.approx(integer / (CONV_MACS + FC_MACS), abs=1e-6)
    assert share["nodes_without_shapes"] == []
    assert (share["float_nodes"] == ["conv"]) == (integer == FC_MACS)


def test_integer_mac_share_of_a_float_model_is_zero(prepared: Path) -> None:
    share = integer_mac_share(prepared)
    assert share["share"] == 0.0 and share["total_macs"] == CONV_MACS + FC_MACS


def test_drop_unused_opset_imports_keeps_the_used_domains_only(
    prepared: Path, tmp_path: Path
) -> None:
    """ORT's pre-processing saves every domain it knows; the shipped INT8 file keeps only the
    ones its nodes use, so an older onnxruntime need not know the others."""
    q = quantize_with_recipe(
        prepared,
        tmp_path / "q.onnx",
        parse_recipe("qdq-u8s8-perchannel-minmax"),
        _calib(),
        cache_dir=tmp_path / "ranges",
    )
    model = onnx.load(q)
    model.opset_import.extend(
        [helper.make_opsetid("com.microsoft.nchwc", 1), helper.make_opsetid("org.pytorch.aten", 1)]
    )
    dropped = drop_unused_opset_imports(model)
    assert {"com.microsoft.nchwc", "org.pytorch.aten"} <= set(dropped)
    assert {o.domain for o in model.opset_import} == {n.domain for n in model.graph.node} | {""}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": _data(2)})[0].shape == (2, 3)


def test_calibration_runs_once_per_method_over_the_widest_scope(
    prepared: Path, tmp_path: Path
) -> None:
    """Ranges do not depend on format, types, granularity or reduce_range: one MinMax pass
    over every quantizable op serves all of them (a second pass would need the reader)."""
    assert calibration_scopes(PRESETS) == {
        CalibMethod.MINMAX: QuantScope.ALL,
        CalibMethod.ENTROPY: QuantScope.LINEAR,
        CalibMethod.PERCENTILE: QuantScope.LINEAR,
    }
    calib = CalibrationSet(_data(16), input_name="input", batch_size=4, source="test")
    done = calibrate_ranges(prepared, CalibMethod.MINMAX, QuantScope.ALL, calib, cache_dir=tmp_path)
    assert done.samples == 16 and done.path.is_file()
    empty = CalibrationSet(_data(4)[:0], input_name="input", batch_size=4, source="unused")
    names = ["qdq-u8s8-perchannel-minmax", "qop-u8s8-pertensor-minmax",
             "qdq-s8s8-perchannel-rr-minmax", "qdq-u8s8-pertensor-minmax-linear"]  # fmt: skip
    for name in names:
        out = quantize_with_recipe(
            prepared, tmp_path / f"{name}.onnx", parse_recipe(name), empty, cache_dir=tmp_path
        )
        assert out.is_file()
    assert sorted(p.name for p in tmp_path.glob("ranges-*.json")) == ["ranges-minmax-all.json"]
