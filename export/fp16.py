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
   ONNX Runtime sessions at batch 1 and 1,000 on the parity data: the MNIST test set (all
   10,000 by default, normalised with the model's metadata), or your own dataset `.npz`
   (`data=`: preprocessed, fed as is, one array per input; no metadata needed). Class scores
   ([batch, classes]): argmax agreement >= `min_agreement` (99.9 %); any other output: SQNR
   >= `min_sqnr_db`; else `ExportError(exit_code=1)` showing the worst element; max |Δ| is
   reported. The FP16/FP32 byte ratio is reported (target <= 0.55).

Note: ONNX Runtime's CPU provider has few float16 kernels; it runs such a file by inserting
casts, so FP16 is a size (and GPU) format here, not a CPU speed-up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.core import model_meta
from onnxship.core.artifact import Artifact, atomic_output, sha256_file
from onnxship.core.errors import CoreError
from onnxship.core.flags import flag, op_types, unit_interval
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
    min_sqnr_db: output SQNR vs FP32 required for a model whose output is not class scores
        (parity on your own data only; 40 dB = an RMS error of 1 % of the output's RMS).
    """

    # fmt: off
    keep_io_types: bool = field(default=True, metadata=flag(
        "--no-keep-io-types", "make the graph's inputs/outputs float16 too (callers must then "
        "feed float16)", action="store_true", invert=True))
    op_block_list: tuple[str, ...] = field(default=(), metadata=flag(
        "--op-block-list", "op types to keep in float32, e.g. Gemm,Softmax (added to the "
        "converter's defaults)", type=op_types, metavar="A,B"))
    min_agreement: float = field(default=0.999, metadata=flag(
        "--min-agreement", "argmax agreement with the FP32 model required on the parity data "
        "(default: {default})", type=unit_interval))
    parity_samples: int = MNIST_TEST_SIZE
    parity_batch_sizes: tuple[int, ...] = (1, 1000)
    min_sqnr_db: float = field(default=40.0, metadata=flag(
        "--min-sqnr", "output SQNR vs FP32 required when the output is not class scores "
        "(default: {default:g})", type=float, metavar="DB"))
    # fmt: on

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
        if not math.isfinite(self.min_sqnr_db):
            raise ExportError(f"min_sqnr_db must be a finite number of dB, got {self.min_sqnr_db}")
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


def _source_meta(path: Path, model: Any, *, need_normalisation: bool) -> dict[str, str]:
    raw = model_meta.metadata_of_proto(model)
    precision = raw.get(model_meta.PRECISION)
    if precision is not None and precision != "fp32":
        raise ExportError(
            f"{path} is a {precision} model (metadata {model_meta.PRECISION}); fp16 converts "
            "FP32 models only — pass the FP32 export (e.g. artifacts/student-fp32.onnx)"
        )
    if need_normalisation:
        from onnxship.core.dataset import require_mnist_data

        try:
            require_mnist_data(raw, source=str(path), flag="--data PARITY.npz")
        except CoreError as exc:
            raise ExportError(str(exc)) from exc
    if need_normalisation and (model_meta.INPUT_MEAN not in raw or model_meta.INPUT_STD not in raw):
        raise ExportError(
            f"{path} has no onnxship metadata (onnxship.input_mean / onnxship.input_std), so "
            "MNIST parity images cannot be normalised for it; pass your own preprocessed "
            "parity data with --data PARITY.npz ('x', or one array per input)"
        )
    if need_normalisation:
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


def fp16_from_onnx(
    src: str | os.PathLike[str],
    cfg: Fp16Config,
    out_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
) -> Artifact:
    """Convert the FP32 `.onnx` at `src` to FP16 at `out_path` (one checked file).

    data: a dataset `.npz` for the parity check instead of the MNIST test set (any model,
    metadata or not; preprocessed inputs, fed as is).

    Raises `ExportError` (exit 2) for bad input (corrupt or non-FP32 source, unwritable output)
    and `ExportError(exit_code=1)` when a value overflows float16 or parity fails.
    """
    import onnx
    import onnxruntime as ort

    cfg.validate()
    src_path = Path(src)
    out = Path(out_path)
    _check_output_path(src_path, out)

    source = check_onnx_file(src_path)
    raw_meta = _source_meta(src_path, source, need_normalisation=data is None)
    source_sha256 = sha256_file(src_path)
    ref_session = ort_session(src_path)
    parity_data = _ParityData.load(ref_session, data, data_dir, cfg, raw_meta)

    converted, block = _convert(source, cfg)
    ranges = _checked_ranges(source, converted, src_path)

    final = _with_metadata(_topological_sort(converted), source_sha256)

    reference = parity_data.run(ref_session, 1000)
    parity_data.check_labels(reference, what=f"{src_path} on {data}")

    with atomic_output(out) as tmp:
        onnx.save_model(final, os.fspath(tmp), save_as_external_data=False)
        checked = check_onnx_file(tmp)
        description = describe_model(checked)
        session = ort_session(tmp)
        outputs = {bs: parity_data.run(session, bs) for bs in cfg.parity_batch_sizes}
        parity_metrics, fp16_logits = parity_data.check(
            reference, outputs, cfg, what=f"{out.name} (FP16 of {src_path.name})"
        )

    sizes = _bytes_metrics(src_path, out)
    metrics: dict[str, Any] = {
        "precision": "fp16",
        "architecture": raw_meta.get(model_meta.ARCHITECTURE),
        **_structure_metrics(checked, description, cfg, block, ranges),
        **sizes,
        "parity": parity_metrics,
        "top1_on_parity_samples": parity_data.top1(reference, fp16_logits),
        "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }
    log.info(
        "fp16 %s: %.1f %% of FP32 bytes, parity %s",
        out,
        100 * sizes["fp16_bytes"] / sizes["fp32_bytes"],
        {k: v for k, v in parity_metrics.items() if not isinstance(v, dict | list)},
    )
    return Artifact.from_file(
        out, stage="fp16", config=cfg, parent_sha256=source_sha256, metrics=metrics
    )


def _with_metadata(final: Any, source_sha256: str) -> Any:
    """`final` with the producer, the source's sha256 and the precision in its metadata."""
    from onnxship.core.version import __version__

    model_meta.set_metadata(
        final,
        {
            model_meta.PRODUCER: f"onnxship {__version__}",
            model_meta.SOURCE_SHA256: source_sha256,
            model_meta.PRECISION: "fp16",
        },
    )
    return final


def _bytes_metrics(src_path: Path, out: Path) -> dict[str, Any]:
    """The FP16 file's size against the FP32 one's (a warning above the target ratio)."""
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
    return {
        "fp32_bytes": fp32_bytes,
        "fp16_bytes": fp16_bytes,
        "bytes_ratio": round(ratio, 4),
        "bytes_ratio_target": BYTES_RATIO_TARGET,
        "bytes_ratio_ok": ratio <= BYTES_RATIO_TARGET,
    }


def _check_output_path(src_path: Path, out: Path) -> None:
    """The output is a new file in a writable folder (stages never modify a file in place)."""
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


def _checked_ranges(source: Any, converted: Any, src_path: Path) -> dict[str, Any]:
    """`fp16_range_report` of the conversion; a weight beyond float16's range is an error
    (exit 1) naming the consumers to keep in float32, one below its smallest subnormal is
    logged."""
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

    return ranges


def _structure_metrics(
    checked: Any, description: dict[str, Any], cfg: Fp16Config, block: Any, ranges: Any
) -> dict[str, Any]:
    """What the FP16 file holds: opset, I/O, op types, initializer dtypes, ranges."""
    import onnx

    op_types = Counter(node.op_type for node in checked.graph.node)
    init_dtypes = Counter(
        str(onnx.helper.tensor_dtype_to_np_dtype(i.data_type)) for i in checked.graph.initializer
    )
    return {
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
    }


# ------------------------------------------------------------------------------ parity data


@dataclass(frozen=True)
class _ParityData:
    """The samples FP16 is compared with FP32 on: MNIST test images, or a dataset `.npz`."""

    inputs: dict[str, np.ndarray]  # by model input name (float32; cast per session)
    labels: np.ndarray | None
    description: str | None  # None = the MNIST test split (ParityResult's default wording)
    sha256: str | None = None

    @classmethod
    def load(
        cls,
        ref_session: Any,
        data: str | os.PathLike[str] | None,
        data_dir: str | os.PathLike[str] | None,
        cfg: Fp16Config,
        raw_meta: dict[str, str],
    ) -> _ParityData:
        if data is None:
            mean = tuple(json.loads(raw_meta[model_meta.INPUT_MEAN]))
            std = tuple(json.loads(raw_meta[model_meta.INPUT_STD]))
            x, labels = mnist_test_inputs(data_dir, cfg.parity_samples, mean, std)
            return cls({ref_session.get_inputs()[0].name: x}, labels, None)
        from onnxship.runtime_bench.accuracy import load_data_for
        from onnxship.runtime_bench.errors import BenchError

        try:
            arrays, _ = load_data_for(ref_session, data)
        except BenchError as exc:
            raise ExportError(str(exc)) from exc
        return cls(dict(arrays.inputs), arrays.labels, f"{Path(data).name}", arrays.sha256)

    def run(self, session: Any, batch_size: int) -> np.ndarray:
        from onnxship.runtime_bench.accuracy import check_data, run_model
        from onnxship.runtime_bench.inputs import input_specs

        if self.description is None:  # MNIST: one image input (as before)
            return run_batched(session, next(iter(self.inputs.values())), batch_size)
        feeds = check_data(input_specs(session), self.inputs, source=self.description)
        return run_model(session, feeds, batch_size)

    def check(
        self, reference: np.ndarray, outputs: dict[int, np.ndarray], cfg: Fp16Config, *, what: str
    ) -> tuple[dict[str, Any], np.ndarray]:
        """Parity metrics (raises ExportError(exit 1) on failure) and the FP16 outputs."""
        from onnxship.runtime_bench.accuracy import fidelity, is_classifier_output

        last = outputs[max(outputs)]
        if is_classifier_output(reference):
            parity = dataclasses.replace(
                compare_logits(
                    reference, outputs, reference_name="fp32-onnx", candidate_name="fp16-onnx"
                ),
                data=self.description,
            )
            parity.require(
                what=what,
                atol=None,
                min_agreement=cfg.min_agreement,
                fix="keep the sensitive op types in float32 with --op-block-list",
            )
            out = parity.to_metrics()
            out["metric"] = "top1_agreement"
            if self.sha256:
                out["data_sha256"] = self.sha256
            return out, last
        per_bs = {bs: fidelity(reference, o) for bs, o in outputs.items()}
        worst_bs = min(per_bs, key=lambda bs: per_bs[bs]["sqnr_db"])
        worst = per_bs[worst_bs]
        out = {
            "reference": "fp32-onnx",
            "candidate": "fp16-onnx",
            "metric": "sqnr_db",
            "data": self.description,
            "data_sha256": self.sha256,
            "samples": worst["samples"],
            "batch_sizes": list(outputs),
            "sqnr_db": worst["sqnr_db"],
            "max_abs_error": max(f["max_abs_error"] for f in per_bs.values()),
            "min_sqnr_db": cfg.min_sqnr_db,
            "per_batch_size": {str(bs): f for bs, f in per_bs.items()},
        }
        if not worst["sqnr_db"] >= cfg.min_sqnr_db:
            raise ExportError(
                f"parity check failed for {what} vs fp32-onnx on {worst['samples']} samples of "
                f"{self.description}: output SQNR {worst['sqnr_db']:.1f} dB < required "
                f"{cfg.min_sqnr_db:.1f} dB at batch size {worst_bs} (max |error| "
                f"{worst['max_abs_error']:.3g}); keep the sensitive op types in float32 with "
                "--op-block-list",
                exit_code=1,
            )
        return out, last

    def check_labels(self, reference: np.ndarray, what: str) -> None:
        """Labels of a user's npz must be classes of the model (ExportError, exit 2)."""
        from onnxship.runtime_bench.accuracy import is_classifier_output, top1_counts
        from onnxship.runtime_bench.errors import BenchError

        if self.description is None or self.labels is None or not is_classifier_output(reference):
            return
        try:
            top1_counts(reference, self.labels, what=what)
        except BenchError as exc:
            raise ExportError(str(exc)) from exc

    def top1(self, reference: np.ndarray, fp16_out: np.ndarray) -> dict[str, Any] | None:
        from onnxship.runtime_bench.accuracy import is_classifier_output

        if self.labels is None or not is_classifier_output(reference):
            return None
        return {
            "samples": int(self.labels.shape[0]),
            "fp32": float((reference.argmax(axis=1) == self.labels).mean()),
            "fp16": float((fp16_out.argmax(axis=1) == self.labels).mean()),
        }
