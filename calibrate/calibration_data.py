"""Calibration data: drawn from MNIST's validation part (never the test split), or a user's `.npz`.

A `CalibrationSet` holds the preprocessed inputs in memory and can be iterated any number of
times (batches of `{input_name: array}`); `ort_reader()` adapts it to ONNX Runtime's one-shot
`CalibrationDataReader` so that callers never have to `rewind()` anything. Preprocessing comes
from the model's metadata (`onnxship.input_mean` / `onnxship.input_std`) so that it cannot
drift from training. The set is saved as `.npz` (inputs + the training-split indices they came
from) and its sha256 goes into the stage record.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.quantize_config import CalibrationConfig  # noqa: F401
from onnxship.core.artifact import atomic_write_bytes, sha256_bytes, sha256_file
from onnxship.core.dataset import npz_bytes, read_npz_arrays
from onnxship.runtime_bench.inputs import InputSpec  # the one InputSpec (one fact, one place)

# Where MNIST calibration images come from (recorded in the stage record).
SOURCE_SPLIT = "train:validation"
# Keys of the saved .npz.
INDICES_KEY = "train_indices"  # int64 indices into the 60,000-image training split
LABELS_KEY = "labels"  # int64 labels of those images (for inspection only; not used to calibrate)
GENERIC_INPUT_KEY = "inputs"  # accepted in a user's .npz besides the model's input name
X_KEY, Y_KEY = "x", "y"  # CONTRACT.md's dataset .npz: inputs and labels


def input_specs_of(model_path: str | os.PathLike[str]) -> list[InputSpec]:
    """The model's graph inputs (name, shape, type), read with onnx, weights not loaded."""
    import onnx

    from onnxship.runtime_bench.inputs import ort_type_of

    path = Path(model_path)
    if not path.is_file():
        raise CalibrateError(f"model {path} does not exist; pass the path of an FP32 .onnx file")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError subclasses
        raise CalibrateError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); "
            "pass an FP32 .onnx file"
        ) from exc
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        ttype = inp.type.tensor_type
        dims: list[int | str | None] = []
        for d in ttype.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        type_name = onnx.TensorProto.DataType.Name(ttype.elem_type)
        specs.append(InputSpec(name=inp.name, shape=tuple(dims), ort_type=ort_type_of(type_name)))
    if not specs:
        raise CalibrateError(f"{path} has no graph inputs; there is nothing to calibrate")
    return specs


def input_spec_of(model_path: str | os.PathLike[str]) -> InputSpec:
    """The model's single graph input (CalibrateError when it has several)."""
    specs = input_specs_of(model_path)
    if len(specs) != 1:
        raise CalibrateError(
            f"{model_path} has {len(specs)} graph inputs ({', '.join(s.name for s in specs)}); "
            "MNIST calibration supports models with exactly one input; pass --calib-npz with "
            "one array per input"
        )
    return specs[0]


class CalibrationSet:
    """Preprocessed calibration inputs, iterable many times as `{input_name: batch}` feeds.

    `inputs` is one array (a single-input model, named `input_name`) or a mapping from input
    name to array (several inputs, the same number of samples each)."""

    def __init__(
        self,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        *,
        input_name: str | None = None,
        batch_size: int,
        source: str,
        train_indices: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        if isinstance(inputs, Mapping):
            self.feeds = dict(inputs)
        else:
            if input_name is None:
                raise CalibrateError("a single calibration array needs its input_name")
            self.feeds = {input_name: inputs}
        self.input_name = next(iter(self.feeds))
        self.batch_size = batch_size
        self.source = source
        self.train_indices = train_indices
        self.labels = labels

    @property
    def inputs(self) -> np.ndarray:
        """The first (for a single-input model: the only) input's array."""
        return self.feeds[self.input_name]

    @property
    def samples(self) -> int:
        return int(self.inputs.shape[0])

    def __len__(self) -> int:
        """Number of batches (the last one may be partial)."""
        return -(-self.samples // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.samples, self.batch_size):
            yield {k: v[start : start + self.batch_size] for k, v in self.feeds.items()}

    def head(self, max_samples: int) -> CalibrationSet:
        """The first `max_samples` samples (a whole number of batches, at least one batch)."""
        keep = max(self.batch_size, (max_samples // self.batch_size) * self.batch_size)
        if keep >= self.samples:
            return self
        return CalibrationSet(
            {k: v[:keep] for k, v in self.feeds.items()},
            batch_size=self.batch_size,
            source=self.source,
            train_indices=None if self.train_indices is None else self.train_indices[:keep],
            labels=None if self.labels is None else self.labels[:keep],
        )

    def rebatched(self, batch_size: int) -> CalibrationSet:
        """The same samples fed `batch_size` at a time (the last batch may be partial)."""
        if batch_size == self.batch_size:
            return self
        return CalibrationSet(
            self.feeds,
            batch_size=batch_size,
            source=self.source,
            train_indices=self.train_indices,
            labels=self.labels,
        )

    def sample_bytes(self) -> int:
        """Bytes of one sample over every input."""
        return int(sum(v[:1].nbytes for v in self.feeds.values()))

    def ort_reader(self) -> OrtCalibrationReader:
        """A fresh one-shot ONNX Runtime reader over this set (make a new one per use)."""
        return OrtCalibrationReader(self)

    def to_npz_bytes(self) -> bytes:
        """The set as .npz bytes (inputs under the model's input names, plus the training-split
        indices and labels when known), byte-identical for identical data (`core.dataset.npz_bytes`),
        so the sha256 identifies the data."""
        arrays: dict[str, np.ndarray] = dict(self.feeds)
        if self.train_indices is not None:
            arrays[INDICES_KEY] = np.asarray(self.train_indices, dtype=np.int64)
        if self.labels is not None:
            arrays[LABELS_KEY] = np.asarray(self.labels, dtype=np.int64)
        return npz_bytes(arrays)

    def sha256(self) -> str:
        return sha256_bytes(self.to_npz_bytes())

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the set as .npz atomically; return its sha256."""
        atomic_write_bytes(path, self.to_npz_bytes())
        return sha256_file(path)


class OrtCalibrationReader(CalibrationDataReader):
    """ORT's one-shot `CalibrationDataReader` over a `CalibrationSet`.

    Supports `__len__` and `set_range` (counted in batches) so that ORT's strided calibration
    (`CalibStridedMinMax`) can feed histogram calibrators a few batches at a time: that is how
    Entropy / Percentile calibration is kept within bounded memory.
    """

    def __init__(self, calib: CalibrationSet) -> None:
        self._batches = list(calib)
        self._start = 0
        self._end = len(self._batches)
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start + self._pos >= self._end:
            return None
        feed = self._batches[self._start + self._pos]
        self._pos += 1
        return feed

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start = start_index
        self._end = min(end_index, len(self._batches))
        self._pos = 0


def check_inputs(arr: np.ndarray, spec: InputSpec, *, source: str, batch_size: int) -> np.ndarray:
    """Validate calibration inputs against the model's input; return them C-contiguous."""
    expected = spec.describe()
    if arr.dtype != np.dtype(spec.dtype):
        raise CalibrateError(
            f"calibration data {source}: dtype {arr.dtype}, but the model expects {expected}; "
            f"convert the array to {spec.dtype} (preprocessed, not raw pixels)"
        )
    if not spec.takes_batch_of(arr.shape):
        raise CalibrateError(
            f"calibration data {source}: shape {tuple(arr.shape)}, but the model expects "
            f"{expected} (N samples along axis 0); reshape the array to match"
        )
    if arr.shape[0] == 0:
        raise CalibrateError(
            f"calibration data {source} is empty (0 samples); it needs at least one batch "
            f"({batch_size}) of {expected}"
        )
    if arr.shape[0] < batch_size:
        raise CalibrateError(
            f"calibration data {source} has {arr.shape[0]} samples, fewer than one batch "
            f"({batch_size}); provide more samples or lower the calibration batch size"
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        n_bad = int(bad.reshape(arr.shape[0], -1).any(axis=1).sum())
        raise CalibrateError(
            f"calibration data {source} contains NaN or Inf in {n_bad} of {arr.shape[0]} "
            "samples; remove or fix those samples"
        )
    return np.ascontiguousarray(arr)


@dataclass(frozen=True)
class Split:
    """Which rows calibrate and which measure the accuracy budget (the quantize record's
    `calibration.split`).

    disjoint: True when the two are disjoint by construction (drawn from one validation set,
      or MNIST's calibration images left out of its budget images); None when they come from
      two different sources the user named (not compared row by row).
    """

    calibration_rows: int
    budget_rows: int
    disjoint: bool | None
    rule: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def draw_rule(size: int, seed: int, source: str, labelled: bool = True) -> str:
    """The record's words for the seeded draw of `calibration_and_evaluation_from_npz`."""
    how = "class-balanced" if labelled else "uniform (no labels)"
    return (
        f"{size} rows drawn from {source} ({how}, seed {seed}) calibrate; the accuracy budget "
        "is measured on every other row"
    )


def check_split(rows: int, cfg: CalibrationConfig, source: str) -> None:
    """One validation set split in two: `cfg.size` rows calibrate and the accuracy budget is
    measured on the others, which must be at least as many (a budget on a handful of rows says
    nothing). Too few rows: CalibrateError naming the numbers and the fix."""
    need = 2 * cfg.size
    if rows >= need:
        return
    most = rows // 2
    fix = (
        f"lower the calibration size to at most {most} (--calib-size, [quantize.calibration] "
        f"size{f'; and the calibration batch to at most {most}' if most < cfg.batch_size else ''})"
        " or give more validation rows"
        if most >= 1
        else "give more validation rows"
    )
    raise CalibrateError(
        f"{source} has {rows} rows, too few to calibrate on {cfg.size} of them and measure the "
        f"accuracy budget on at least as many others (expected >= {need} rows, found {rows}); "
        f"{fix}"
    )


def same_data(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when two paths name the same file, or files with the same bytes (the same rows)."""
    pa, pb = Path(a), Path(b)
    if not (pa.is_file() and pb.is_file()):
        return False
    return os.path.samefile(pa, pb) or sha256_file(pa) == sha256_file(pb)


def _balanced_draw(labels: np.ndarray | None, size: int, seed: int, n: int = 0) -> np.ndarray:
    """Positions of `size` items, as class-balanced as the labels allow, in a seeded order
    (no labels: the first `size` of a seeded permutation of `n` rows)."""
    if labels is None:
        labels = np.zeros(n, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(labels.shape[0])
    classes = np.unique(labels)
    per_class = {int(c): order[labels[order] == c] for c in classes}
    chosen: list[int] = []
    depth = 0
    while len(chosen) < size:
        added = False
        for c in classes:
            pool = per_class[int(c)]
            if depth < pool.shape[0]:
                chosen.append(int(pool[depth]))
                added = True
                if len(chosen) == size:
                    break
        if not added:
            break
        depth += 1
    return np.asarray(chosen, dtype=np.int64)


def calibration_set_from_mnist(
    root: str | os.PathLike[str],
    spec: InputSpec,
    mean: Sequence[float],
    std: Sequence[float],
    cfg: CalibrationConfig,
) -> CalibrationSet:
    """Draw `cfg.size` class-balanced images from the validation part of the training split.

    Only `onnxship.core.mnist.load_split(root, "val")` is read; the test split is never opened.
    """
    from onnxship.core import mnist

    cfg.validate()
    val = mnist.load_split(root, "val")
    check_split(val.labels.shape[0], cfg, f"MNIST's validation split under {root}")
    picked = _balanced_draw(val.labels, cfg.size, cfg.seed)
    _, dims = mnist.check_idx_header(
        mnist.raw_dir(root) / mnist.TRAIN_LABELS, expect_magic=mnist.LABEL_MAGIC
    )
    _, val_idx = mnist.validation_split(dims[0])
    x = mnist.normalize(val.images[picked], mean, std)
    x = check_inputs(
        x, spec, source=f"drawn from MNIST ({SOURCE_SPLIT})", batch_size=cfg.batch_size
    )
    return CalibrationSet(
        x,
        input_name=spec.name,
        batch_size=cfg.batch_size,
        source=SOURCE_SPLIT,
        train_indices=val_idx[picked].astype(np.int64),
        labels=val.labels[picked],
    )


def _pick_inputs(
    arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], p: Path, what: str
) -> dict[str, np.ndarray]:
    """One array per model input: named after it; for a single input also 'x' (the
    contract's name), 'inputs', or the only array besides labels and indices."""
    keys = [k for k in arrays if k not in (Y_KEY, LABELS_KEY, INDICES_KEY)]
    picked: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name in arrays:
            picked[spec.name] = arrays[spec.name]
            continue
        if len(specs) == 1:
            key = next((k for k in (X_KEY, GENERIC_INPUT_KEY) if k in arrays), None)
            if key is None and len(keys) == 1:
                key = keys[0]
            if key is not None:
                picked[spec.name] = arrays[key]
                continue
            raise CalibrateError(
                f"{what} file {p} holds arrays {list(arrays)}; expected one named "
                f"{spec.name!r} (the model's input), {X_KEY!r} or {GENERIC_INPUT_KEY!r}; "
                "rename it"
            )
        raise CalibrateError(
            f"{what} file {p} holds arrays {list(arrays)}, but the model's {spec.describe()} "
            f"has none; a model with several inputs needs one array per input, named after it "
            f"({', '.join(repr(s.name) for s in specs)})"
        )
    return picked


def calibration_set_from_npz(
    path: str | os.PathLike[str],
    spec: InputSpec | Sequence[InputSpec],
    cfg: CalibrationConfig,
) -> CalibrationSet:
    """Load a user's .npz of preprocessed inputs (the whole file; see `_pick_inputs` for the
    array names). A model with several inputs takes one array per input, named after it."""
    p = Path(path)
    specs = [spec] if isinstance(spec, InputSpec) else list(spec)
    arrays = read_npz_arrays(
        p,
        what="calibration file",
        fix="pass an existing .npz",
        writer="numpy.savez",
        error=CalibrateError,
    )
    picked = _pick_inputs(arrays, specs, p, "calibration")
    if cfg.batch_size < 1:
        raise CalibrateError(f"calibration batch size must be >= 1, got {cfg.batch_size}")
    feeds = {
        s.name: check_inputs(picked[s.name], s, source=os.fspath(p), batch_size=cfg.batch_size)
        for s in specs
    }
    counts = {name: a.shape[0] for name, a in feeds.items()}
    if len(set(counts.values())) > 1:
        raise CalibrateError(
            f"calibration file {p}: the input arrays disagree on the number of samples "
            f"({counts}); every input needs one row per sample"
        )
    labels = arrays.get(LABELS_KEY, arrays.get(Y_KEY))
    return CalibrationSet(
        feeds,
        batch_size=cfg.batch_size,
        source=f"npz:{p.name}",
        train_indices=arrays.get(INDICES_KEY),
        labels=labels,
    )


# --------------------------------------------------------------------------------------------
# The evaluation set: what the accuracy budget is measured on


class BudgetMetric(enum.Enum):
    """What an INT8 candidate is scored on (higher is better for all three)."""

    TOP1 = "top1"  # labels: top-1, budget = FP32 top-1 minus max_drop
    AGREEMENT = "top1_agreement"  # no labels, class scores: agreement with FP32 >= 1 - max_drop
    SQNR = "sqnr_db"  # no labels, other outputs: output SQNR vs FP32 >= min_sqnr_db


EVAL_CALL_BYTES = 16 << 20


class EvaluationSet:
    """Samples an INT8 candidate is scored on against the FP32 model (never the test split).

    Built from MNIST's validation part minus the calibration images, or from a user's `.npz`
    (`--val-npz`). With labels the score is top-1; without, fidelity to the FP32 model, whose
    outputs `reference_score` records: top-1 agreement for class scores ([batch, classes]),
    output SQNR in dB otherwise (`BudgetMetric`). `drop_budget` expresses the budget as a
    largest allowed "FP32 score minus candidate score", so one comparison serves every metric.
    """

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray],
        labels: np.ndarray | None,
        *,
        source: str,
        sha256: str | None = None,
        batch_size: int = 500,
    ) -> None:
        self.inputs = dict(inputs)
        self.labels = labels
        self.source = source
        self.sha256 = sha256
        # at most EVAL_CALL_BYTES of input per session call: a 224x224 network's activations
        # for hundreds of images would need GBs; scores do not depend on the batching
        per_sample = max(sum(int(v[:1].nbytes) for v in self.inputs.values()), 1)
        self.batch_size = max(1, min(batch_size, EVAL_CALL_BYTES // per_sample))
        self.metric = BudgetMetric.TOP1 if labels is not None else None
        self.reference: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def _outputs(self, session: Any) -> np.ndarray:
        from onnxship.runtime_bench.accuracy import check_data, run_model
        from onnxship.runtime_bench.inputs import input_specs

        feeds = check_data(input_specs(session), self.inputs, source=self.source)
        return run_model(session, feeds, self.batch_size)

    def reference_score(self, session: Any, *, model: str = "the FP32 model") -> float:
        """Score the FP32 model; without labels its outputs become the reference."""
        from onnxship.runtime_bench.accuracy import SQNR_CAP_DB, is_classifier_output, top1_counts

        out = self._outputs(session)
        if self.labels is not None:
            correct, n = top1_counts(out, self.labels, what=f"{model} on {self.source}")
            return correct / n
        self.reference = out
        if is_classifier_output(out):
            self.metric = BudgetMetric.AGREEMENT
            return 1.0
        self.metric = BudgetMetric.SQNR
        return SQNR_CAP_DB

    def score(self, session: Any) -> float:
        from onnxship.runtime_bench.accuracy import fidelity, top1_counts

        out = self._outputs(session)
        if self.labels is not None:
            correct, n = top1_counts(out, self.labels, what=self.source)
            return correct / n
        if self.reference is None:
            raise CalibrateError("score the FP32 model (reference_score) before any candidate")
        return float(fidelity(self.reference, out)["value"])

    def score_screened(self, session: Any, floor: float) -> tuple[float, int]:
        """Cheap first: score in calls of `batch_size` samples and stop as soon as even a
        perfect rest could not reach `floor` (top-1 or agreement: the share of hits is then
        bounded above by (hits + remaining) / samples < floor). Returns (score, samples seen);
        when stopped early the score is that upper bound. SQNR has no such bound: scored whole.
        """
        from onnxship.runtime_bench.accuracy import check_data, run_model
        from onnxship.runtime_bench.inputs import input_specs

        if self.labels is None and self.metric is not BudgetMetric.AGREEMENT:
            return self.score(session), self.samples
        if self.labels is None and self.reference is None:
            raise CalibrateError("score the FP32 model (reference_score) before any candidate")
        feeds = check_data(input_specs(session), self.inputs, source=self.source)
        n, hits = self.samples, 0
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            out = run_model(session, {k: v[start:stop] for k, v in feeds.items()}, self.batch_size)
            if self.labels is not None:
                truth = self.labels[start:stop]
            else:
                assert self.reference is not None
                truth = self.reference[start:stop].argmax(axis=1)
            hits += int(np.sum(out.reshape(out.shape[0], -1).argmax(axis=1) == truth))
            bound = (hits + n - stop) / n
            if stop < n and bound < floor:
                return bound, stop
        if self.labels is not None:
            return self.score(session), n  # the one top-1 path (checks labels vs classes)
        return hits / n, n

    def drop_budget(self, max_drop: float, min_sqnr_db: float) -> float:
        """The largest allowed FP32-score-minus-candidate-score for this metric."""
        from onnxship.runtime_bench.accuracy import SQNR_CAP_DB

        if self.metric is BudgetMetric.SQNR:
            return SQNR_CAP_DB - min_sqnr_db
        return max_drop

    def describe(self, max_drop: float, min_sqnr_db: float) -> dict[str, Any]:
        """The record's `budget` block: which metric, on what data, and the threshold."""
        metric = self.metric or BudgetMetric.TOP1
        out: dict[str, Any] = {
            "metric": metric.value,
            "data": self.source,
            "data_sha256": self.sha256,
            "samples": self.samples,
            "labels": self.labels is not None,
        }
        if metric is BudgetMetric.SQNR:
            out["min_sqnr_db"] = min_sqnr_db
        else:
            out["max_drop"] = max_drop
            out["reference"] = "labels" if metric is BudgetMetric.TOP1 else "fp32 outputs"
            out.update(self._resolution(max_drop))
        return out

    def _resolution(self, max_drop: float) -> dict[str, Any]:
        """What one sample weighs in a top-1 or agreement score, and a note when the budget is
        finer than that: then a single changed prediction breaks it."""
        if not self.samples:
            return {}
        one = 1.0 / self.samples
        out: dict[str, Any] = {"one_sample": one}
        if max_drop < one:
            out["resolution_note"] = (
                f"max_drop {max_drop * 100:.2f} pp is below one of the {self.samples} samples "
                f"({one * 100:.2f} pp): any changed prediction breaks the budget; more "
                "validation rows measure it finer"
            )
        return out


def evaluation_set_from_mnist(
    root: str | os.PathLike[str],
    calib: CalibrationSet,
    spec: InputSpec,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 500,
) -> EvaluationSet:
    """MNIST's validation images not used for calibration (the test split is never opened)."""
    from onnxship.core import mnist

    val = mnist.load_split(root, "val")
    _, dims = mnist.check_idx_header(
        mnist.raw_dir(root) / mnist.TRAIN_LABELS, expect_magic=mnist.LABEL_MAGIC
    )
    _, val_idx = mnist.validation_split(dims[0])
    keep = np.ones(val_idx.shape[0], dtype=bool)
    if calib.train_indices is not None:
        keep &= ~np.isin(val_idx, calib.train_indices)
    x = mnist.normalize(val.images[keep], mean, std)
    if not spec.takes_batch_of(x.shape):
        raise CalibrateError(
            f"the model's {spec.describe()} does not take MNIST images {tuple(x.shape[1:])}; "
            "measure the accuracy budget on your own data with --val-npz VAL.npz (and "
            "calibrate with --calib-npz CALIB.npz)"
        )
    held_out = int((~keep).sum())
    return EvaluationSet(
        {spec.name: x},
        val.labels[keep],
        source=f"{SOURCE_SPLIT} minus the {held_out} calibration images",
        batch_size=batch_size,
    )


def evaluation_set_from_npz(
    path: str | os.PathLike[str], specs: Sequence[InputSpec], *, batch_size: int = 500
) -> EvaluationSet:
    """A user's validation `.npz` (CONTRACT.md layout; `y` optional: fidelity without it)."""
    from onnxship.core.dataset import load_npz
    from onnxship.core.errors import CoreError
    from onnxship.runtime_bench.accuracy import non_float_dtypes

    try:
        data = load_npz(
            path, input_names=[s.name for s in specs], input_dtypes=non_float_dtypes(specs)
        )
    except CoreError as exc:
        raise CalibrateError(str(exc)) from exc
    return EvaluationSet(
        data.inputs,
        data.labels,
        source=f"npz:{Path(path).name}",
        sha256=data.sha256,
        batch_size=batch_size,
    )


def calibration_and_evaluation_from_npz(
    path: str | os.PathLike[str],
    specs: Sequence[InputSpec],
    cfg: CalibrationConfig,
    *,
    batch_size: int = 500,
) -> tuple[CalibrationSet, EvaluationSet]:
    """One validation `.npz` split in two, disjoint by construction: `cfg.size` rows drawn by
    `cfg.seed` (class-balanced with labels, as `calibration_set_from_mnist` draws from MNIST
    validation; a seeded uniform draw without them) calibrate; the budget is measured on every
    other row, at least as many (`check_split`). The file's `train_indices` (when present)
    become the calibration set's indices, so an npz of MNIST validation gives the same
    calibration set, byte for byte, as MNIST itself; otherwise the indices are the drawn rows'
    positions in the file."""
    cfg.validate()
    p = Path(path)
    full = evaluation_set_from_npz(p, specs, batch_size=batch_size)
    n = full.samples
    check_split(n, cfg, f"validation file {p}")
    picked = _balanced_draw(full.labels, cfg.size, cfg.seed, n)
    indices = read_npz_arrays(p, what="validation file", fix="pass an existing .npz").get(
        INDICES_KEY
    )
    feeds = {
        s.name: check_inputs(
            full.inputs[s.name][picked], s, source=os.fspath(p), batch_size=cfg.batch_size
        )
        for s in specs
    }
    calib = CalibrationSet(
        feeds,
        batch_size=cfg.batch_size,
        source=f"npz:{p.name}",
        train_indices=picked if indices is None else np.asarray(indices)[picked],
        labels=None if full.labels is None else full.labels[picked],
    )
    keep = np.ones(n, dtype=bool)
    keep[picked] = False
    evalset = EvaluationSet(
        {k: v[keep] for k, v in full.inputs.items()},
        None if full.labels is None else full.labels[keep],
        source=f"npz:{p.name} minus the {cfg.size} calibration rows",
        sha256=full.sha256,
        batch_size=batch_size,
    )
    return calib, evalset
