"""The quantize stage's record: the metrics of the chosen INT8 model (recipe, integer class,
accuracy against the budget, confirmed latency, calibration, graph rewrites, target) and one
row per candidate of the search table. The settings are
`calibrate.quantize_config.QuantizeConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxship.calibrate.fallback import within_budget
from onnxship.calibrate.latency_race import (
    Candidate,
    faster,
    speed_score,
    timed_batches,
)
from onnxship.calibrate.quantize_config import QuantizeConfig
from onnxship.calibrate.quantize_inputs import Inputs, PreparedGraph
from onnxship.calibrate.recipes import AUTO, SATURATING_CLASSES, parse_recipe


def stage_metrics(
    inp: Inputs,
    cfg: QuantizeConfig,
    graph: PreparedGraph,
    chosen: Candidate,
    confirm: Candidate,
    table: list[dict[str, Any]],
    fallback_info: dict[str, Any] | None,
    int8_faster: bool,
    why: str,
    out: Path,
) -> dict[str, Any]:
    """The metrics of the INT8 model written at `out`; the stage adds the search's record,
    the calibration file and passes, the wall time and the peak memory."""
    from onnxship.core.env import cpu_model_name, integer_class_record, isa_summary

    assert chosen.recipe is not None
    here = integer_class_record()
    fp32_top1 = float(table[0]["val_top1"])
    fp32_bytes = inp.src.stat().st_size
    int8_bytes = out.stat().st_size
    return {
        "recipe": _recipe_json(chosen, cfg, str(here["integer_class"])),
        # The class the accuracy and latency below were measured on, and the grid it chose.
        "integer_class": here["integer_class"],
        "safe_integer_classes": chosen.recipe.safe_integer_classes(),
        "portable": cfg.portable,
        "grid": _grid_note(cfg, str(here["integer_class"])),
        "selection_rule": (
            "fastest within the accuracy budget: lowest geometric mean over the timed batch "
            f"sizes of the {cfg.latency.statistic.value}-latency ratio to FP32 (candidates "
            "outside the budget are never timed)"
        ),
        "candidates": table,
        "nodes_in_float": chosen.float_nodes,
        "fp32_val_top1": fp32_top1,
        "int8_val_top1": chosen.val_top1,
        "val_drop": round(fp32_top1 - (chosen.val_top1 or 0.0), 6),
        "max_drop": cfg.max_drop,
        "val_samples": inp.evalset.samples,
        "val_split": inp.evalset.source,
        "budget": inp.evalset.describe(cfg.max_drop, cfg.min_sqnr_db),
        "latency": _latency_json(inp, cfg, confirm),
        "int8_faster_than_fp32": int8_faster,
        "int8_faster_than_fp32_why": why,
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "bytes_ratio": round(int8_bytes / fp32_bytes, 4),
        "calibration": _calibration_json(inp, cfg),
        "graph_rewrites": [r.to_json() for r in graph.rewrites],
        "fallback": fallback_info,
        "target": {
            "provider": inp.provider,
            "cpu": cpu_model_name(),
            "isa": isa_summary(),
            **here,
        },  # fmt: skip
    }


def _recipe_json(chosen: Candidate, cfg: QuantizeConfig, integer_class: str) -> dict[str, Any]:
    assert chosen.recipe is not None
    return {
        "name": chosen.name,
        "options": chosen.recipe.options(),
        "searched": cfg.recipe.strip().lower() == AUTO,
        "safe_integer_classes": chosen.recipe.safe_integer_classes(),
        "risk": chosen.recipe.risk,
        "exact_on_validated_class": chosen.recipe.safe_on(integer_class),
    }


def _latency_json(inp: Inputs, cfg: QuantizeConfig, confirm: Candidate) -> dict[str, Any]:
    return {
        "provider": inp.provider,
        "threads": cfg.latency.threads,
        "statistic": cfg.latency.statistic.value,
        "by_batch": confirm.latency,
        "min_speedup": round(cfg.latency.min_speedup, 4),
        "engine": "runtime_bench.timing (block-interleaved rounds, paired bootstrap CI)",
    }


def _calibration_json(inp: Inputs, cfg: QuantizeConfig) -> dict[str, Any]:
    return {
        "path": None,
        "sha256": inp.calib.sha256(),
        "samples": inp.calib.samples,
        "batch_size": inp.calib.batch_size,
        "source_split": inp.calib.source,
        "split": inp.split.to_json(),
        "normalisation": {
            "mean": None if inp.mean is None else list(inp.mean),
            "std": None if inp.std is None else list(inp.std),
            "from": inp.norm_source,
        },
        "histogram_cap": {
            "max_samples": cfg.caps.max_samples,
            "batches_in_memory": cfg.caps.batches_in_memory,
            "applies_to": ["entropy", "percentile"],
        },
    }


def row_json(
    row: Candidate,
    fp32: Candidate,
    cfg: QuantizeConfig,
    budget: float | None = None,
    inp_samples: int = 0,
) -> dict[str, Any]:
    fp32_top1 = float(fp32.val_top1 or 0.0)
    budget = cfg.max_drop if budget is None else budget
    out: dict[str, Any] = {
        "name": row.name,
        "options": row.recipe.options() if row.recipe else {"precision": "fp32"},
        "val_top1": row.val_top1,
        "val_drop": None if row.val_top1 is None else round(fp32_top1 - row.val_top1, 6),
        "within_budget": row.recipe is None or within_budget(fp32_top1, row.val_top1, budget),
        "latency": row.latency,
        "bytes": row.path.stat().st_size if row.path.is_file() else None,
        "nodes_in_float": row.float_nodes,
    }
    if row.scored_on is not None and row.scored_on < inp_samples:
        out["screened"] = (
            f"scoring stopped after {row.scored_on} of {inp_samples} samples: val_top1 is an "
            "upper bound, already outside the accuracy budget"
        )
    if row.recipe is not None:
        out["quantize_s"] = round(row.quantize_s, 3)
        timed = bool(timed_batches(row, cfg.latency))
        out["timed"] = timed
        out["speed_score"] = round(speed_score(row, cfg.latency), 4) if timed else None
        # None: not timed (outside the accuracy budget, or failed): cheap checks first
        out["faster_than_fp32"] = faster(row, cfg.latency) if timed else None
    if row.screened_out:
        out["screened_out"] = row.screened_out
    if row.error:
        out["error"] = row.error
    if row.fallback:
        out["fallback"] = row.fallback
    return out


def _grid_note(cfg: QuantizeConfig, cls: str) -> str:
    """How the searched grid was chosen, for the record."""
    if cfg.recipe.strip().lower() != AUTO:
        exact = parse_recipe(cfg.recipe).safe_on(cls)
        return f"one recipe named ({cfg.recipe}); {'exact' if exact else 'may saturate'} on {cls}"
    if cfg.portable:
        return "portable: only recipes exact on every x86 integer class (reduce_range or U8U8)"
    if cls in SATURATING_CLASSES:
        return (
            f"{cls} may saturate U8S8: every preset that may saturate was replaced by its "
            "reduce_range twin (same kernel, same speed) and U8U8 on every op was added"
        )
    return f"every preset is exact on {cls}: the presets as they are"
