"""Checks run on every file the export package writes (torch-free: onnx, onnxruntime, numpy).

- `check_onnx_file(path)`: the file parses, `onnx.checker.check_model(full_check=True)` passes
  and strict shape inference runs; every failure becomes one `ExportError` line (a truncated
  file reads "corrupt or truncated", never a protobuf traceback).
- `describe_onnx(path)`: opset, IR version and the graph's inputs/outputs (names, symbolic or
  fixed dims, dtype strings) — what the manifest records for an artifact.
- Parity: run an `.onnx` in a real ONNX Runtime CPU session at several batch sizes and compare
  its logits with a reference (PyTorch's, or the FP32 model's) element by element.
  `ParityResult.require(...)` turns a miss into `ExportError(exit_code=1)` that names the worst
  element: sample index, class, both values and the batch size it was run at.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.export.errors import ExportError


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    return line or type(exc).__name__


def load_onnx_model(path: str | os.PathLike[str], *, load_external_data: bool = True) -> Any:
    """`onnx.load` with one-line errors for a missing, empty, corrupt or truncated file."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.is_file():
        raise ExportError(f"ONNX model {p} does not exist; pass the path of an exported .onnx file")
    size = p.stat().st_size
    if size == 0:
        raise ExportError(f"ONNX model {p} is empty (0 bytes); re-export it with `onnxship export`")
    try:
        return onnx.load(os.fspath(p), load_external_data=load_external_data)
    except DecodeError as exc:
        raise ExportError(
            f"ONNX model {p} ({size} bytes) is not a readable ONNX protobuf ({_first_line(exc)}): "
            "the file is corrupt or truncated; re-export it with `onnxship export`"
        ) from exc
    except (OSError, ValueError, RuntimeError) as exc:  # e.g. a missing external-data file
        raise ExportError(
            f"ONNX model {p} could not be loaded: {_first_line(exc)}; re-export it as one "
            "self-contained file with `onnxship export`"
        ) from exc


def check_onnx_file(path: str | os.PathLike[str]) -> Any:
    """Parse `path`, run `onnx.checker.check_model(full_check=True)` and strict shape
    inference; return the loaded `ModelProto`. Any failure is one `ExportError` line."""
    import onnx

    p = Path(path)
    model = load_onnx_model(p)
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ExportError(
            f"ONNX model {p} has no graph or IR version: the file is corrupt or truncated "
            "(or not an ONNX model); re-export it with `onnxship export`"
        )
    try:
        onnx.checker.check_model(os.fspath(p), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(
            f"ONNX model {p} fails onnx.checker (full_check): {_first_line(exc)}; the exporter "
            "or converter produced an invalid graph — report it with the model file"
        ) from exc
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
        raise ExportError(
            f"ONNX model {p} fails strict shape inference: {_first_line(exc)}; the graph's "
            "declared types or shapes are inconsistent — re-export it"
        ) from exc
    return model


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name)
    except (KeyError, TypeError, ValueError):
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()


def _value_info(vi: Any) -> dict[str, Any]:
    tensor_type = vi.type.tensor_type
    shape: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_param"):
            shape.append(dim.dim_param)
        elif dim.HasField("dim_value"):
            shape.append(int(dim.dim_value))
        else:
            shape.append(None)  # unknown, unnamed dimension
    return {"name": vi.name, "shape": shape, "dtype": _dtype_name(tensor_type.elem_type)}


def describe_model(model: Any) -> dict[str, Any]:
    """Opset, IR version, inputs and outputs of a loaded `ModelProto`."""
    initializers = {init.name for init in model.graph.initializer}
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "opset": opset,
        "ir_version": int(model.ir_version),
        "inputs": [_value_info(vi) for vi in model.graph.input if vi.name not in initializers],
        "outputs": [_value_info(vi) for vi in model.graph.output],
    }


def describe_onnx(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`{"opset", "ir_version", "inputs": [{"name", "shape", "dtype"}], "outputs": [...]}` of an
    .onnx file, read with `onnx` only (no torch, no session). Symbolic dims are their
    dim_param strings ("batch"), fixed dims ints, e.g. `["batch", 1, 28, 28]`."""
    return describe_model(load_onnx_model(path, load_external_data=False))


# --------------------------------------------------------------------------------- sessions


def ort_session(path: str | os.PathLike[str]) -> Any:
    """A real `onnxruntime.InferenceSession` on the CPU provider, with a one-line error."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; ORT's warnings go to stderr otherwise
    try:
        return ort.InferenceSession(
            os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ExportError(
            f"ONNX Runtime {ort.__version__} cannot load {path}: {_first_line(exc)}; the "
            "model uses an operator or opset this onnxruntime lacks — re-export at a supported "
            "opset"
        ) from exc


def check_parity_batch_sizes(sizes: Sequence[int], *, example: str) -> None:
    """Parity must run at >= 2 distinct batch sizes: that is what proves the batch axis dynamic."""
    if len(set(sizes)) < 2 or any(not isinstance(b, int) or b < 1 for b in sizes):
        raise ExportError(
            f"parity_batch_sizes must hold >= 2 distinct positive sizes (e.g. {example}) to "
            f"prove the dynamic batch axis, got {sizes!r}"
        )


def run_batched(
    session: Any, x: np.ndarray, batch_size: int, *, input_name: str | None = None
) -> np.ndarray:
    """Run `session` over `x` in slices of `batch_size`; return the concatenated first output
    as float32. `x` is cast to float16 when the model's input is float16 (no keep_io_types)."""
    if input_name is None:
        input_name = session.get_inputs()[0].name
    declared = next((i.type for i in session.get_inputs() if i.name == input_name), "")
    if declared == "tensor(float16)":
        x = x.astype(np.float16)
    outs = [
        session.run(None, {input_name: x[i : i + batch_size]})[0]
        for i in range(0, x.shape[0], batch_size)
    ]
    return np.concatenate(outs, axis=0).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------- parity


@dataclass(frozen=True)
class WorstElement:
    sample: int  # row of the parity set (= MNIST test image index)
    cls: int  # logit position
    reference: float
    candidate: float
    batch_size: int

    @property
    def abs_diff(self) -> float:
        return abs(self.candidate - self.reference)


@dataclass(frozen=True)
class ParityResult:
    """Logits of a candidate model vs a reference on the same samples, per batch size."""

    reference_name: str
    candidate_name: str
    samples: int
    batch_sizes: tuple[int, ...]
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    argmax_agreement: float  # fraction in [0, 1], the worst over batch sizes
    disagreements: int  # samples whose argmax differs (worst batch size)
    worst: WorstElement
    per_batch_size: dict[int, dict[str, float]] = field(default_factory=dict)
    data: str | None = None  # what the samples are (None: the MNIST test split)

    def to_metrics(self) -> dict[str, Any]:
        return {
            "reference": self.reference_name,
            "candidate": self.candidate_name,
            "samples": self.samples,
            "data": self.data or "MNIST test split, first images in file order",
            "batch_sizes": list(self.batch_sizes),
            "max_abs_logit_diff": self.max_abs_logit_diff,
            "mean_abs_logit_diff": self.mean_abs_logit_diff,
            "argmax_agreement": self.argmax_agreement,
            "argmax_disagreements": self.disagreements,
            "worst": {
                "sample": self.worst.sample,
                "class": self.worst.cls,
                "reference": self.worst.reference,
                "candidate": self.worst.candidate,
                "batch_size": self.worst.batch_size,
            },
            "per_batch_size": {str(k): v for k, v in self.per_batch_size.items()},
        }

    def describe_worst(self) -> str:
        w = self.worst
        return (
            f"worst element: sample {w.sample}, class {w.cls}: {self.reference_name} "
            f"{w.reference:.6f}, {self.candidate_name} {w.candidate:.6f} "
            f"(|Δ| {w.abs_diff:.3e}, batch size {w.batch_size})"
        )

    def require(self, *, what: str, atol: float | None, min_agreement: float, fix: str) -> None:
        """Raise `ExportError(exit_code=1)` unless max |Δlogit| <= atol (when given) and the
        argmax agreement >= min_agreement. The message shows the worst element."""
        problems = []
        if atol is not None and not self.max_abs_logit_diff <= atol:
            problems.append(f"max |Δlogit| {self.max_abs_logit_diff:.3e} > tolerance {atol:.1e}")
        if self.argmax_agreement < min_agreement:
            problems.append(
                f"argmax agreement {self.argmax_agreement:.4%} < required {min_agreement:.2%} "
                f"({self.disagreements} of {self.samples} samples differ)"
            )
        if problems:
            raise ExportError(
                f"parity check failed for {what} vs {self.reference_name} on {self.samples} "
                f"{f'samples of {self.data}' if self.data else 'MNIST test images'} at batch sizes {', '.join(map(str, self.batch_sizes))}: "
                f"{'; '.join(problems)}; {self.describe_worst()}; {fix}",
                exit_code=1,
            )


def compare_logits(
    reference: np.ndarray,
    candidates: dict[int, np.ndarray],
    *,
    reference_name: str,
    candidate_name: str,
) -> ParityResult:
    """Compare `reference` logits (N, C) with the candidate's logits computed at each batch
    size (`{batch_size: (N, C)}`)."""
    if not candidates:
        raise ValueError("compare_logits needs at least one batch size")
    ref = np.asarray(reference, dtype=np.float64)
    ref_arg = ref.argmax(axis=1)
    worst: WorstElement | None = None
    per_bs: dict[int, dict[str, float]] = {}
    max_diff = -1.0
    mean_diff = 0.0
    min_agree = 1.0
    disagreements = 0
    for bs, cand in candidates.items():
        c = np.asarray(cand, dtype=np.float64)
        if c.shape != ref.shape:
            raise ExportError(
                f"{candidate_name} returned logits of shape {c.shape} at batch size {bs}, "
                f"expected {ref.shape} like {reference_name}; the exported graph is wrong",
                exit_code=1,
            )
        diff = np.abs(c - ref)
        if not np.all(np.isfinite(c)):
            diff = np.where(np.isfinite(c), diff, np.inf)
        flat = int(np.argmax(diff))
        row, col = divmod(flat, ref.shape[1])
        bs_max = float(diff[row, col])
        agree_mask = c.argmax(axis=1) == ref_arg
        agree = float(agree_mask.mean())
        per_bs[bs] = {
            "max_abs_logit_diff": bs_max,
            "argmax_agreement": agree,
        }
        if bs_max > max_diff:
            max_diff = bs_max
            worst = WorstElement(int(row), int(col), float(ref[row, col]), float(c[row, col]), bs)
        mean_diff = max(mean_diff, float(np.mean(diff)))
        min_agree = min(min_agree, agree)
        disagreements = max(disagreements, int((~agree_mask).sum()))
    assert worst is not None
    return ParityResult(
        reference_name=reference_name,
        candidate_name=candidate_name,
        samples=int(ref.shape[0]),
        batch_sizes=tuple(candidates),
        max_abs_logit_diff=max_diff if math.isfinite(max_diff) else float("inf"),
        mean_abs_logit_diff=mean_diff,
        argmax_agreement=min_agree,
        disagreements=disagreements,
        worst=worst,
        per_batch_size=per_bs,
    )


def onnx_parity(
    path: str | os.PathLike[str],
    x: np.ndarray,
    reference: np.ndarray,
    *,
    batch_sizes: Sequence[int],
    reference_name: str,
    candidate_name: str = "onnxruntime",
    session: Any = None,
) -> ParityResult:
    """Run the .onnx at `path` (real ORT CPU session) over `x` at each batch size and compare
    with `reference` logits."""
    sess = session if session is not None else ort_session(path)
    outputs = {int(bs): run_batched(sess, x, int(bs)) for bs in batch_sizes}
    return compare_logits(
        reference, outputs, reference_name=reference_name, candidate_name=candidate_name
    )
