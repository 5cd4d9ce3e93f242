"""Top-1 accuracy of an `.onnx` file on MNIST, through an ONNX Runtime session (no torch).

The images are read from the idx files with numpy (`runtime_bench.mnist`) and normalised with
the mean and std stored in the model's own metadata, so preprocessing cannot drift from what
the model was trained with. The result is deterministic: a fixed batch size, one intra-op
thread and sequential execution, so the same file, data and runtime give exactly the same
top-1 (`onnxship verify` relies on that).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.core.artifact import sha256_file
from onnxship.core.mnist import load_split, normalize, resolve_data_root
from onnxship.core.model_meta import parse_meta
from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.inputs import ORT_TO_NUMPY, input_specs
from onnxship.runtime_bench.session import SessionConfig, create_session

DEFAULT_EVAL_BATCH = 1000


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
    data_npz: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """MNIST top-1 of an `.onnx` file: {top1, correct, n, split, model_sha256, mean, std, ...}.

    The normalisation comes from the model's metadata; `mean`/`std` override it (both or
    neither) for a model exported without onnxship metadata."""
    if (mean is None) != (std is None):
        raise BenchError("give both mean and std (or neither, to read them from the model)")
    p = Path(path)
    if data_npz is not None:
        return _evaluate_npz(p, data_npz, batch_size=batch_size, provider=provider)
    handle = create_session(
        p, provider, SessionConfig(intra_op_threads=1, inter_op_threads=1, record_assignment=False)
    )
    if mean is not None and std is not None:
        mean_used, std_used = tuple(mean), tuple(std)
        norm_source = "arguments"
    else:
        raw = dict(handle.session.get_modelmeta().custom_metadata_map)
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
    return {
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
        "batch_size": batch_size,
        "data_dir": os.fspath(root),
    }


def _evaluate_npz(
    path: Path, data_npz: str | os.PathLike[str], *, batch_size: int, provider: str
) -> dict[str, Any]:
    """Top-1 of `path` on a labelled npz (x preprocessed, y int64): no normalisation applied."""
    from onnxship.core.dataset import load_npz
    from onnxship.core.errors import CoreError

    handle = create_session(
        path,
        provider,
        SessionConfig(intra_op_threads=1, inter_op_threads=1, record_assignment=False),
    )
    try:
        data = load_npz(data_npz, require_labels=True)
    except CoreError as exc:
        raise BenchError(str(exc)) from exc
    assert data.labels is not None
    preds = predict_top1(handle, data.only_input(), batch_size)
    correct = int(np.sum(preds == data.labels))
    n = int(data.labels.shape[0])
    return {
        "model": os.fspath(path),
        "model_sha256": sha256_file(path),
        "split": "test",
        "top1": correct / n,
        "correct": correct,
        "n": n,
        "data": os.fspath(data_npz),
        "data_sha256": data.sha256,
        "provider": handle.provider,
        "batch_size": batch_size,
    }
