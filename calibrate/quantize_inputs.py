"""What the INT8 search starts from: the data (calibration and evaluation sets, with the
normalisation they need) and the pre-processed graph every recipe is quantized from.

The quantize stage (`calibrate.quantize.int8_from_onnx`) reads its config and passes the
values these phases need.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.calibrate.calibration_data import (
    CalibrationConfig,
    CalibrationSet,
    EvaluationSet,
    InputSpec,
    Split,
    calibration_and_evaluation_from_npz,
    calibration_set_from_mnist,
    calibration_set_from_npz,
    draw_rule,
    evaluation_set_from_mnist,
    evaluation_set_from_npz,
    input_specs_of,
    same_data,
)
from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.graph_prep import cap_opset, ort_max_qdq_opset, reshape_to_flatten
from onnxship.calibrate.ort_static import node_table, preprocess_model, resolve_exclusions
from onnxship.calibrate.recipes import LINEAR_OPS, QuantFormatChoice, QuantScope, Recipe
from onnxship.core import model_meta
from onnxship.core.artifact import sha256_file

PathLike = str | os.PathLike[str]

# --------------------------------------------------------------------------------------------
# The data: metadata, calibration set, evaluation set


@dataclass
class Inputs:
    src: Path
    provider: str
    specs: list[InputSpec]
    src_meta: dict[str, str]
    src_sha: str
    mean: tuple[float, ...] | None  # None: npz data, preprocessed by the user
    std: tuple[float, ...] | None
    norm_source: str
    calib: CalibrationSet
    evalset: EvaluationSet
    split: Split
    max_drop: float
    min_sqnr_db: float

    def evaluate(self, session: Any) -> float:
        """The candidate's score on the evaluation set (top-1, or fidelity to FP32)."""
        return self.evalset.score(session)

    def feeds(self, batch_sizes: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
        return _feeds(self.evalset.inputs, batch_sizes)

    def budget(self) -> float:
        """The largest allowed FP32-score-minus-candidate-score for the evaluation set's
        metric. Known only once the FP32 reference was scored (it decides top-1 agreement
        vs output SQNR for data without labels)."""
        return self.evalset.drop_budget(self.max_drop, self.min_sqnr_db)

    @property
    def metric(self) -> str:
        """The budget's metric (`BudgetMetric` value): top1, top1_agreement or sqnr_db."""
        return self.evalset.metric.value if self.evalset.metric else "top1"


def load_inputs(
    src: Path,
    *,
    provider: str,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    calibration: CalibrationConfig,
    eval_batch: int,
    max_drop: float,
    min_sqnr_db: float,
    data_dir: PathLike | None,
    calib_npz: PathLike | None,
    val_npz: PathLike | None,
    calib_from_val: bool = False,
) -> Inputs:
    """Check the model and the provider, read the model's metadata, and load the calibration
    and evaluation sets (`mean` / `std`: the user's normalisation override, or None).
    `calib_from_val`: calibration drawn from `val_npz`, the budget on its other rows - also
    when `calib_npz` and `val_npz` are the same file (or the same bytes): the rows that
    calibrate never measure the budget."""
    from onnxship.runtime_bench.session import check_model_file, check_provider_available

    check_model_file(src)
    provider = check_provider_available(provider)
    specs = input_specs_of(src)
    src_meta = _source_metadata(src)
    norm: tuple[tuple[float, ...] | None, tuple[float, ...] | None, str]
    norm = (None, None, "none: npz data is preprocessed")
    if calib_npz is not None and val_npz is not None and same_data(calib_npz, val_npz):
        calib_from_val = True
    if calib_from_val:
        if val_npz is None:
            raise CalibrateError("drawing calibration from the validation data needs val_npz")
        calib, evalset = calibration_and_evaluation_from_npz(
            val_npz, specs, calibration, batch_size=eval_batch
        )
        rule = draw_rule(calibration.size, calibration.seed, Path(val_npz).name,
                         evalset.labels is not None)  # fmt: skip
        split = Split(calib.samples, evalset.samples, True, rule)
    else:
        if calib_npz is None or val_npz is None:  # MNIST is involved: it needs normalisation
            norm = _normalisation(src_meta, mean, std, src)
        calib = _calibration_set(specs, calibration, norm[0], norm[1], data_dir, calib_npz)
        evalset = _evaluation_set(data_dir, calib, specs, norm[0], norm[1], val_npz, eval_batch)
        split = _split_of(calib, evalset, calib_npz, val_npz, calibration)
    return Inputs(
        src=src, provider=provider, specs=specs, src_meta=src_meta, src_sha=sha256_file(src),
        mean=norm[0], std=norm[1], norm_source=norm[2], calib=calib, evalset=evalset,
        split=split, max_drop=max_drop, min_sqnr_db=min_sqnr_db,
    )  # fmt: skip


def _split_of(
    calib: CalibrationSet,
    evalset: EvaluationSet,
    calib_npz: PathLike | None,
    val_npz: PathLike | None,
    calibration: CalibrationConfig,
) -> Split:
    """The record's split when calibration and the budget do not come from one npz."""
    if calib_npz is None and val_npz is None:  # both from MNIST validation
        rule = draw_rule(calibration.size, calibration.seed, "MNIST's validation split")
        return Split(calib.samples, evalset.samples, True, rule)
    if val_npz is None and calib.train_indices is not None:  # MNIST minus the calibration's
        rule = (
            f"calibration on {Path(calib_npz or '').name} (MNIST validation images, by their "
            "train_indices); the accuracy budget on the other MNIST validation images"
        )
        return Split(calib.samples, evalset.samples, True, rule)
    where = {
        "calibration": Path(calib_npz).name if calib_npz is not None else "MNIST validation",
        "budget": Path(val_npz).name if val_npz is not None else "MNIST validation",
    }
    rule = (
        f"calibration on {where['calibration']}, the accuracy budget on {where['budget']}: "
        "two sources named apart, not compared row by row"
    )
    return Split(calib.samples, evalset.samples, None, rule)


def _source_metadata(src: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(os.fspath(src), load_external_data=False)
    return model_meta.metadata_of_proto(model)


def _normalisation(
    raw: dict[str, str],
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    src: Path,
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    from onnxship.core.dataset import require_mnist_data
    from onnxship.core.errors import CoreError
    from onnxship.core.model_meta import parse_meta

    if mean is not None and std is not None:
        return tuple(mean), tuple(std), "override (--mean/--std)"
    try:
        require_mnist_data(
            raw, source=os.fspath(src), flag="--calib-npz CALIB.npz --val-npz VAL.npz"
        )
        meta = parse_meta(raw, source=os.fspath(src))
    except CoreError as exc:
        if "not MNIST" in str(exc):
            raise CalibrateError(str(exc)) from exc
        raise CalibrateError(
            f"{exc}; or calibrate and measure on your own preprocessed data with "
            "--calib-npz CALIB.npz --val-npz VAL.npz"
        ) from exc
    return meta.mean, meta.std, "model metadata"


def _evaluation_set(
    data_dir: PathLike | None,
    calib: CalibrationSet,
    specs: Sequence[InputSpec],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    val_npz: PathLike | None,
    eval_batch: int,
) -> EvaluationSet:
    """What the budget is measured on: the user's --val-npz, else MNIST validation images
    not used for calibration."""
    if val_npz is not None:
        return evaluation_set_from_npz(val_npz, specs, batch_size=eval_batch)
    from onnxship.core import mnist

    assert mean is not None and std is not None
    spec = _single(specs, "the accuracy budget on MNIST")
    root = mnist.resolve_data_root(data_dir)
    return evaluation_set_from_mnist(root, calib, spec, mean, std, batch_size=eval_batch)


def _single(specs: Sequence[InputSpec], what: str) -> InputSpec:
    if len(specs) != 1:
        raise CalibrateError(
            f"the model has {len(specs)} inputs ({', '.join(s.name for s in specs)}); "
            f"{what} needs a single-input model; pass --calib-npz and --val-npz with one "
            "array per input"
        )
    return specs[0]


def _calibration_set(
    specs: Sequence[InputSpec],
    calibration: CalibrationConfig,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    data_dir: PathLike | None,
    calib_npz: PathLike | None,
) -> CalibrationSet:
    if calib_npz is not None:
        return calibration_set_from_npz(calib_npz, specs, calibration)
    from onnxship.core import mnist

    assert mean is not None and std is not None
    spec = _single(specs, "MNIST calibration")
    return calibration_set_from_mnist(
        mnist.resolve_data_root(data_dir), spec, mean, std, calibration
    )


def _feeds(
    inputs: dict[str, np.ndarray], batch_sizes: Sequence[int]
) -> dict[int, dict[str, np.ndarray]]:
    """Real validation samples as latency feeds (repeated if a batch exceeds the set)."""
    out = {}
    for b in batch_sizes:
        rows = np.arange(b) % next(iter(inputs.values())).shape[0]
        out[b] = {name: np.ascontiguousarray(x[rows]) for name, x in inputs.items()}
    return out


# --------------------------------------------------------------------------------------------
# The graph every recipe starts from


@dataclass
class PreparedGraph:
    scratch: Path
    cache_dir: Path  # calibration ranges, shared by every recipe with the same method
    prepared: Path
    rewrites: list[Any]
    nodes: list[tuple[str, str]]  # (name, op_type) after pre-processing
    user_excluded: list[str]
    user_rows: list[dict[str, Any]]  # nodes_in_float entries for the user's exclusions


def prepare_graph(
    src: Path,
    scratch: Path,
    *,
    flatten_reshapes: bool,
    exclude_nodes: Sequence[str],
    exclude_op_types: Sequence[str],
) -> PreparedGraph:
    """`quant_pre_process`, the exact rewrites, and the user's exclusions resolved to names."""
    cache_dir = scratch / "ranges"
    cache_dir.mkdir()
    prepared = preprocess_model(src, scratch / "preprocessed.onnx")
    prepared, rewrites = _rewrite(prepared, scratch, flatten_reshapes)
    nodes = list(node_table(prepared))
    op_of = dict(nodes)
    excluded = list(
        resolve_exclusions(nodes, exclude_nodes, exclude_op_types, model=os.fspath(src))
    )
    user_rows = [
        {
            "node": n,
            "op_type": op_of[n],
            "reason": "excluded by config ("
            + ("exclude_nodes" if n in exclude_nodes else f"op type {op_of[n]}")
            + ")",
        }
        for n in excluded
    ]
    return PreparedGraph(scratch, cache_dir, prepared, rewrites, nodes, excluded, user_rows)


def _rewrite(prepped: Path, scratch: Path, flatten_reshapes: bool) -> tuple[Path, list[Any]]:
    """Exact rewrites of the pre-processed model (`calibrate.graph_prep`)."""
    import onnx

    model = onnx.load(os.fspath(prepped))
    entry = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    rewrites = cap_opset(model, ort_max_qdq_opset(entry.version)) if entry else []
    if flatten_reshapes:
        rewrites += reshape_to_flatten(model)
    if not rewrites:
        return prepped, []
    out = scratch / "prepared.onnx"
    onnx.save_model(model, os.fspath(out))
    return out, rewrites


def scope_rows(
    recipe: Recipe, nodes: Sequence[tuple[str, str]], user_excluded: Sequence[str]
) -> list[dict[str, Any]]:
    """Nodes the recipe's scope leaves in float (ops ORT could quantize but the scope skips)."""
    if recipe.scope is QuantScope.ALL:
        return []
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    registry = QDQRegistry if recipe.format is QuantFormatChoice.QDQ else QLinearOpsRegistry
    return [
        {
            "node": name,
            "op_type": op,
            "reason": f"recipe scope 'linear' quantizes only {'/'.join(LINEAR_OPS)}",
        }
        for name, op in nodes
        if op in registry and op not in LINEAR_OPS and name not in user_excluded
    ]
