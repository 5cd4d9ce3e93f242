"""What a model's data is, in one place, torch-free: `DatasetInfo` and the npz reader.

`DatasetInfo` is the dataset abstraction every stage shares: kind, name, per-sample input shape
and dtype, normalisation (None when the data comes preprocessed, as npz files do), class names.
It is recorded in checkpoints (sidecar JSON), in ONNX metadata (`onnxship.dataset`) and in the
manifest's `dataset` block, so later stages know it without flags.

An npz dataset file follows ../shared/CONTRACT.md: `x` (the model's input, already
preprocessed, float32, `[N, ...]`) and `y` (int64 class labels, `[N]`, optional). A model with
several inputs uses one array per input, named after the input; `y` stays `y`. `load_npz`
checks everything a later stage would trip over and says what was expected, what was found and
the fix, in one line.
"""

from __future__ import annotations

import enum
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.core.artifact import sha256_file
from onnxship.core.errors import CoreError

X_KEY = "x"
Y_KEY = "y"
METADATA_KEY = "onnxship.dataset"  # JSON of DatasetInfo.to_json() in an .onnx file


class DatasetKind(enum.Enum):
    MNIST = "mnist"
    NPZ = "npz"
    IMAGEFOLDER = "imagefolder"


@dataclass(frozen=True)
class DatasetInfo:
    """The data a model was trained on and is measured with (no arrays, just the facts)."""

    kind: DatasetKind
    name: str
    input_shape: tuple[int, ...]  # one sample, without the batch axis, e.g. (1, 28, 28)
    dtype: str = "float32"
    mean: tuple[float, ...] | None = (
        None  # per channel, on pixels scaled to [0, 1]; None = preprocessed
    )
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] = ()
    test_sha256: str | None = None  # of the test data the accuracies are measured on
    test_path: str | None = None  # npz: the test file (relative to the bundle when inside it)

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) or None

    def to_json(self) -> dict[str, Any]:
        """The manifest's `dataset` block (CONTRACT.md) and the ONNX metadata value."""
        return {
            "kind": self.kind.value,
            "name": self.name,
            "input_shape": list(self.input_shape),
            "dtype": self.dtype,
            "normalisation": None
            if self.mean is None
            else {"mean": list(self.mean), "std": list(self.std or ())},
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "test_sha256": self.test_sha256,
            "test_path": self.test_path,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, source: str = "dataset block") -> DatasetInfo:
        try:
            norm = data.get("normalisation")
            return cls(
                kind=DatasetKind(data["kind"]),
                name=str(data["name"]),
                input_shape=tuple(int(d) for d in data["input_shape"]),
                dtype=str(data.get("dtype", "float32")),
                mean=None if not norm else tuple(float(v) for v in norm["mean"]),
                std=None if not norm else tuple(float(v) for v in norm["std"]),
                class_names=tuple(str(c) for c in data.get("class_names", ())),
                test_sha256=data.get("test_sha256"),
                test_path=data.get("test_path"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CoreError(
                f"{source}: unreadable dataset description ({type(exc).__name__}: {exc}); "
                "expected the keys kind, name, input_shape, dtype, normalisation, class_names"
            ) from exc

    def to_metadata(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def dataset_of_metadata(raw: Mapping[str, str], *, source: str) -> DatasetInfo | None:
    """The `onnxship.dataset` entry of a model's metadata map, or None when absent."""
    if METADATA_KEY not in raw:
        return None
    try:
        data = json.loads(raw[METADATA_KEY])
    except ValueError as exc:
        raise CoreError(
            f"{source}: unreadable {METADATA_KEY} metadata ({exc}); re-export it"
        ) from exc
    return DatasetInfo.from_json(data, source=f"{source} ({METADATA_KEY})")


def require_mnist_data(raw: Mapping[str, str], *, source: str, flag: str) -> None:
    """MNIST is the default data source; a model whose metadata says it was trained on other
    data needs that data passed (`flag`, e.g. "--data TEST.npz") instead."""
    info = dataset_of_metadata(raw, source=source)
    if info is not None and info.kind is not DatasetKind.MNIST:
        raise CoreError(
            f"{source} was trained on {info.kind.value} data '{info.name}' (input "
            f"{list(info.input_shape)}), not MNIST; pass that data preprocessed with {flag}"
        )


def mnist_info(test_sha256: str | None = None) -> DatasetInfo:
    from onnxship.core import mnist

    return DatasetInfo(
        kind=DatasetKind.MNIST,
        name="mnist",
        input_shape=(1, 28, 28),
        mean=mnist.MNIST_MEAN,
        std=mnist.MNIST_STD,
        class_names=mnist.MNIST_CLASSES,
        test_sha256=test_sha256,
    )


@dataclass(frozen=True)
class ArrayData:
    """Model inputs (name -> `[N, ...]` array) and optional int64 labels, read from one file."""

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None
    path: Path | None = None
    sha256: str | None = None
    names_from_file: tuple[str, ...] = field(default=())

    @property
    def n(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def only_input(self) -> np.ndarray:
        if len(self.inputs) != 1:
            raise CoreError(
                f"{self.path}: expected one input array, found {len(self.inputs)} "
                f"({', '.join(self.inputs)}); this step supports single-input models"
            )
        return next(iter(self.inputs.values()))


def load_npz(
    path: str | os.PathLike[str],
    *,
    input_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    require_labels: bool = False,
    input_dtypes: Mapping[str, Any] | None = None,
) -> ArrayData:
    """Read and check a dataset `.npz` (see the module docstring for the layout).

    input_names: the model's input names. One input: the array `x` (or an array named after the
    input). Several inputs: one array per input name. None: `x` alone.
    num_classes: labels must lie in [0, num_classes).
    input_dtypes: the model's input dtypes by name (default: float32 for every input, as the
    contract says); a model with integer inputs (token ids) takes arrays of that dtype.
    """
    p = Path(path)
    arrays = read_npz_arrays(p)
    inputs = _input_arrays(p, arrays, input_names)
    count = _check_inputs(p, inputs, input_dtypes)
    labels = _checked_labels(p, arrays.get(Y_KEY), count, num_classes, require_labels)
    return ArrayData(
        inputs=inputs,
        labels=labels,
        path=p,
        sha256=sha256_file(p),
        names_from_file=tuple(arrays),
    )


def read_npz_arrays(
    path: str | os.PathLike[str],
    *,
    what: str = "data file",
    fix: str = "pass an .npz with 'x' (float32 inputs) and 'y' (int64 labels)",
    writer: str = "numpy.savez(path, x=inputs.astype('float32'), y=labels.astype('int64'))",
    error: type[Exception] = CoreError,
) -> dict[str, np.ndarray]:
    """Every array of the .npz at `path` (no pickles): the one reader of .npz files. A missing
    or unreadable file raises `error` naming `what` it was for, with `fix` (missing) or how to
    write one (`writer`)."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {p} does not exist; {fix}")
    try:
        with np.load(p, allow_pickle=False) as npz:
            return {key: np.asarray(npz[key]) for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise error(
            f"{what} {p} is not a readable .npz ({type(exc).__name__}: {exc}); write it with "
            f"{writer}"
        ) from exc


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """`arrays` as .npz bytes, byte-identical for identical data (entries carry a fixed
    timestamp whatever the numpy version), so a file's sha256 identifies its data."""
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(value), allow_pickle=False)
    return buffer.getvalue()


def _input_arrays(
    p: Path, arrays: Mapping[str, np.ndarray], input_names: Sequence[str] | None
) -> dict[str, np.ndarray]:
    """The array for each model input: by its name, or `x` for a single input."""
    names = list(input_names) if input_names else [X_KEY]
    inputs: dict[str, np.ndarray] = {}
    for name in names:
        if name in arrays:
            inputs[name] = arrays[name]
        elif len(names) == 1 and X_KEY in arrays:
            inputs[name] = arrays[X_KEY]
        else:
            wanted = f"'{X_KEY}'" if len(names) == 1 else "one array per model input"
            raise CoreError(
                f"{p} has no array for input '{name}': expected {wanted} "
                f"({', '.join(repr(n) for n in names)}), found arrays "
                f"{', '.join(repr(k) for k in arrays) or 'none'}; save the inputs as "
                f"numpy.savez(path, {X_KEY}=..., {Y_KEY}=...)"
            )
    return inputs


def _check_inputs(
    p: Path, inputs: Mapping[str, np.ndarray], input_dtypes: Mapping[str, Any] | None
) -> int | None:
    """Dtype, shape, finiteness and a common N of the input arrays; returns N."""
    count = None
    for name, x in inputs.items():
        want = np.dtype((input_dtypes or {}).get(name, np.float32))
        if x.dtype != want:
            raise CoreError(
                f"{p}: input array '{name}' has dtype {x.dtype}, the model input expects "
                f"{want} (already preprocessed); convert it with x.astype('{want}')"
            )
        if x.ndim < 1 or x.shape[0] == 0:
            raise CoreError(
                f"{p}: input array '{name}' has shape {x.shape}, expected [N, ...] with N >= 1"
            )
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise CoreError(
                f"{p}: input array '{name}' holds {bad} NaN or Inf value(s); expected finite "
                "numbers; fix the preprocessing that produced them"
            )
        if count is not None and x.shape[0] != count:
            raise CoreError(
                f"{p}: input arrays disagree on N ({count} vs {x.shape[0]} in '{name}'); every "
                "input array must have one row per sample"
            )
        count = int(x.shape[0])
    return count


def _checked_labels(
    p: Path,
    labels: np.ndarray | None,
    count: int | None,
    num_classes: int | None,
    require_labels: bool,
) -> np.ndarray | None:
    """The labels as int64 [N] within [0, num_classes), or None when the file has none."""
    if labels is None and require_labels:
        raise CoreError(
            f"{p} has no '{Y_KEY}' array: labels (int64, [N]) are needed here; add them, or "
            "measure fidelity to the FP32 model instead"
        )
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise CoreError(
                f"{p}: '{Y_KEY}' has dtype {labels.dtype} and shape {labels.shape}, expected "
                "int64 class labels of shape [N]; convert with y.astype('int64')"
            )
        if labels.shape[0] != count:
            raise CoreError(
                f"{p}: {count} samples in the inputs but {labels.shape[0]} labels in "
                f"'{Y_KEY}'; expected one label per sample"
            )
        labels = labels.astype(np.int64)
        if (
            num_classes is not None
            and labels.size
            and (labels.min() < 0 or labels.max() >= num_classes)
        ):
            raise CoreError(
                f"{p}: labels range over [{labels.min()}, {labels.max()}], but the model has "
                f"{num_classes} classes (expected labels in [0, {num_classes - 1}]); check the "
                "label encoding or the model"
            )
    return labels
