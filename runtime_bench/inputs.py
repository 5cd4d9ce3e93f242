"""Model input specs (the one `InputSpec` of onnxship) and the feeds built from them:
fixed-seed random data, or real data from `.npz`.

The batch dimension is the first dimension of an input when it is symbolic (a `dim_param` such
as "batch", or unnamed); it takes the requested batch size. Any other symbolic dimension needs
an explicit value (`dim_values={"seq": 128}`, CLI `--dim seq=128`) - guessing one would
benchmark a shape nobody deploys. Random data is never all zeros: kernels can take shortcuts on
zeros (sparse paths, denormals) that real inputs do not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxship.core.dataset import read_npz_arrays
from onnxship.runtime_bench.errors import BenchError

# ORT type strings -> numpy dtypes (tensor types only).
ORT_TO_NUMPY: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}

Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape as ORT reports it (ints, dim_param names or None), type."""

    name: str
    shape: tuple[Dim, ...]
    ort_type: str

    @property
    def dtype(self) -> np.dtype:
        if self.ort_type not in ORT_TO_NUMPY:
            raise BenchError(
                f"input '{self.name}' has type {self.ort_type}, which onnxship cannot generate "
                f"data for (supported: {', '.join(sorted(ORT_TO_NUMPY))}); pass real data "
                "with --npz or benchmark a model with tensor inputs"
            )
        return np.dtype(ORT_TO_NUMPY[self.ort_type])

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.ort_type}

    def describe(self) -> str:
        """e.g. "input 'input' float32 [N, 1, 28, 28]" (for error messages; N = the batch)."""
        dims = ", ".join(
            str(d) if isinstance(d, int) else "N" if axis == 0 else (d or "?")
            for axis, d in enumerate(self.shape)
        )
        kind = self.ort_type.removeprefix("tensor(").removesuffix(")")
        return f"input {self.name!r} {'float32' if kind == 'float' else kind} [{dims}]"

    def sample_shape(self) -> tuple[int | None, ...]:
        """Shape of one sample (without the batch axis); None where the dim is symbolic."""
        return tuple(d if isinstance(d, int) else None for d in self.shape[1:])

    def takes_batch_of(self, shape: tuple[int, ...]) -> bool:
        """Whether an array of `shape` (samples along axis 0) fits this input: same rank, and
        every fixed dimension after the batch axis equal."""
        want = self.sample_shape()
        return len(shape) == len(self.shape) and all(
            w is None or w == got for w, got in zip(want, shape[1:], strict=True)
        )


def ort_type_of(elem_type_name: str) -> str:
    """ONNX `TensorProto.DataType` name (e.g. "FLOAT") -> ORT type string ("tensor(float)")."""
    return f"tensor({elem_type_name.lower()})"


def _session_of(session: Any) -> Any:
    """Accept an ort.InferenceSession or a SessionHandle."""
    return getattr(session, "session", session)


def input_specs(session: Any) -> list[InputSpec]:
    sess = _session_of(session)
    return [
        InputSpec(name=i.name, shape=tuple(_dim(d) for d in (i.shape or [])), ort_type=i.type)
        for i in sess.get_inputs()
    ]


def _dim(d: Any) -> Dim:
    if isinstance(d, int) and d >= 0:
        return d
    if isinstance(d, str) and d:
        return d
    return None  # unnamed symbolic dim (ORT reports None or -1)


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise BenchError(f"batch size must be an integer >= 1, got {batch_size!r}")
    if batch_size < 1:
        raise BenchError(f"batch size must be >= 1, got {batch_size}; use e.g. --batch-sizes 1,64")


def resolve_shape(
    spec: InputSpec, batch_size: int, dim_values: Mapping[str, int] | None = None
) -> tuple[int, ...]:
    """Concrete shape of `spec` at `batch_size`; BenchError for an unresolvable dimension."""
    check_batch_size(batch_size)
    values = dict(dim_values or {})
    shape: list[int] = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            if axis == 0 and dim != batch_size:
                raise BenchError(
                    f"input '{spec.name}' has a fixed batch dimension {dim} "
                    f"(shape {_show(spec.shape)}), so batch size {batch_size} cannot be fed; "
                    f"use --batch-sizes {dim}, or re-export the model with a dynamic batch axis"
                )
            shape.append(dim)
        elif isinstance(dim, str) and dim in values:
            shape.append(int(values[dim]))
        elif axis == 0:
            shape.append(batch_size)
        else:
            label = f"'{dim}'" if dim else "an unnamed symbolic dimension"
            hint = f"--dim {dim}=N" if dim else "a fixed size at export"
            raise BenchError(
                f"input '{spec.name}' has shape {_show(spec.shape)}: axis {axis} is {label}, "
                f"a dynamic dimension other than the batch, and no value was given for it; "
                f"pass {hint}"
            )
    return tuple(shape)


def _show(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def random_array(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Random data of `dtype` that is never all zeros (and, for numbers, has no zeros)."""
    if dtype == np.bool_:
        out = rng.integers(0, 2, size=shape).astype(np.bool_)
        if out.size:
            out.flat[0] = True
        return out
    if np.issubdtype(dtype, np.floating):
        data = rng.standard_normal(size=shape, dtype=np.float32)
        data[data == 0] = 1.0
        return data.astype(dtype)
    info = np.iinfo(dtype)
    low = 1
    high = min(int(info.max), 100) + 1
    return rng.integers(low, high, size=shape).astype(dtype)


def random_feeds(
    session: Any,
    batch_size: int,
    *,
    seed: int = 0,
    dim_values: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """One random array per input at `batch_size`; the same seed gives the same arrays."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in input_specs(session):
        shape = resolve_shape(spec, batch_size, dim_values)
        feeds[spec.name] = random_array(shape, spec.dtype, rng)
    return feeds


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The named arrays of an input .npz (`bench --npz`), through the one .npz reader."""
    return read_npz_arrays(
        path,
        what="input data file",
        fix="pass an .npz of named arrays",
        writer="numpy.savez(path, input_name=array)",
        error=BenchError,
    )


def npz_feeds(
    session: Any,
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    source: str = "the .npz",
    dim_values: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Feeds at `batch_size` from real data: the first `batch_size` rows of each named array
    (rows repeated cyclically when the file has fewer). A model with one input accepts a
    dataset file ('x', labels 'y' ignored) or a file with one array of any name."""
    specs = input_specs(session)
    if len(specs) == 1 and specs[0].name not in arrays:
        # CONTRACT.md's dataset layout: 'x' (labels 'y' ignored), or the file's only array.
        data_arrays = {k: v for k, v in arrays.items() if k != "y"}
        if "x" in data_arrays:
            arrays = {specs[0].name: data_arrays["x"]}
        elif len(data_arrays) == 1:
            arrays = {specs[0].name: next(iter(data_arrays.values()))}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise BenchError(
            f"{source} has arrays {sorted(arrays)}, but the model's inputs "
            f"{[s.name for s in specs]} need {missing}; name the arrays after the inputs"
        )
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        data = arrays[spec.name]
        shape = resolve_shape(spec, batch_size, _npz_dims(spec, data, dim_values))
        if data.ndim != len(shape) or data.shape[1:] != shape[1:]:
            raise BenchError(
                f"{source}: array '{spec.name}' has shape {list(data.shape)}, the input needs "
                f"[N, {', '.join(map(str, shape[1:]))}] (model shape {_show(spec.shape)})"
            )
        if data.shape[0] < 1:
            raise BenchError(f"{source}: array '{spec.name}' has no rows")
        if not np.can_cast(data.dtype, spec.dtype, casting="same_kind"):
            raise BenchError(
                f"{source}: array '{spec.name}' has dtype {data.dtype}, the input needs "
                f"{spec.dtype}; convert it before saving"
            )
        rows = np.arange(batch_size) % data.shape[0]
        feeds[spec.name] = np.ascontiguousarray(data[rows].astype(spec.dtype, copy=False))
    return feeds


def _npz_dims(
    spec: InputSpec, data: np.ndarray, dim_values: Mapping[str, int] | None
) -> dict[str, int]:
    """Non-batch symbolic dims take their size from the real data unless given explicitly."""
    values = dict(dim_values or {})
    for axis, dim in enumerate(spec.shape):
        if axis > 0 and isinstance(dim, str) and dim not in values and axis < data.ndim:
            values[dim] = int(data.shape[axis])
    if any(d is None for d in spec.shape[1:]):
        raise BenchError(
            f"input '{spec.name}' has an unnamed dynamic dimension {_show(spec.shape)} beyond "
            "the batch; give it a fixed size at export"
        )
    return values


def make_feeds(
    session: Any,
    batch_size: int,
    *,
    npz: Mapping[str, np.ndarray] | None = None,
    npz_source: str = "the .npz",
    seed: int = 0,
    dim_values: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Feeds for one run at `batch_size`: real data when `npz` is given, else random."""
    check_batch_size(batch_size)
    if npz is not None:
        return npz_feeds(session, npz, batch_size, source=npz_source, dim_values=dim_values)
    return random_feeds(session, batch_size, seed=seed, dim_values=dim_values)
