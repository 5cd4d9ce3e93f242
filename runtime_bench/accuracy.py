"""Accuracy and fidelity of an `.onnx` file, through an ONNX Runtime session (no torch).

Two data sources:
- MNIST (`evaluate_onnx`): the idx files read with numpy and normalised with the mean and std
  stored in the model's own metadata, so preprocessing cannot drift from training;
- a dataset `.npz` (`evaluate_npz`, CONTRACT.md): already preprocessed, fed as is (no
  normalisation), one array per model input (`x` for a single-input model) and optional
  int64 labels `y`.

With labels the measure is top-1 (the model's first output must be `[batch, classes]`).
Without labels, or besides them, a model can be compared with a reference (its FP32 parent):
top-1 agreement for classifiers, output SQNR (dB) otherwise, max |error| always
(`fidelity`). Results are deterministic: a fixed batch size, one intra-op thread and
sequential execution, so the same file, data and runtime give exactly the same numbers
(`onnxship verify` relies on that).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.core.artifact import sha256_file
from onnxship.core.dataset import ArrayData, load_npz, require_mnist_data
from onnxship.core.errors import CoreError
from onnxship.core.mnist import load_split, normalize, resolve_data_root
from onnxship.core.model_meta import parse_meta
from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.inputs import ORT_TO_NUMPY, InputSpec, input_specs
from onnxship.runtime_bench.session import SessionConfig, create_session

DEFAULT_EVAL_BATCH = 1000
# SQNR of outputs identical up to float32 round-off (a relative error ~1e-7); the value
# reported for an exact match, so that every SQNR stays a finite number in records.
SQNR_CAP_DB = 140.0

METRIC_TOP1 = "top1"
METRIC_AGREEMENT = "top1_agreement"
METRIC_SQNR = "sqnr_db"


def _prepare(x: np.ndarray, shape: tuple[Any, ...], dtype: np.dtype, name: str) -> np.ndarray:
    """Fit NCHW images to the input's layout: NCHW as is, or flattened [N, C*H*W]."""
    if len(shape) == x.ndim:
        fixed = [d for d in shape[1:] if isinstance(d, int)]
        if len(fixed) == x.ndim - 1 and tuple(fixed) != x.shape[1:]:
            raise BenchError(
                f"input '{name}' expects shape {list(shape)}, the data has per-sample shape "
                f"{list(x.shape[1:])}; is this an MNIST classifier?"
            )
        out = x
    elif len(shape) == 2:
        per = int(np.prod(x.shape[1:]))
        if isinstance(shape[1], int) and shape[1] != per:
            raise BenchError(
                f"input '{name}' expects {shape[1]} features per sample, the images have {per}"
            )
        out = x.reshape(x.shape[0], per)
    else:
        raise BenchError(
            f"input '{name}' has rank {len(shape)} (shape {list(shape)}), expected images as "
            f"NCHW (rank 4) or flattened (rank 2)"
        )
    return np.ascontiguousarray(out.astype(dtype, copy=False))


def predict_top1(session: Any, x: np.ndarray, batch_size: int = DEFAULT_EVAL_BATCH) -> np.ndarray:
    """Argmax class of each sample (int64), running the model in fixed-size batches.

    A model with a fixed batch dimension is fed in batches of that size; the last batch is
    padded by repeating its last sample and the padding's predictions are dropped.
    """
    sess = getattr(session, "session", session)
    specs = input_specs(sess)
    if len(specs) != 1:
        raise BenchError(
            f"accuracy needs a model with one input, this one has {len(specs)}: "
            f"{[s.name for s in specs]}"
        )
    spec = specs[0]
    if spec.ort_type not in ORT_TO_NUMPY or not np.issubdtype(spec.dtype, np.floating):
        raise BenchError(
            f"input '{spec.name}' has type {spec.ort_type}; accuracy needs a float image input"
        )
    if batch_size < 1:
        raise BenchError(f"batch size must be >= 1, got {batch_size}")
    fixed_batch = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) else None
    step = fixed_batch or batch_size
    data = _prepare(x, spec.shape, spec.dtype, spec.name)
    n = data.shape[0]
    preds = np.empty(n, dtype=np.int64)
    out_name = sess.get_outputs()[0].name
    for start in range(0, n, step):
        chunk = data[start : start + step]
        real = chunk.shape[0]
        if fixed_batch and real < step:
            pad = np.repeat(chunk[-1:], step - real, axis=0)
            chunk = np.concatenate([chunk, pad], axis=0)
        (logits,) = sess.run([out_name], {spec.name: chunk})
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[0] != chunk.shape[0]:
            raise BenchError(
                f"output '{out_name}' has shape {list(logits.shape)} for a batch of "
                f"{chunk.shape[0]}; expected logits [N, classes]"
            )
        preds[start : start + real] = np.argmax(logits[:real], axis=1)
    return preds


def top1_on_arrays(
    session: Any, x: np.ndarray, labels: np.ndarray, batch_size: int = DEFAULT_EVAL_BATCH
) -> float:
    """Fraction of samples whose argmax logit equals the label (x float32 NCHW, normalised)."""
    labels = np.asarray(labels)
    if x.shape[0] != labels.shape[0]:
        raise BenchError(f"{x.shape[0]} samples but {labels.shape[0]} labels")
    if labels.shape[0] == 0:
        raise BenchError("no samples to evaluate")
    preds = predict_top1(session, x, batch_size)
    return float(np.mean(preds == labels))


def evaluate_onnx(
    path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "test",
    batch_size: int = DEFAULT_EVAL_BATCH,
    provider: str = "cpu",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    return_predictions: bool = False,
    session: SessionConfig | None = None,
) -> dict[str, Any]:
    """MNIST top-1 of an `.onnx` file: {top1, correct, n, split, model_sha256, mean, std, ...}
    (plus `predictions`, the argmax class of every sample, with `return_predictions`).

    The normalisation comes from the model's metadata; `mean`/`std` override it (both or
    neither) for a model exported without onnxship metadata."""
    if (mean is None) != (std is None):
        raise BenchError("give both mean and std (or neither, to read them from the model)")
    p = Path(path)
    handle = _eval_session(p, provider, session)
    if mean is not None and std is not None:
        mean_used, std_used = tuple(mean), tuple(std)
        norm_source = "arguments"
    else:
        raw = dict(handle.session.get_modelmeta().custom_metadata_map)
        require_mnist_data(raw, source=str(p), flag="--data TEST.npz")
        meta = parse_meta(raw, source=str(p))
        mean_used, std_used = meta.mean, meta.std
        norm_source = "model metadata"
    if any(s == 0 for s in std_used):
        raise BenchError(f"{p}: input std {list(std_used)} contains 0; it must be non-zero")
    root = resolve_data_root(data_dir)
    data = load_split(root, split)
    x = normalize(data.images, mean_used, std_used)
    preds = predict_top1(handle, x, batch_size)
    correct = int(np.sum(preds == data.labels))
    n = int(data.labels.shape[0])
    extra = {"predictions": preds} if return_predictions else {}
    return extra | {
        "model": os.fspath(p),
        "model_sha256": sha256_file(p),
        "split": split,
        "top1": correct / n,
        "correct": correct,
        "n": n,
        "mean": list(mean_used),
        "std": list(std_used),
        "normalization_from": norm_source,
        "provider": handle.provider,
        "session": handle.config,
        "batch_size": batch_size,
        "data_dir": os.fspath(root),
    }


# --------------------------------------------------------------------------------------------
# Any model, any data: arrays named after the model's inputs (CONTRACT.md's npz layout)


def _eval_session(path: Path, provider: str, session: SessionConfig | None = None) -> Any:
    """One thread by default (accuracy does not depend on it); `session` (a session-config
    file's options) runs exactly those instead."""
    if session is None:
        session = SessionConfig(intra_op_threads=1, inter_op_threads=1)
    return create_session(path, provider, replace(session, record_assignment=False))


def _show(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_data(
    specs: Sequence[InputSpec], inputs: Mapping[str, np.ndarray], *, source: str
) -> dict[str, np.ndarray]:
    """The arrays to feed, checked against the model's inputs: rank, fixed per-sample dims and
    dtype (float32 data feeds a float16 input, cast; any other mismatch is an error)."""
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in inputs:
            raise BenchError(
                f"{source} has no array for the model's {spec.describe()}; name one array "
                "per input after the input ('x' for a single-input model)"
            )
        x = inputs[spec.name]
        want = spec.sample_shape()
        if not spec.takes_batch_of(x.shape):
            raise BenchError(
                f"{source}: array for input '{spec.name}' has shape {list(x.shape)} "
                f"(per sample {list(x.shape[1:])}), but the model's {spec.describe()} takes "
                f"per sample {_show(want)}; save the data preprocessed to the model's input "
                "shape"
            )
        dtype = spec.dtype
        if x.dtype != dtype and not (x.dtype == np.float32 and dtype == np.float16):
            raise BenchError(
                f"{source}: array for input '{spec.name}' has dtype {x.dtype}, but the model's "
                f"{spec.describe()} takes {dtype}; convert it with .astype('{dtype}')"
            )
        feeds[spec.name] = np.ascontiguousarray(x.astype(dtype, copy=False))
    return feeds


def run_model(
    session: Any, inputs: Mapping[str, np.ndarray], batch_size: int = DEFAULT_EVAL_BATCH
) -> np.ndarray:
    """The model's first output over all samples, run in fixed-size batches (float outputs as
    float32). A model with a fixed batch dimension is fed in batches of that size; the last
    batch is padded by repeating its last sample and the padding's outputs are dropped."""
    sess = getattr(session, "session", session)
    specs = input_specs(sess)
    if batch_size < 1:
        raise BenchError(f"batch size must be >= 1, got {batch_size}")
    first = specs[0]
    fixed_batch = first.shape[0] if first.shape and isinstance(first.shape[0], int) else None
    step = fixed_batch or batch_size
    n = int(next(iter(inputs.values())).shape[0])
    if n == 0:
        raise BenchError("no samples to evaluate")
    out_name = sess.get_outputs()[0].name
    chunks: list[np.ndarray] = []
    for start in range(0, n, step):
        feed = {k: v[start : start + step] for k, v in inputs.items()}
        real = next(iter(feed.values())).shape[0]
        if fixed_batch and real < step:
            feed = {
                k: np.concatenate([v, np.repeat(v[-1:], step - real, axis=0)], axis=0)
                for k, v in feed.items()
            }
        fed = next(iter(feed.values())).shape[0]
        (out,) = sess.run([out_name], feed)
        out = np.asarray(out)
        if out.ndim == 0 or out.shape[0] != fed:
            raise BenchError(
                f"output '{out_name}' has shape {list(out.shape)} for a batch of {fed}; "
                "expected the batch along axis 0"
            )
        chunks.append(out[:real])
    result = np.concatenate(chunks, axis=0)
    if np.issubdtype(result.dtype, np.floating):
        result = result.astype(np.float32, copy=False)
    return result


def is_classifier_output(out: np.ndarray) -> bool:
    """Class scores: `[batch, classes]` with at least two classes."""
    return out.ndim == 2 and out.shape[1] >= 2


def top1_counts(out: np.ndarray, labels: np.ndarray, *, what: str) -> tuple[int, int]:
    """(correct, n) of argmax(out) vs labels; BenchError for a non-classifier output or labels
    outside the model's classes."""
    if not is_classifier_output(out):
        raise BenchError(
            f"{what}: its output has shape {_show(['batch', *out.shape[1:]])}, not [batch, "
            "classes], so top-1 is undefined; measure fidelity to the FP32 model instead "
            "(data without 'y', and a reference model)"
        )
    classes = out.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise BenchError(
            f"{what}: labels range over [{labels.min()}, {labels.max()}], but the model "
            f"outputs {classes} classes (expected labels in [0, {classes - 1}]); check the "
            "label encoding or the model"
        )
    correct = int(np.sum(np.argmax(out, axis=1) == labels))
    return correct, int(labels.shape[0])


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (cand - ref)^2), capped at SQNR_CAP_DB (exact match)."""
    ref = np.asarray(reference, dtype=np.float64)
    err = np.asarray(candidate, dtype=np.float64) - ref
    noise = float(np.sum(err * err))
    signal = float(np.sum(ref * ref))
    if not math.isfinite(noise):
        return -math.inf
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise))


def fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """How closely `candidate` outputs follow `reference` outputs on the same samples.

    metric: "top1_agreement" for class scores ([batch, classes]), else "sqnr_db"; value is
    that metric. max_abs_error and sqnr_db are always reported."""
    if reference.shape != candidate.shape:
        raise BenchError(
            f"the model's output has shape {list(candidate.shape)}, the reference's "
            f"{list(reference.shape)}; fidelity compares models with the same output"
        )
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    out: dict[str, Any] = {
        "samples": int(reference.shape[0]),
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "sqnr_db": round(sqnr_db(reference, candidate), 3),
    }
    if is_classifier_output(reference):
        agree = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
        out.update(metric=METRIC_AGREEMENT, value=agree, top1_agreement=agree)
    else:
        out.update(metric=METRIC_SQNR, value=out["sqnr_db"])
    return out


def non_float_dtypes(specs: Sequence[InputSpec]) -> dict[str, Any]:
    """Inputs whose data is not float32 by contract (integer ids, bools): name -> dtype."""
    return {
        s.name: s.dtype
        for s in specs
        if s.ort_type in ORT_TO_NUMPY and not np.issubdtype(s.dtype, np.floating)
    }


def load_data_for(
    session: Any, path: str | os.PathLike[str], *, require_labels: bool = False
) -> tuple[ArrayData, dict[str, np.ndarray]]:
    """Read a dataset `.npz` for this model's inputs: (the checked file, the feeds)."""
    specs = input_specs(session)
    try:
        data = load_npz(
            path,
            input_names=[s.name for s in specs],
            require_labels=require_labels,
            input_dtypes=non_float_dtypes(specs),
        )
    except CoreError as exc:
        raise BenchError(str(exc)) from exc
    return data, check_data(specs, data.inputs, source=os.fspath(path))


def evaluate_npz(
    path: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    reference: str | os.PathLike[str] | None = None,
    batch_size: int = DEFAULT_EVAL_BATCH,
    provider: str = "cpu",
    return_predictions: bool = False,
    session: SessionConfig | None = None,
) -> dict[str, Any]:
    """Top-1 of an `.onnx` file on a dataset `.npz` (when it has `y`), and its fidelity to
    `reference` (when given). The npz is preprocessed: no normalisation is applied.
    With `return_predictions`, `predictions` holds the argmax class of every sample.

    Returns {metric, top1?, correct?, n, fidelity?, model_sha256, data, data_sha256, ...};
    `metric` names the headline number ("top1", or the fidelity metric without labels)."""
    p = Path(path)
    handle = _eval_session(p, provider, session)
    arrays, feeds = load_data_for(handle, data)
    if arrays.labels is None and reference is None:
        raise BenchError(
            f"{data} has no 'y' labels, so top-1 cannot be measured; to measure fidelity "
            "instead, pass the FP32 model it came from as the reference (--reference FP32.onnx)"
        )
    out = run_model(handle, feeds, batch_size)
    result: dict[str, Any] = {
        "model": os.fspath(p),
        "model_sha256": sha256_file(p),
        "data": os.fspath(data),
        "data_sha256": arrays.sha256,
        "split": "npz",
        "n": arrays.n,
        "normalization_from": "none (the npz is preprocessed)",
        "provider": handle.provider,
        "session": handle.config,
        "batch_size": batch_size,
    }
    if arrays.labels is not None:
        correct, n = top1_counts(out, arrays.labels, what=f"{p} on {data}")
        result.update(metric=METRIC_TOP1, top1=correct / n, correct=correct)
        if return_predictions:
            result["predictions"] = np.argmax(out, axis=1)
    if reference is not None:
        ref_path = Path(reference)
        ref_handle = _eval_session(ref_path, provider, session)
        ref_feeds = check_data(input_specs(ref_handle), arrays.inputs, source=os.fspath(data))
        ref_out = run_model(ref_handle, ref_feeds, batch_size)
        fid = fidelity(ref_out, out)
        fid["reference"] = os.fspath(ref_path)
        fid["reference_sha256"] = sha256_file(ref_path)
        result["fidelity"] = fid
        result.setdefault("metric", fid["metric"])
    return result
