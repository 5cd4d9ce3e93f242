"""FP32 ONNX -> FP16 ONNX, checked like the FP32 file and compared with it.

`fp16_from_onnx(src, cfg, out_path)`:
1. checks the source (`check_onnx_file`: a corrupt or truncated file is a one-line error) and
   that it is an FP32 onnxship export (its metadata gives the input normalisation);
2. converts with `onnxruntime.transformers.float16.convert_float_to_float16` (the maintained
   successor of onnxruntime-tools), float32 inputs/outputs kept by default (`keep_io_types`),
   op types in `op_block_list` kept in float32 *in addition to* the converter's own
   `DEFAULT_OP_BLOCK_LIST` (ops without float16 kernels; replacing that list would break
   models that use them);
3. reports float32 initializers outside the float16 range instead of letting the converter
   clip them silently (it maps |w| > 65504 to ±65504 and 0 < |w| < 2^-24 to ±2^-24):
   - overflow (|w| > 65504) in a tensor that was converted is an error (exit 1): a weight
     clipped to 65504 changes what the model computes, by an amount no tolerance can bound;
     the message names the tensors and the op types to put in `op_block_list` (their tensors
     then stay float32);
   - underflow (0 < |w| < 2^-24) is recorded in the metrics (and noted by the CLI): such a
     weight contributes < 6e-8 x activation, far below float16's own rounding of the sum, and
     the parity check below measures the total effect anyway;
4. sorts the graph topologically with onnx-ir's `TopologicalSortPass`: with `keep_io_types`
   the converter appends the input Casts at the end of the node list and `onnx.checker`
   rejects the result ("Nodes in a graph must be topologically sorted");
5. copies the metadata with precision "fp16" and source sha256 = the FP32 file's sha256;
6. writes one file atomically after `check_onnx_file` and parity vs the FP32 model in real
   ONNX Runtime sessions on the MNIST test set (all 10,000 by default) at batch 1 and 1,000:
   argmax agreement >= `min_agreement` (99.9 %) or `ExportError(exit_code=1)` showing the worst
   element; max |Δlogit| is reported. The FP16/FP32 byte ratio is reported (target <= 0.55).

Note: ONNX Runtime's CPU provider has few float16 kernels; it runs such a file by inserting
casts, so FP16 is a size (and GPU) format here, not a CPU speed-up.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.core import model_meta
from onnxship.core.artifact import Artifact, atomic_output, sha256_file
from onnxship.core.errors import CoreError
from onnxship.export.checks import (
    check_onnx_file,
    check_parity_batch_sizes,
    compare_logits,
    describe_model,
    ort_session,
    run_batched,
)
from onnxship.export.errors import ExportError
from onnxship.export.onnx_export import mnist_test_inputs

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
FP16_MIN_POSITIVE = 2.0**-24  # smallest float16 subnormal, ~5.96e-08
BYTES_RATIO_TARGET = 0.55
MNIST_TEST_SIZE = 10_000
_LIST_LIMIT = 10  # tensors named per category in metrics/messages


@dataclass(frozen=True)
class Fp16Config:
    """How to convert an FP32 .onnx to FP16.

    keep_io_types: keep the graph's float32 inputs/outputs (casts inside the graph), so
        callers feed the same float32 tensors as to the FP32 model.
    op_block_list: op types kept in float32, added to the converter's DEFAULT_OP_BLOCK_LIST.
    min_agreement: argmax agreement with the FP32 model required on the parity images.
    parity_samples: MNIST test images compared (10,000 = the full test set).
    parity_batch_sizes: ORT batch sizes the FP16 model is run at (>= 2 distinct sizes).
    """

    keep_io_types: bool = True
    op_block_list: tuple[str, ...] = ()
    min_agreement: float = 0.999
    parity_samples: int = MNIST_TEST_SIZE
    parity_batch_sizes: tuple[int, ...] = (1, 1000)

    def validate(self) -> None:
        if not (math.isfinite(self.min_agreement) and 0 <= self.min_agreement <= 1):
            raise ExportError(
                f"min_agreement must be a fraction in [0, 1], got {self.min_agreement}"
            )
        if not 1 <= self.parity_samples <= MNIST_TEST_SIZE:
            raise ExportError(
                f"parity_samples must be in [1, {MNIST_TEST_SIZE}] MNIST test images, got "
                f"{self.parity_samples}"
            )
        check_parity_batch_sizes(self.parity_batch_sizes, example="1,1000")
        bad = [op for op in self.op_block_list if not op or not op.replace("_", "").isalnum()]
        if bad:
            raise ExportError(
                f"op_block_list entries must be ONNX op type names like Gemm or Conv, got {bad!r}"
            )


# ------------------------------------------------------------------------------ fp16 range


def _float_tensors(model: Any) -> dict[str, np.ndarray]:
    """Float32 initializers and Constant-node tensors of the main graph, by name."""
    from onnx import TensorProto, numpy_helper

    found: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            found[init.name] = numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    found[node.output[0]] = numpy_helper.to_array(attr.t)
    return found


def _float16_names(model: Any) -> set[str]:
    from onnx import TensorProto

    names = {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT16:
                    names.add(node.output[0])
    return names


def fp16_range_report(source: Any, converted: Any) -> dict[str, Any]:
    """Float32 tensors of `source` that became float16 in `converted`, with values outside
    float16's range: overflow (|w| > 65504) and underflow (0 < |w| < 2^-24)."""
    tensors = _float_tensors(source)
    now_fp16 = _float16_names(converted)
    overflow: list[dict[str, Any]] = []
    underflow: list[dict[str, Any]] = []
    max_abs = 0.0
    for name, arr in tensors.items():
        if name not in now_fp16 or arr.size == 0:
            continue
        mag = np.abs(arr[np.isfinite(arr)].astype(np.float64))
        if mag.size == 0:
            continue
        max_abs = max(max_abs, float(mag.max()))
        n_over = int((mag > FP16_MAX).sum())
        if n_over:
            overflow.append({"name": name, "count": n_over, "max_abs": float(mag.max())})
        tiny = mag[(mag > 0) & (mag < FP16_MIN_POSITIVE)]
        if tiny.size:
            underflow.append({"name": name, "count": int(tiny.size), "min_abs": float(tiny.min())})
    return {
        "converted_tensors": len([n for n in tensors if n in now_fp16]),
        "kept_float32_tensors": len([n for n in tensors if n not in now_fp16]),
        "max_abs_converted": max_abs,
        "overflow_values": sum(t["count"] for t in overflow),
        "overflow_tensors": overflow[:_LIST_LIMIT],
        "underflow_values": sum(t["count"] for t in underflow),
        "underflow_tensors": underflow[:_LIST_LIMIT],
        "policy": "overflow (|w| > 65504) fails; underflow (0 < |w| < 2^-24, raised to "
        "±2^-24 by the converter) is recorded",
    }


def _consumers(model: Any, names: set[str]) -> list[str]:
    return sorted({n.op_type for n in model.graph.node if names.intersection(n.input)})


# ------------------------------------------------------------------------------ conversion


def _topological_sort(model: Any) -> Any:
    import onnx_ir as ir
    from onnx_ir.passes.common import TopologicalSortPass

    ir_model = ir.serde.deserialize_model(model)
    result = TopologicalSortPass()(ir_model)
    return ir.serde.serialize_model(result.model)


def _convert(source: Any, cfg: Fp16Config) -> tuple[Any, list[str]]:
    import onnx
    from onnxruntime.transformers import float16

    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(cfg.op_block_list))
    work = onnx.ModelProto()
    work.CopyFrom(source)
    try:
        converted = float16.convert_float_to_float16(
            work, keep_io_types=cfg.keep_io_types, op_block_list=block
        )
    except Exception as exc:  # the converter asserts and raises plain exceptions
        raise ExportError(
            f"onnxruntime's float16 converter failed: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}; try adding the "
            "failing op types to --op-block-list"
        ) from exc
    return converted, block


def _source_meta(path: Path, model: Any) -> dict[str, str]:
    raw = model_meta.metadata_of_proto(model)
    precision = raw.get(model_meta.PRECISION)
    if precision is not None and precision != "fp32":
        raise ExportError(
            f"{path} is a {precision} model (metadata {model_meta.PRECISION}); fp16 converts "
            "FP32 models only — pass the FP32 export (e.g. artifacts/student-fp32.onnx)"
        )
    try:
        model_meta.parse_meta(raw, source=str(path))
    except CoreError as exc:
        raise ExportError(str(exc)) from exc
    float_inputs = [
        vi.name
        for vi in model.graph.input
        if vi.type.tensor_type.elem_type == 1  # FLOAT
    ]
    if not float_inputs:
        raise ExportError(
            f"{path} has no float32 graph input; fp16 expects an FP32 image classifier "
            "exported by `onnxship export`"
        )
    return raw


def _npz_inputs(path: str | os.PathLike[str], samples: int) -> tuple[np.ndarray, Any]:
    from onnxship.core.dataset import load_npz
    from onnxship.core.errors import CoreError

    try:
        data = load_npz(path)
    except CoreError as exc:
        raise ExportError(str(exc)) from exc
    x = data.only_input()[:samples]
    return x, None if data.labels is None else data.labels[:samples]


def fp16_from_onnx(
    src: str | os.PathLike[str],
    cfg: Fp16Config,
    out_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    data_npz: str | os.PathLike[str] | None = None,
) -> Artifact:
    """Convert the FP32 `.onnx` at `src` to FP16 at `out_path` (one checked file).
    Parity data: the first `parity_samples` of `data_npz` (x, y) when given, else MNIST test.

    Raises `ExportError` (exit 2) for bad input (corrupt or non-FP32 source, unwritable output)
    and `ExportError(exit_code=1)` when a value overflows float16 or parity fails.
    """
    import onnx
    import onnxruntime as ort

    from onnxship.core.version import __version__

    cfg.validate()
    src_path = Path(src)
    out = Path(out_path)
    if out.resolve() == src_path.resolve():
        raise ExportError(
            f"fp16 output {out} is its own source: stages never modify a file in place; "
            "choose another output path"
        )
    if not out.parent.is_dir():
        raise ExportError(
            f"cannot write {out}: its folder {out.parent} does not exist; create it or choose "
            "another output path"
        )
    if not os.access(out.parent, os.W_OK):
        raise ExportError(f"cannot write {out}: its folder {out.parent} is not writable")

    source = check_onnx_file(src_path)
    raw_meta = _source_meta(src_path, source)
    source_sha256 = sha256_file(src_path)
    mean = tuple(json.loads(raw_meta[model_meta.INPUT_MEAN]))
    std = tuple(json.loads(raw_meta[model_meta.INPUT_STD]))

    converted, block = _convert(source, cfg)
    ranges = fp16_range_report(source, converted)
    if ranges["overflow_values"]:
        names = {t["name"] for t in ranges["overflow_tensors"]}
        worst = max(ranges["overflow_tensors"], key=lambda t: t["max_abs"])
        raise ExportError(
            f"{src_path}: {ranges['overflow_values']} float32 weight value(s) exceed float16's "
            f"range (|w| > {FP16_MAX:g}) in {', '.join(sorted(names))} (largest |w| "
            f"{worst['max_abs']:.6g} in {worst['name']}); converting would clip them to "
            f"±{FP16_MAX:g}. Keep their consumers in float32: --op-block-list "
            f"{','.join(_consumers(source, names))}",
            exit_code=1,
        )
    if ranges["underflow_values"]:
        log.info(
            "%s: %d float32 weight value(s) below float16's smallest subnormal (2^-24) are "
            "raised to ±2^-24 by the converter (tensors: %s)",
            src_path,
            ranges["underflow_values"],
            ", ".join(t["name"] for t in ranges["underflow_tensors"]),
        )

    final = _topological_sort(converted)
    model_meta.set_metadata(
        final,
        {
            model_meta.PRODUCER: f"onnxship {__version__}",
            model_meta.SOURCE_SHA256: source_sha256,
            model_meta.PRECISION: "fp16",
        },
    )

    if data_npz is not None:
        x, labels = _npz_inputs(data_npz, cfg.parity_samples)
    else:
        x, labels = mnist_test_inputs(data_dir, cfg.parity_samples, mean, std)
    ref_session = ort_session(src_path)
    reference = run_batched(ref_session, x, 1000)

    with atomic_output(out) as tmp:
        onnx.save_model(final, os.fspath(tmp), save_as_external_data=False)
        checked = check_onnx_file(tmp)
        description = describe_model(checked)
        session = ort_session(tmp)
        outputs = {bs: run_batched(session, x, bs) for bs in cfg.parity_batch_sizes}
        parity = compare_logits(
            reference, outputs, reference_name="fp32-onnx", candidate_name="fp16-onnx"
        )
        parity.require(
            what=f"{out.name} (FP16 of {src_path.name})",
            atol=None,
            min_agreement=cfg.min_agreement,
            fix="keep the sensitive op types in float32 with --op-block-list",
        )
        fp16_logits = outputs[max(outputs)]

    fp32_bytes = src_path.stat().st_size
    fp16_bytes = out.stat().st_size
    ratio = fp16_bytes / fp32_bytes
    if ratio > BYTES_RATIO_TARGET:
        log.warning(
            "%s is %.1f %% of the FP32 file's bytes (target <= %.0f %%): float32 tensors kept "
            "by the block list or a graph too small for weights to dominate",
            out,
            100 * ratio,
            100 * BYTES_RATIO_TARGET,
        )
    op_types = Counter(node.op_type for node in checked.graph.node)
    init_dtypes = Counter(
        str(onnx.helper.tensor_dtype_to_np_dtype(i.data_type)) for i in checked.graph.initializer
    )
    metrics: dict[str, Any] = {
        "precision": "fp16",
        "architecture": raw_meta.get(model_meta.ARCHITECTURE),
        "opset": description["opset"],
        "ir_version": description["ir_version"],
        "inputs": description["inputs"],
        "outputs": description["outputs"],
        "keep_io_types": cfg.keep_io_types,
        "op_block_list_effective": block,
        "op_types": dict(sorted(op_types.items())),
        "initializer_dtypes": dict(sorted(init_dtypes.items())),
        "fp16_range": ranges,
        "topological_sort": "onnx_ir.passes.common.TopologicalSortPass",
        "fp32_bytes": fp32_bytes,
        "fp16_bytes": fp16_bytes,
        "bytes_ratio": round(ratio, 4),
        "bytes_ratio_target": BYTES_RATIO_TARGET,
        "bytes_ratio_ok": ratio <= BYTES_RATIO_TARGET,
        "parity": parity.to_metrics(),
        "top1_on_parity_samples": None
        if labels is None
        else {
            "samples": int(labels.shape[0]),
            "fp32": float((reference.argmax(axis=1) == labels).mean()),
            "fp16": float((fp16_logits.argmax(axis=1) == labels).mean()),
        },
        "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }
    log.info(
        "fp16 %s: %.1f %% of FP32 bytes, argmax agreement %.4f, max |dlogit| %.2e",
        out,
        100 * ratio,
        parity.argmax_agreement,
        parity.max_abs_logit_diff,
    )
    return Artifact.from_file(
        out, stage="fp16", config=cfg, parent_sha256=source_sha256, metrics=metrics
    )
