"""Calibration data: drawn from MNIST's validation part (never the test split), or a user's `.npz`.

A `CalibrationSet` holds the preprocessed inputs in memory and can be iterated any number of
times (batches of `{input_name: array}`); `ort_reader()` adapts it to ONNX Runtime's one-shot
`CalibrationDataReader` so that callers never have to `rewind()` anything. Preprocessing comes
from the model's metadata (`onnxship.input_mean` / `onnxship.input_std`) so that it cannot
drift from training. The set is saved as `.npz` (inputs + the training-split indices they came
from) and its sha256 goes into the stage record.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from onnxship.calibrate.errors import CalibrateError
from onnxship.core.artifact import atomic_write_bytes, sha256_bytes, sha256_file

# Where MNIST calibration images come from (recorded in the stage record).
SOURCE_SPLIT = "train:validation"
# Keys of the saved .npz.
INDICES_KEY = "train_indices"  # int64 indices into the 60,000-image training split
LABELS_KEY = "labels"  # int64 labels of those images (for inspection only; not used to calibrate)
GENERIC_INPUT_KEY = "inputs"  # accepted in a user's .npz besides the model's input name


@dataclass(frozen=True)
class InputSpec:
    """The model's one input: name, shape (ints, or strings / None for symbolic dims), dtype."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str

    def describe(self) -> str:
        dims = ", ".join("N" if not isinstance(d, int) else str(d) for d in self.shape)
        return f"input {self.name!r} {self.dtype} [{dims}]"

    def sample_shape(self) -> tuple[int | None, ...]:
        """Shape of one sample (without the batch axis); None where the dim is symbolic."""
        return tuple(d if isinstance(d, int) and d > 0 else None for d in self.shape[1:])


def input_spec_of(model_path: str | os.PathLike[str]) -> InputSpec:
    """Read the model's single graph input (name, shape, dtype) with onnx, weights not loaded."""
    import onnx
    from onnx import helper

    path = Path(model_path)
    if not path.is_file():
        raise CalibrateError(f"model {path} does not exist; pass the path of an FP32 .onnx file")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError subclasses
        raise CalibrateError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); "
            "pass the FP32 .onnx written by `onnxship export`"
        ) from exc
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise CalibrateError(
            f"{path} has {len(inputs)} graph inputs ({', '.join(i.name for i in inputs)}); "
            "calibration supports models with exactly one input"
        )
    inp = inputs[0]
    ttype = inp.type.tensor_type
    dims: list[int | str | None] = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    dtype = str(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
    return InputSpec(name=inp.name, shape=tuple(dims), dtype=dtype)


@dataclass(frozen=True)
class CalibrationConfig:
    """How the calibration set is drawn and fed.

    size: images drawn from the validation part of MNIST's training split (ignored for a
      user's .npz, which is used whole).
    batch_size: images per calibration run; a set smaller than one batch is an error.
    seed: the draw is class-balanced and seeded, so a config always gives the same images.
    """

    size: int = 256
    batch_size: int = 32
    seed: int = 0

    def validate(self) -> None:
        if self.size < 1:
            raise CalibrateError(f"calibration size must be >= 1 image, got {self.size}")
        if self.batch_size < 1:
            raise CalibrateError(f"calibration batch size must be >= 1, got {self.batch_size}")
        if self.size < self.batch_size:
            raise CalibrateError(
                f"calibration size {self.size} is smaller than one batch ({self.batch_size}); "
                "raise --calib-size or lower the calibration batch size"
            )


class CalibrationSet:
    """Preprocessed calibration inputs, iterable many times as `{input_name: batch}` feeds."""

    def __init__(
        self,
        inputs: np.ndarray,
        *,
        input_name: str,
        batch_size: int,
        source: str,
        train_indices: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        self.inputs = inputs
        self.input_name = input_name
        self.batch_size = batch_size
        self.source = source
        self.train_indices = train_indices
        self.labels = labels

    @property
    def samples(self) -> int:
        return int(self.inputs.shape[0])

    def __len__(self) -> int:
        """Number of batches (the last one may be partial)."""
        return -(-self.samples // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.samples, self.batch_size):
            yield {self.input_name: self.inputs[start : start + self.batch_size]}

    def head(self, max_samples: int) -> CalibrationSet:
        """The first `max_samples` samples (a whole number of batches, at least one batch)."""
        keep = max(self.batch_size, (max_samples // self.batch_size) * self.batch_size)
        if keep >= self.samples:
            return self
        return CalibrationSet(
            self.inputs[:keep],
            input_name=self.input_name,
            batch_size=self.batch_size,
            source=self.source,
            train_indices=None if self.train_indices is None else self.train_indices[:keep],
            labels=None if self.labels is None else self.labels[:keep],
        )

    def ort_reader(self) -> OrtCalibrationReader:
        """A fresh one-shot ONNX Runtime reader over this set (make a new one per use)."""
        return OrtCalibrationReader(self)

    def to_npz_bytes(self) -> bytes:
        """The set as .npz bytes (inputs under the model's input name, plus the training-split
        indices and labels when known). Byte-identical for identical data: entries carry a
        fixed timestamp, unlike `numpy.savez`, so the sha256 identifies the data."""
        arrays: dict[str, np.ndarray] = {self.input_name: self.inputs}
        if self.train_indices is not None:
            arrays[INDICES_KEY] = np.asarray(self.train_indices, dtype=np.int64)
        if self.labels is not None:
            arrays[LABELS_KEY] = np.asarray(self.labels, dtype=np.int64)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for key, value in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(info, "w", force_zip64=True) as handle:
                    np.lib.format.write_array(
                        handle, np.ascontiguousarray(value), allow_pickle=False
                    )
        return buffer.getvalue()

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
    want = spec.sample_shape()
    if arr.ndim != len(spec.shape) or any(
        w is not None and w != got for w, got in zip(want, arr.shape[1:], strict=False)
    ):
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


def _balanced_draw(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Positions of `size` items, as class-balanced as the labels allow, in a seeded order."""
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

    Only `runtime_bench.mnist.load_split(root, "val")` is read; the test split is never opened.
    """
    from onnxship.core import mnist

    cfg.validate()
    val = mnist.load_split(root, "val")
    if cfg.size > val.labels.shape[0]:
        raise CalibrateError(
            f"calibration size {cfg.size} exceeds the {val.labels.shape[0]} images of the "
            "validation split; lower --calib-size"
        )
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


def calibration_set_from_npz(
    path: str | os.PathLike[str], spec: InputSpec, cfg: CalibrationConfig
) -> CalibrationSet:
    """Load a user's .npz of preprocessed inputs: the array under the model's input name, or
    under 'inputs', or the only array in the file."""
    p = Path(path)
    if not p.is_file():
        raise CalibrateError(f"calibration file {p} does not exist; pass an existing .npz")
    try:
        with np.load(p, allow_pickle=False) as data:
            keys = list(data.keys())
            if spec.name in keys:
                key = spec.name
            elif "x" in keys:  # the contract's dataset npz (x, y)
                key = "x"
            elif GENERIC_INPUT_KEY in keys:
                key = GENERIC_INPUT_KEY
            elif len(keys) == 1:
                key = keys[0]
            else:
                raise CalibrateError(
                    f"calibration file {p} holds arrays {keys}; expected one named "
                    f"{spec.name!r} (the model's input) or {GENERIC_INPUT_KEY!r}; rename it"
                )
            arr = np.asarray(data[key])
            indices = np.asarray(data[INDICES_KEY]) if INDICES_KEY in keys else None
            labels = np.asarray(data[LABELS_KEY]) if LABELS_KEY in keys else None
    except CalibrateError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled objects), OSError
        raise CalibrateError(
            f"calibration file {p} is not a readable .npz ({type(exc).__name__}: {exc}); "
            "write it with numpy.savez"
        ) from exc
    if cfg.batch_size < 1:
        raise CalibrateError(f"calibration batch size must be >= 1, got {cfg.batch_size}")
    arr = check_inputs(arr, spec, source=os.fspath(p), batch_size=cfg.batch_size)
    return CalibrationSet(
        arr,
        input_name=spec.name,
        batch_size=cfg.batch_size,
        source=f"npz:{p.name}",
        train_indices=indices,
        labels=labels,
    )
