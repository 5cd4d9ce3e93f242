"""Static INT8 through `onnxruntime.quantization`: one recipe -> one quantized file.

`quantize_with_recipe` is a thin, typed wrapper over `quantize_static`: the model is first run
through `quant_pre_process` (shape inference + ORT's basic graph optimisation) once per source
model, scratch files live in a `tempfile.TemporaryDirectory` (never the working directory).

Calibrate once per method: activation ranges do not depend on the quantization format
(QDQ / QOperator), the integer types, per-channel vs per-tensor weights or reduce_range (those
act on weights and on how a range becomes a scale), only on the calibration method and on
which tensors are observed. `calibrate_ranges` runs ORT's calibrator once per method for the
widest scope the search needs (every quantizable op when any recipe with that method quantizes
all ops, else only Gemm/MatMul) and saves ORT's calibration cache (`TensorsData` as JSON);
`quantize_with_recipe` then calls `quantize_static` with that cache and no data reader, so a
grid of recipes costs at most one calibration pass per method (`CalibrationPass` says which
ran, on how many samples, in how long).

Bounded memory: ORT's MinMax calibrator keeps only per-batch ReduceMin/ReduceMax scalars, so it
sees the whole set; its session runs one calibration batch at a time. (Its
`CalibMaxIntermediateOutputs` option is *not* used: in onnxruntime 1.32
`MinMaxCalibrater.collect_data` clears the collected outputs when the cap is reached without
computing their ranges first, silently dropping those batches.) The Entropy / Percentile
calibrators keep *every* intermediate output of every batch in memory before building
histograms (e.g. 32 x 26 x 26 floats per image for SimpleCNN's conv), so for those the set is
capped at `HistogramCaps.max_samples` samples and fed `HistogramCaps.batches_in_memory` batches
at a time (ORT's strided collection: the reader's `set_range`); the histograms are merged
across strides, so memory is bounded by the stride, not the set.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.calibrate.calibration_data import CalibrationSet
from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.quantize_config import HistogramCaps, RangeOverride
from onnxship.calibrate.recipes import CalibMethod, QuantScope, Recipe

log = logging.getLogger(__name__)


def quiet_stdout() -> contextlib.AbstractContextManager[Any]:
    """ORT's calibrators `print` progress; keep stdout clean for the CLI (logged at debug)."""
    return contextlib.redirect_stdout(io.StringIO())


def preprocess_model(src: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """`quant_pre_process`: symbolic + ONNX shape inference and ORT basic optimisation."""
    from onnxruntime.quantization import quant_pre_process

    out = Path(out_path)
    try:
        with quiet_stdout():
            quant_pre_process(os.fspath(src), os.fspath(out))
    except OSError:  # a full or unwritable $TMPDIR: the machine, not the model; no retry
        raise
    except Exception as exc:  # ORT raises plain Exceptions from shape inference
        log.warning("quant_pre_process failed (%s); retrying without symbolic shape inference", exc)
        try:
            with quiet_stdout():
                quant_pre_process(os.fspath(src), os.fspath(out), skip_symbolic_shape=True)
        except Exception as exc2:
            raise CalibrateError(
                f"onnxruntime's quant_pre_process failed on {src}: {exc2}; check the model with "
                "`python -m onnx.checker` or re-export it"
            ) from exc2
    return out


def node_table(model_path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(name, op_type) of every node of the graph, in graph order."""
    import onnx

    model = onnx.load(os.fspath(model_path), load_external_data=False)
    return [(n.name, n.op_type) for n in model.graph.node]


def resolve_exclusions(
    nodes: Sequence[tuple[str, str]],
    exclude_nodes: Iterable[str],
    exclude_op_types: Iterable[str],
    *,
    model: str,
) -> list[str]:
    """Node names to keep in float: the named nodes plus every node of the excluded op types.

    Unknown names or op types are errors listing what the (pre-processed) graph has.
    """
    names = [n for n, _ in nodes]
    ops = sorted({op for _, op in nodes})
    unknown = [n for n in exclude_nodes if n not in names]
    if unknown:
        raise CalibrateError(
            f"nodes to exclude {unknown} are not in {model} (after quant_pre_process); its nodes "
            f"are: {', '.join(names)}"
        )
    unknown_ops = [o for o in exclude_op_types if o not in ops]
    if unknown_ops:
        raise CalibrateError(
            f"op types to exclude {unknown_ops} do not occur in {model}; its op types are: "
            f"{', '.join(ops)}"
        )
    excluded = list(dict.fromkeys(exclude_nodes))
    op_set = set(exclude_op_types)
    excluded += [n for n, op in nodes if op in op_set and n not in excluded]
    return excluded


# Calibration runs at most this many bytes of input per session call: the calibrator's
# augmented model (every tensor observed, graph optimisations off) holds a batch's activations,
# ~2 GB at 32 images of 224x224 for ResNet-18; 4 MiB = 6 such images, a whole batch for MNIST.
# Ranges are reduced per call and merged (MinMax: min/max; histograms: merged), so the batching
# bounds memory without changing what is observed.
CALIB_CALL_BYTES = 4 << 20


def calibration_for(
    method: CalibMethod, calib: CalibrationSet, caps: HistogramCaps
) -> tuple[CalibrationSet, dict[str, Any]]:
    """The (possibly capped) set fed to `method`, in memory-bounded calls (`CALIB_CALL_BYTES`),
    and the ORT extra options that bound memory."""
    per_call = max(1, min(calib.batch_size, CALIB_CALL_BYTES // max(calib.sample_bytes(), 1)))
    if not method.uses_histograms:
        return calib.rebatched(per_call), {}
    capped = calib.head(caps.max_samples).rebatched(per_call)
    n_batches = len(capped)
    # ORT requires the number of batches to be a multiple of the stride; a stride holds at most
    # `batches_in_memory` calibration batches' worth of samples.
    limit = min(max(1, caps.batches_in_memory * calib.batch_size // per_call), n_batches)
    stride = max(d for d in range(1, limit + 1) if n_batches % d == 0)
    return capped, {"CalibStridedMinMax": stride}


@dataclass(frozen=True)
class CalibrationPass:
    """One run of ORT's calibrator: which method, over which tensors, on how much data."""

    method: CalibMethod
    scope: QuantScope  # ALL: every quantizable op's tensors; LINEAR: only Gemm/MatMul's
    samples: int
    batches: int
    seconds: float
    path: Path  # ORT's calibration cache (TensorsData as JSON)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method.value,
            "tensors_of": "all quantizable ops" if self.scope is QuantScope.ALL else "Gemm/MatMul",
            "samples": self.samples,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
        }


def ranges_path(cache_dir: str | os.PathLike[str], method: CalibMethod, scope: QuantScope) -> Path:
    """Where `calibrate_ranges` keeps the ranges of `method` over `scope`'s tensors."""
    return Path(cache_dir) / f"ranges-{method.value}-{scope.value}.json"


def cached_ranges(
    cache_dir: str | os.PathLike[str], method: CalibMethod, scope: QuantScope
) -> Path | None:
    """Ranges already computed that cover `scope` (ALL covers LINEAR), else None."""
    widest = ranges_path(cache_dir, method, QuantScope.ALL)
    if widest.is_file():
        return widest
    own = ranges_path(cache_dir, method, scope)
    return own if own.is_file() else None


def calibration_scopes(recipes: Iterable[Recipe]) -> dict[CalibMethod, QuantScope]:
    """One calibration per method, over the widest scope any recipe with that method needs."""
    out: dict[CalibMethod, QuantScope] = {}
    for r in recipes:
        if out.get(r.method) is not QuantScope.ALL:
            out[r.method] = r.scope
    return out


def calibrate_ranges(
    prepped: str | os.PathLike[str],
    method: CalibMethod,
    scope: QuantScope,
    calib: CalibrationSet,
    *,
    cache_dir: str | os.PathLike[str],
    caps: HistogramCaps = HistogramCaps(),  # noqa: B008 (frozen)
) -> CalibrationPass:
    """Run ORT's calibrator once (`create_calibrator`, the same one `quantize_static` uses)
    and save its ranges as ORT's calibration cache for `quantize_with_recipe`."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    fed, extra = calibration_for(method, calib, caps)
    stride = extra.get("CalibStridedMinMax")
    out = ranges_path(cache_dir, method, scope)
    reader = fed.ort_reader()
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="onnxship-calib-") as tmp, quiet_stdout():
            calibrator = create_calibrator(
                Path(prepped),
                scope.op_types(),
                augmented_model_path=os.fspath(Path(tmp) / "augmented.onnx"),
                calibrate_method=method.to_ort(),
            )
            for start in range(0, len(reader), stride or len(reader)):
                reader.set_range(start_index=start, end_index=start + (stride or len(reader)))
                calibrator.collect_data(reader)
            ranges = calibrator.compute_data()
            del calibrator
    except OSError:  # the machine (a full $TMPDIR), not the model
        raise
    except Exception as exc:
        raise CalibrateError(
            f"onnxruntime's {method.value} calibration failed on {prepped}: "
            f"{type(exc).__name__}: {exc}; try a recipe with another calibration method"
        ) from exc
    save_tensors_data(ranges, out)
    seconds = time.perf_counter() - t0
    log.info("calibration %s over %s: %d samples in %.1f s", method.value, scope.value,
             fed.samples, seconds)  # fmt: skip
    return CalibrationPass(method, scope, fed.samples, len(fed), seconds, out)


def quantize_with_recipe(
    prepped: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    recipe: Recipe,
    calib: CalibrationSet,
    *,
    cache_dir: str | os.PathLike[str],
    nodes_to_exclude: Sequence[str] = (),
    caps: HistogramCaps = HistogramCaps(),  # noqa: B008 (frozen)
    range_overrides: Sequence[RangeOverride] = (),
) -> Path:
    """Quantize the pre-processed model `prepped` with `recipe` into `out_path` (scratch).

    Activation ranges come from `cache_dir` (`calibrate_ranges`); when no ranges of the
    recipe's method cover its scope yet, they are computed first (over every quantizable op,
    so later recipes of either scope reuse them).
    """
    from onnxruntime.quantization import quantize_static

    activation_type, weight_type = recipe.types.to_ort()
    cache = cached_ranges(cache_dir, recipe.method, recipe.scope)
    if cache is None:
        cache = calibrate_ranges(
            prepped, recipe.method, QuantScope.ALL, calib, cache_dir=cache_dir, caps=caps
        ).path
    extra: dict[str, Any] = {}
    if range_overrides:
        extra["TensorQuantOverrides"] = {
            # ORT wants numpy scalars here (it reads `.dtype`).
            o.tensor: [{"rmin": np.float32(o.rmin), "rmax": np.float32(o.rmax)}]
            for o in range_overrides
        }
    out = Path(out_path)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            quantize_static(
                os.fspath(prepped),
                os.fspath(out),
                calibration_data_reader=None,  # the ranges come from the cache
                quant_format=recipe.format.to_ort(),
                op_types_to_quantize=recipe.scope.op_types(),
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                activation_type=activation_type,
                weight_type=weight_type,
                nodes_to_exclude=list(nodes_to_exclude),
                calibrate_method=recipe.method.to_ort(),
                extra_options=extra,
                calibration_cache_path=os.fspath(cache),
            )
    except (CalibrateError, OSError):  # an OSError is the machine (full $TMPDIR), not the recipe
        raise
    except Exception as exc:
        raise CalibrateError(
            f"onnxruntime quantize_static failed for recipe {recipe.name} on {prepped}: "
            f"{type(exc).__name__}: {exc}; try another --recipe or exclude the failing node"
        ) from exc
    if buffer.getvalue().strip():
        log.debug("quantize_static (%s): %s", recipe.name, buffer.getvalue().strip())
    return out
