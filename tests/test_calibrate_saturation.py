"""U8S8 saturation on purpose: a MatMul built so that, on x86 without VNNI, the int16 sums of
u8 x s8 pairs (VPMADDUBSW) overflow - but only on inputs the validation set never shows.

        x [N, 1, 64]  (calibrated on [0, 0.3] and [0.6, 1]; validated on [0, 0.3] only)
          |
        MatMul "mm"   W [64, 16], every weight in [0.5, 1.0]  -> y [N, 1, 16]

Per-channel int8 weights reach +127 and deployed activations (x >= 0.6) are uint8 >= 153, so
one pair sums to >= 2 x 153 x 63 and mostly past 32767: saturated. Validation inputs (x <= 0.3,
uint8 <= 77) never reach it, so a recipe that saturates passes validation and fails later.
On a VNNI / AMX / arm64 CPU the same recipe accumulates in int32 and is simply exact.

The reference for "exact" is the same QDQ file run with ORT's graph optimisations off: every
op runs in float on dequantized values, i.e. the quantized arithmetic without the integer
kernel. Its SQNR vs FP32 on deployed inputs is ~57 dB (measured); the saturating kernel on an
AVX2 EPYC (onnxruntime 1.32) gave 14.6 dB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxship.calibrate.calibration_data import CalibrationSet
from onnxship.calibrate.ort_static import preprocess_model, quantize_with_recipe
from onnxship.calibrate.quantize import LatencyConfig, QuantizeConfig, int8_from_onnx
from onnxship.calibrate.recipes import SATURATING_CLASSES, parse_recipe
from onnxship.core.env import detected_integer_class, forced_integer_class
from onnxship.runtime_bench.accuracy import sqnr_db

K, M = 64, 16
HERE = detected_integer_class()  # the hardware's class: kernels do not follow an override
# Forcing another class (ONNXSHIP_INTEGER_CLASS) changes the recorded class and the grid, not
# the hardware's kernels: the selection tests below need the two to agree.
FORCED = forced_integer_class()
needs_real_class = pytest.mark.skipif(
    FORCED not in (None, HERE), reason=f"ONNXSHIP_INTEGER_CLASS={FORCED} on {HERE} hardware"
)
EXACT_DB = 45.0  # the quantized arithmetic itself: ~57 dB measured (8-bit steps)
KERNEL_EXACT_DB = 40.0  # integer kernel vs the unfused QDQ arithmetic: rounding only
SATURATED_DB = 25.0  # the saturating kernel on deployed inputs: 14.6 dB measured on AVX2
FAST = LatencyConfig(batch_sizes=(1, 8), warmup=2, seconds_per_batch_size=0.05, min_iterations=5)


def _uniform(lo: float, hi: float, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, (n, 1, K)).astype(np.float32)


@pytest.fixture(scope="module")
def saturating(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | np.ndarray]:
    root = tmp_path_factory.mktemp("saturating")
    weights = np.random.default_rng(0).uniform(0.5, 1.0, (K, M)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "saturating",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, M])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    src = root / "mm.onnx"
    onnx.save(model, src)
    calib = np.concatenate([_uniform(0.0, 0.3, 32, 1), _uniform(0.6, 1.0, 32, 2)])
    np.savez(root / "calib.npz", x=calib)
    np.savez(root / "val.npz", x=_uniform(0.0, 0.3, 64, 3))
    return {"src": src, "calib": calib, "deploy": _uniform(0.6, 1.0, 64, 4), "root": root}


def _run(path: Path, x: np.ndarray, *, integer_kernels: bool = True) -> np.ndarray:
    so = ort.SessionOptions()
    if not integer_kernels:  # QDQ unfused: float ops on dequantized values (the exact reference)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _deploy_sqnr(src: Path, int8: Path, x: np.ndarray, *, integer_kernels: bool = True) -> float:
    return sqnr_db(_run(src, x), _run(int8, x, integer_kernels=integer_kernels))


def _kernel_sqnr(fixture: dict, name: str, tmp_path: Path) -> float:
    """SQNR of this CPU's integer kernels for recipe `name` vs the quantized arithmetic (the
    recipe's QDQ twin, unfused) on deployed inputs: ~infinite when exact, low when saturated.
    Calibration choices (entropy clipping a range) are in both, so only the kernel is judged."""
    x = fixture["deploy"]
    twin = "qdq-" + name.split("-", 1)[1]
    reference = _run(_quantize(fixture, twin, tmp_path), x, integer_kernels=False)
    return sqnr_db(reference, _run(_quantize(fixture, name, tmp_path), x))


def _quantize(fixture: dict, name: str, tmp_path: Path) -> Path:
    prepared = preprocess_model(fixture["src"], tmp_path / f"{name}-pre.onnx")
    calib = CalibrationSet(fixture["calib"], input_name="x", batch_size=16, source="test")
    cache = tmp_path / f"{name}-ranges"
    cache.mkdir(exist_ok=True)
    return quantize_with_recipe(prepared, tmp_path / f"{name}.onnx", parse_recipe(name), calib,
                                cache_dir=cache)  # fmt: skip


def test_u8s8_saturates_exactly_where_the_integer_class_says(saturating, tmp_path) -> None:
    src, deploy = saturating["src"], saturating["deploy"]
    u8s8 = _quantize(saturating, "qdq-u8s8-perchannel-minmax", tmp_path)
    rr = _quantize(saturating, "qdq-u8s8-perchannel-rr-minmax", tmp_path)
    assert _deploy_sqnr(src, u8s8, deploy, integer_kernels=False) >= EXACT_DB  # the arithmetic
    measured = _deploy_sqnr(src, u8s8, deploy)
    if HERE in ("avx2", "avx512"):  # VPMADDUBSW: measured (AVX2) and documented by ORT
        assert measured < SATURATED_DB, f"{HERE}: expected saturation, measured {measured:.1f} dB"
    elif HERE not in SATURATING_CLASSES:  # VNNI / AMX / arm64: int32 sums
        assert measured >= EXACT_DB, f"{HERE}: expected exact int32 sums, {measured:.1f} dB"
    # (sse: "may saturate" - no claim either way; the selection below must be exact there.)
    assert parse_recipe("qdq-u8s8-perchannel-minmax").safe_on(HERE) is (
        HERE not in SATURATING_CLASSES
    )
    assert _deploy_sqnr(src, rr, deploy) >= EXACT_DB  # reduce_range: exact on every class


@needs_real_class
def test_auto_selection_avoids_saturation_on_this_class(saturating, tmp_path) -> None:
    """Every recipe passes validation (no saturating input there); the default search must still
    ship one that is exact here, and search no candidate that saturates on this class."""
    src, deploy, root = saturating["src"], saturating["deploy"], saturating["root"]
    cfg = QuantizeConfig(min_sqnr_db=30.0, latency=FAST, fallback=False)
    art = int8_from_onnx(src, cfg, tmp_path / "mm-int8.onnx", calib_npz=root / "calib.npz",
                         val_npz=root / "val.npz")  # fmt: skip
    m = art.metrics
    assert m["budget"]["metric"] == "sqnr_db" and m["int8_val_top1"] >= 30.0
    shipped = _deploy_sqnr(src, art.path, deploy)
    assert shipped >= EXACT_DB, f"{m['recipe']['name']} saturates on {HERE}: {shipped:.1f} dB"
    searched = [row["name"] for row in m["candidates"][1:]]
    saturated = {}
    for name in searched:
        db = _kernel_sqnr(saturating, name.removesuffix("+fallback"), tmp_path)
        if db < KERNEL_EXACT_DB:
            saturated[name] = round(db, 1)
    assert not saturated, f"the search tried recipes that saturate on {HERE}: {saturated}"
    # The record names where it was validated and where it is safe.
    assert m["integer_class"] == HERE and HERE in m["recipe"]["safe_integer_classes"]
    meta = {p.key: p.value for p in onnx.load(art.path).metadata_props}
    assert meta["onnxship.integer_class"] == HERE
    assert HERE in meta["onnxship.safe_integer_classes"]
    assert "exact on" in meta["onnxship.quant_risk"]


def test_portable_searches_only_recipes_exact_on_every_x86_class(saturating, tmp_path) -> None:
    root = saturating["root"]
    cfg = QuantizeConfig(min_sqnr_db=30.0, latency=FAST, fallback=False, portable=True)
    art = int8_from_onnx(saturating["src"], cfg, tmp_path / "p.onnx",
                         calib_npz=root / "calib.npz", val_npz=root / "val.npz")  # fmt: skip
    m = art.metrics
    x86 = {"amx", "avx512_vnni", "avx_vnni", "avx512", "avx2", "sse"}
    assert m["portable"] is True and x86 <= set(m["recipe"]["safe_integer_classes"])
    for row in m["candidates"][1:]:
        assert x86 <= set(parse_recipe(row["name"]).safe_integer_classes()), row["name"]
    assert _deploy_sqnr(saturating["src"], art.path, saturating["deploy"]) >= EXACT_DB
