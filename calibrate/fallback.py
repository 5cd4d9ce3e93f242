"""Accuracy-aware fallback: keep the most sensitive nodes in float until the drop is in budget.

1. Rank: quantize a QDQ twin of the recipe (same ranges, same options) and compare its
   activations with the float model's using `onnxruntime.quantization.qdq_loss_debug`; each
   candidate node gets the worst (lowest) per-tensor SQNR, in dB, of the quantized activations
   it reads or writes (the local QDQ error, so a single badly calibrated tensor stands out).
2. Probe: for the `probes` lowest-SQNR nodes, quantize a variant with only that node in float
   and measure the budget's score (validation top-1, or fidelity to FP32) - the measured gain is the sensitivity; SQNR breaks ties.
3. Greedy: leave nodes in float in that order, re-quantizing (ranges come from the cache) and
   re-measuring, until the drop is within budget or `max_float_nodes` is reached.

Every step is recorded, so the stage record says which nodes stayed float and why.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxship.calibrate.calibration_data import CalibrationSet
from onnxship.calibrate.ort_static import (
    HistogramCaps,
    RangeOverride,
    quantize_with_recipe,
    quiet_stdout,
)
from onnxship.calibrate.recipes import QuantFormatChoice, QuantScope, Recipe

log = logging.getLogger(__name__)

# Ops that only move data or are folded into their producer when quantized: leaving one in
# float alone does not change the arithmetic, so they are not probed.
NOT_PROBED = frozenset(
    {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split",
     "Relu", "Clip", "Pad", "Resize", "Gather", "GatherElements", "TopK", "ArgMax"}
)  # fmt: skip
SQNR_SAMPLES = 64  # calibration samples whose activations are compared (bounded memory)
# ... and at most this much input: every intermediate tensor of both models is held for each
# sample (a 224x224 ResNet-18 needs GBs for 64 images; 8 MiB = 13 such images)
SQNR_INPUT_BYTES = 8 << 20
# Accuracies are counts over a fixed set (e.g. 4935/5000), so their difference carries float
# rounding: 0.99 - 0.987 is 0.0030000000000000027. The slack is far below one sample (2e-4 on
# 5,000 images) and only makes "a drop of exactly the budget" count as within it.
BUDGET_SLACK = 1e-9


# Words for the three scores a candidate can be measured on (calibrate.calibration_data.BudgetMetric
# values): top-1 with labels; without labels, top-1 agreement with FP32 or output SQNR in dB.
METRIC_WORDS = {"top1": "val top-1", "top1_agreement": "top-1 agreement with FP32",
                "sqnr_db": "output SQNR vs FP32"}  # fmt: skip


def score_text(metric: str, score: float) -> str:
    """A score in its metric's unit: '0.9871 val top-1', '99.59 % top-1 agreement with
    FP32', '19.96 dB output SQNR vs FP32'."""
    if metric == "sqnr_db":
        return f"{score:.2f} dB {METRIC_WORDS[metric]}"
    if metric == "top1_agreement":
        return f"{score * 100:.2f} % {METRIC_WORDS[metric]}"
    return f"{score:.4f} {METRIC_WORDS.get(metric, metric)}"


def drop_text(metric: str, reference: float, score: float) -> str:
    """How far `score` is from the FP32 `reference`, in the metric's unit (never pp for dB)."""
    if metric == "sqnr_db":
        return score_text(metric, score)  # the reference is exact (the cap), the level says it
    return f"{score_text(metric, score)}, {(reference - score) * 100:.2f} pp below FP32"


def within_budget(fp32_top1: float, top1: float | None, max_drop: float) -> bool:
    """The one accuracy-budget test of the quantize stage (search and fallback alike):
    the drop `fp32_top1 - top1` is at most `max_drop`."""
    return top1 is not None and fp32_top1 - top1 <= max_drop + BUDGET_SLACK


@dataclass
class FallbackResult:
    path: Path | None
    val_top1: float
    float_nodes: list[dict[str, Any]]  # [{"node", "op_type", "reason"}]
    within_budget: bool
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def tensor_sqnr(
    prepared: str | os.PathLike[str],
    qdq_model: str | os.PathLike[str],
    calib: CalibrationSet,
    scratch: Path,
) -> dict[str, float | None]:
    """Per-activation local SQNR (dB) of the QDQ model: pre-QDQ vs post-QDQ values.

    Uses qdq_loss_debug's augment / collect / match / compute pipeline on `SQNR_SAMPLES`
    calibration samples. Infinite SQNR (no error at all) is reported as None.
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    k = max(1, min(SQNR_SAMPLES, SQNR_INPUT_BYTES // max(calib.sample_bytes(), 1)))
    subset = calib.rebatched(min(k, calib.batch_size)).head(k)
    aug_q = scratch / "sqnr_qdq_aug.onnx"
    aug_f = scratch / "sqnr_float_aug.onnx"
    with quiet_stdout():
        modify_model_output_intermediate_tensors(os.fspath(qdq_model), os.fspath(aug_q))
        modify_model_output_intermediate_tensors(os.fspath(prepared), os.fspath(aug_f))
        q_acts = collect_activations(os.fspath(aug_q), subset.ort_reader())
        f_acts = collect_activations(os.fspath(aug_f), subset.ort_reader())
        matching = create_activation_matching(q_acts, f_acts)
        errors = compute_activation_error(matching)
    return {name: _finite(err.get("qdq_err")) for name, err in errors.items()}


def node_sqnr(nodes: Sequence[Any], sqnr: dict[str, float | None]) -> dict[str, float | None]:
    """Worst SQNR over the activations each node reads or writes (None if none is quantized)."""
    out: dict[str, float | None] = {}
    for node in nodes:
        values = [sqnr[t] for t in [*node.input, *node.output] if sqnr.get(t) is not None]
        out[node.name] = min(values) if values else None  # type: ignore[type-var]
    return out


def probe_candidates(nodes: Sequence[Any], recipe: Recipe, excluded: Sequence[str]) -> list[Any]:
    """Nodes whose own arithmetic the recipe quantizes and that are not already in float."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    registry = QDQRegistry if recipe.format is QuantFormatChoice.QDQ else QLinearOpsRegistry
    scope_ops = recipe.scope.op_types()
    skip = set(excluded)
    return [
        n
        for n in nodes
        if n.op_type in registry
        and n.op_type not in NOT_PROBED
        and (recipe.scope is QuantScope.ALL or (scope_ops and n.op_type in scope_ops))
        and n.name not in skip
    ]


def fallback_to_float(
    prepared: Path,
    recipe: Recipe,
    calib: CalibrationSet,
    *,
    evaluate: Callable[[Path], float],
    fp32_top1: float,
    max_drop: float,
    base_excluded: Sequence[str],
    scratch: Path,
    cache_dir: Path,
    caps: HistogramCaps,
    range_overrides: Sequence[RangeOverride] = (),
    max_float_nodes: int = 4,
    probes: int = 8,
    tag: str = "fb",
    metric: str = "top1",
) -> FallbackResult:
    """Leave the most sensitive nodes of `recipe` in float until top-1 is within `max_drop`."""
    import onnx

    graph_nodes = list(onnx.load(os.fspath(prepared), load_external_data=False).graph.node)
    candidates = probe_candidates(graph_nodes, recipe, base_excluded)
    counter = iter(range(10_000))

    def build(excluded: Sequence[str], rec: Recipe = recipe) -> Path:
        out = scratch / f"{tag}-{next(counter)}.onnx"
        return quantize_with_recipe(
            prepared,
            out,
            rec,
            calib,
            cache_dir=cache_dir,
            nodes_to_exclude=excluded,
            caps=caps,
            range_overrides=range_overrides,
        )

    # 1. SQNR of every quantized activation, from a QDQ twin of the recipe.
    twin = build(list(base_excluded), recipe.with_format(QuantFormatChoice.QDQ))
    try:
        per_tensor = tensor_sqnr(prepared, twin, calib, scratch)
    except Exception as exc:  # the debugger is best-effort; measured probes still rank nodes
        log.warning("qdq_loss_debug failed (%s); ranking nodes by measured accuracy only", exc)
        per_tensor = {}
    sqnr = node_sqnr(candidates, per_tensor)
    ordered = sorted(candidates, key=lambda n: (sqnr[n.name] is None, sqnr[n.name] or 0.0))
    # 2. Measured probes: one node in float at a time.
    measured: dict[frozenset[str], tuple[Path, float]] = {}
    sensitivity = _probe(ordered, sqnr, build, evaluate, base_excluded, probes, measured)
    # 3. Greedy: most sensitive first, until within budget.
    return _greedy(
        sensitivity, build, evaluate, measured, base_excluded=base_excluded,
        fp32_top1=fp32_top1, max_drop=max_drop, max_float_nodes=max_float_nodes, metric=metric,
    )  # fmt: skip


def _probe(
    ordered: Sequence[Any],
    sqnr: dict[str, float | None],
    build: Callable[[Sequence[str]], Path],
    evaluate: Callable[[Path], float],
    base_excluded: Sequence[str],
    probes: int,
    measured: dict[frozenset[str], tuple[Path, float]],
) -> list[dict[str, Any]]:
    """Each node's sensitivity: its SQNR, and for the first `probes` (lowest SQNR first) the
    score with that node alone in float (each measured model goes into `measured`)."""
    sensitivity: list[dict[str, Any]] = []
    for i, node in enumerate(ordered):
        top1: float | None = None
        if i < probes:
            excluded = [*base_excluded, node.name]
            path = build(excluded)
            top1 = evaluate(path)
            measured[frozenset(excluded)] = (path, top1)
        db = sqnr[node.name]
        sensitivity.append(
            {
                "node": node.name,
                "op_type": node.op_type,
                "sqnr_db": None if db is None else round(db, 2),
                "val_top1_alone_in_float": top1,
            }
        )
    return sensitivity


def _greedy(
    sensitivity: list[dict[str, Any]],
    build: Callable[[Sequence[str]], Path],
    evaluate: Callable[[Path], float],
    measured: dict[frozenset[str], tuple[Path, float]],
    *,
    base_excluded: Sequence[str],
    fp32_top1: float,
    max_drop: float,
    max_float_nodes: int,
    metric: str,
) -> FallbackResult:
    """Most sensitive first (the best score alone in float, then the lowest SQNR), one more
    node in float per step until within the budget or `max_float_nodes`; the result is the
    first step within the budget, else the best step."""
    rank = sorted(
        sensitivity,
        key=lambda s: (
            -(s["val_top1_alone_in_float"] if s["val_top1_alone_in_float"] is not None else -1.0),
            s["sqnr_db"] if s["sqnr_db"] is not None else math.inf,
        ),
    )
    steps: list[dict[str, Any]] = []
    results: list[tuple[list[dict[str, Any]], Path, float]] = []
    for count in range(1, min(max_float_nodes, len(rank)) + 1):
        kept = rank[:count]
        excluded = [*base_excluded, *(c["node"] for c in kept)]
        key = frozenset(excluded)
        if key not in measured:
            path = build(excluded)
            measured[key] = (path, evaluate(path))
        path, top1 = measured[key]
        drop = fp32_top1 - top1
        steps.append({"float_nodes": [c["node"] for c in kept], "val_top1": top1, "val_drop": drop})
        results.append((kept, path, top1))
        if within_budget(fp32_top1, top1, max_drop):
            break
    if not results:
        return FallbackResult(None, -1.0, [], False, sensitivity, steps)
    within = within_budget(fp32_top1, results[-1][2], max_drop)
    kept, path, top1 = results[-1] if within else max(results, key=lambda r: r[2])
    return FallbackResult(
        path=path,
        val_top1=top1,
        float_nodes=[
            {"node": c["node"], "op_type": c["op_type"], "reason": _reason(c, metric)} for c in kept
        ],
        within_budget=within,
        sensitivity=sensitivity,
        steps=steps,
    )


def _reason(entry: dict[str, Any], metric: str = "top1") -> str:
    """Why a node stayed in float, in the budget's metric (`val_top1_alone_in_float` holds the
    score in that metric: top-1, agreement or SQNR dB)."""
    words = METRIC_WORDS.get(metric, metric)
    text = f"accuracy fallback (INT8 {words} was outside the budget)"
    if entry["val_top1_alone_in_float"] is not None:
        alone = score_text(metric, entry["val_top1_alone_in_float"])
        text += f"; alone in float it gave {alone}"
    if entry["sqnr_db"] is not None:
        text += f"; worst SQNR of its quantized activations {entry['sqnr_db']:.1f} dB"
    return text
