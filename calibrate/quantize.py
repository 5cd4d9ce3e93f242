"""The quantize stage: FP32 .onnx -> static INT8 .onnx, accuracy-aware and tuned per target EP.

`int8_from_onnx(src, cfg, out_path)`:

1. Calibration set from the validation part of MNIST's training split (or a user's .npz),
   preprocessed with the normalisation stored in the model's metadata; the evaluation set
   (`calibrate.calibration_data.EvaluationSet`) from the rest of that validation part, or from a
   user's `--val-npz` (any model: no metadata needed when both sets are npz files).
2. `quant_pre_process`, then exact graph rewrites (`calibrate.graph_prep`), in a temporary folder.
3. The recipes: the grid exact on this CPU's integer class (`calibrate.recipes.auto_grid`;
   with `portable`, exact on every x86 class), or the one named. Calibrate once per calibration method (`calibrate.ort_static.calibrate_ranges`: one pass of
   ORT's calibrator per method the recipes use, over the widest scope they need, fed in
   memory-bounded calls); every recipe is quantized from those ranges with `quantize_static`
   and scored on the evaluation set - top-1 with labels; without labels fidelity to the FP32
   model: top-1 agreement for class scores, output SQNR otherwise. Scoring sessions are
   released one by one (a 224x224 network's arena holds hundreds of MB).
4. Cheap first, expensive later: only the recipes within the accuracy budget (FP32 score minus
   INT8 score <= max_drop, `calibrate.fallback.within_budget`) are timed. They race FP32 with
   the timing engine (`runtime_bench.timing`: block-interleaved rounds, paired bootstrap CIs,
   candidates clearly slower than the best dropped early) at each batch size, smallest first,
   within `LatencyConfig.seconds_per_batch_size` per batch size; a batch size whose minimum
   rounds would not fit its share of that budget is skipped and the record says so.
   The selection rule (`calibrate.selection.choose_recipe`): the fastest timed candidate,
   i.e. the lowest geometric mean over the timed batch sizes of its latency ratio to FP32
   (`speed_score`). If none is within budget, the accuracy fallback (`calibrate.fallback`) leaves the most sensitive nodes
   in float, starting from the recipes with the best scores, and the same rule chooses.
5. The winner is re-timed against FP32 alone (the race's best is optimistic), written with the
   source's metadata (`onnxship.precision` = "int8", `onnxship.source_sha256` = the FP32
   file's sha256). INT8 ships as faster than FP32 (`int8_faster_than_fp32`) only when the
   lower bound of its speed-up's CI clears `LatencyConfig.min_speedup` at every timed batch
   size (`runtime_bench.timing.decide_faster`); the record cites the CIs, the calibration
   passes, the time of each phase and the peak resident memory.

Where the phases live: this module holds the configs, the stage, the search's driver and the
fallback's use; `calibrate.quantize_inputs` the data and the prepared graph,
`calibrate.recipe_scoring` calibration and scoring, `calibrate.latency_race` the timing and the
INT8-ships decision, `calibrate.selection` the selection rule, `calibrate.int8_file` the
written model and its metadata, `calibrate.quantize_record` the stage record.

Latency statistic: on a shared machine the per-call distribution is bimodal (preempted calls
take 5-10x longer), so the median of one candidate can land in either mode. Recipes are ranked
by the ratio of *minimum* latencies (the uncontended cost; `LatencyStatistic.MIN`), and p50 is
recorded beside it for every row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.fallback import (
    fallback_to_float,
)
from onnxship.calibrate.int8_file import write_int8
from onnxship.calibrate.latency_race import (
    FP32_ROW,
    Candidate,
    faster,
    faster_why,
    measure_against_fp32,
    session,
    timed_batches,
)
from onnxship.calibrate.quantize_config import (  # noqa: F401  (the stage's config, kept here)
    LatencyConfig,
    LatencyStatistic,
    QuantizeConfig,
    recipe_grid,
)
from onnxship.calibrate.quantize_inputs import (
    Inputs,
    PreparedGraph,
    load_inputs,
    prepare_graph,
)
from onnxship.calibrate.quantize_record import row_json, stage_metrics
from onnxship.calibrate.recipe_scoring import (
    calibrate_once_per_method,
    peak_rss_mb,
    score_recipes,
)
from onnxship.calibrate.recipes import (
    AUTO,
    QuantScope,
    Recipe,
)
from onnxship.calibrate.selection import (
    budget_text,
    choose_recipe,
    within_budget_rows,
    within_rows,
)
from onnxship.core.artifact import Artifact, atomic_companion, jsonable

log = logging.getLogger(__name__)

STAGE = "quantize"


# --------------------------------------------------------------------------------------------
# The stage


def int8_from_onnx(
    src: str | os.PathLike[str],
    cfg: QuantizeConfig,
    out_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    calib_npz: str | os.PathLike[str] | None = None,
    calib_out: str | os.PathLike[str] | None = None,
    progress: bool = False,
    val_npz: str | os.PathLike[str] | None = None,
    calib_from_val: bool = False,
) -> Artifact:
    """Quantize the FP32 model `src` to static INT8 at `out_path` (see the module docstring).

    Phases: `_load_inputs` (metadata, calibration and validation data,
    `calibrate.quantize_inputs`), `prepare_graph` (pre-processing in a scratch folder), `_search` (every
    recipe quantized, scored and timed), `_fallback` (only when no recipe meets the budget),
    `choose_recipe` (the selection rule), `_confirm` (the winner re-timed against FP32) and
    `write_int8` (`calibrate.int8_file`).

    Writes `out_path` (and the calibration set to `calib_out` when given) only on success.
    `val_npz`: measure the budget on this dataset .npz instead of MNIST validation.
    `calib_from_val`: draw the calibration set from `val_npz` (class-balanced, seeded, the
    calibration size) and measure the budget on its other rows (`calib_npz` unused).
    Raises CalibrateError: bad input (exit 2); no recipe within the accuracy budget (exit 1,
    the message names the best recipe found and its drop).
    """
    started = time.perf_counter()
    cfg.validate()
    inp = _load_inputs(Path(src), cfg, data_dir, calib_npz, val_npz, calib_from_val)
    with tempfile.TemporaryDirectory(prefix="onnxship-quantize-") as scratch_name:
        graph = prepare_graph(
            inp.src, Path(scratch_name), flatten_reshapes=cfg.flatten_reshapes,
            exclude_nodes=cfg.exclude_nodes, exclude_op_types=cfg.exclude_op_types,
        )  # fmt: skip
        fp32, rows, search, fallback_info = _searched(inp, graph, cfg, progress)
        chosen = choose_recipe(
            rows, fp32, cfg, src=inp.src, fallback_ran=fallback_info is not None,
            budget=inp.budget(), budget_text=budget_text(inp), metric=inp.metric,
        )  # fmt: skip
        confirm, search["confirm"] = _confirm(chosen, fp32, inp, cfg)
        int8_faster = faster(confirm, cfg.latency)
        why = faster_why(
            confirm, int8_faster, cfg.latency, within_rows(rows, fp32, cfg, inp.budget()), rows
        )
        if cfg.require_faster and not int8_faster:
            raise CalibrateError(
                f"{inp.src}: INT8 is not faster than FP32 on {inp.provider} and require_faster "
                f"is set: {why}",
                exit_code=1,
            )
        out = Path(out_path)
        _write_outputs(inp, chosen, cfg, out, calib_out)
        table = [row_json(r, fp32, cfg, inp.budget(), inp.evalset.samples) for r in (fp32, *rows)]
    calib_path = os.fspath(calib_out) if calib_out is not None else None
    metrics = stage_metrics(
        inp, cfg, graph, chosen, confirm, table, fallback_info, int8_faster, why, out
    )
    metrics["calibration"]["path"] = calib_path
    metrics["calibration"]["passes"] = search["calibration_passes"]
    metrics["search"] = search
    metrics["search_wall_s"] = round(time.perf_counter() - started, 2)
    metrics["peak_rss_mb"] = peak_rss_mb()
    return Artifact.from_file(
        out, stage=STAGE, config=jsonable(cfg), parent_sha256=inp.src_sha, metrics=metrics
    )


def _eval_session(path: Path, cfg: QuantizeConfig) -> Any:
    """A session for scoring: ORT's default threads (scoring is not a latency measurement)."""
    return session(path, cfg.provider, threads=0)


# --------------------------------------------------------------------------------------------
# Phases 1 and 2: inputs (metadata, calibration and validation sets) and the prepared graph,
# `calibrate.quantize_inputs`


def _load_inputs(
    src: Path,
    cfg: QuantizeConfig,
    data_dir: str | os.PathLike[str] | None,
    calib_npz: str | os.PathLike[str] | None,
    val_npz: str | os.PathLike[str] | None,
    calib_from_val: bool = False,
) -> Inputs:
    return load_inputs(
        src, provider=cfg.provider, mean=cfg.mean, std=cfg.std, calibration=cfg.calibration,
        eval_batch=cfg.eval_batch, max_drop=cfg.max_drop, min_sqnr_db=cfg.min_sqnr_db,
        data_dir=data_dir, calib_npz=calib_npz, val_npz=val_npz, calib_from_val=calib_from_val,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Phases 3 and 4 together: FP32 scored, every recipe searched, the fallback when none is within
# the budget


def _searched(
    inp: Inputs, graph: PreparedGraph, cfg: QuantizeConfig, progress: bool
) -> tuple[Candidate, list[Candidate], dict[str, Any], dict[str, Any] | None]:
    """The FP32 row, every candidate row, the search's record and the fallback's (None when
    it did not run)."""
    fp32 = Candidate(None, FP32_ROW, inp.src, [])
    fp32.val_top1 = inp.evalset.reference_score(
        _eval_session(inp.src, cfg), model=os.fspath(inp.src)
    )
    rows, search = _search(inp, graph, fp32, cfg, progress)
    fallback_info = None
    if cfg.fallback and fallback_needed(rows, fp32, cfg, inp.budget()):
        fallback_rows, fallback_timing = _fallback(inp, graph, fp32, rows, cfg)
        rows.extend(fallback_rows)
        fallback_info = {"ran": True, "candidates": [r.name for r in fallback_rows],
                         "latency": fallback_timing}  # fmt: skip
    return fp32, rows, search, fallback_info


# --------------------------------------------------------------------------------------------
# Phase 3: the search - calibrate once per method and score every recipe
# (`calibrate.recipe_scoring`), time only the survivors (`calibrate.latency_race`)


def _search(
    inp: Inputs, graph: PreparedGraph, fp32: Candidate, cfg: QuantizeConfig, progress: bool
) -> tuple[list[Candidate], dict[str, Any]]:
    """Cheap first: calibrate once per method, score every recipe, then race only the
    recipes within the accuracy budget against FP32 (`measure_against_fp32`)."""
    recipes = recipe_grid(cfg)
    not_searched = _linear_cannot_be_faster(recipes, graph.prepared, cfg)
    recipes = tuple(r for r in recipes if r.name not in not_searched)
    t0 = time.perf_counter()
    passes = calibrate_once_per_method(inp, graph, recipes, cfg.caps)
    t1 = time.perf_counter()
    rows = score_recipes(
        inp, graph, recipes, searching=cfg.recipe.strip().lower() == AUTO, caps=cfg.caps,
        range_overrides=cfg.range_overrides, provider=cfg.provider, progress=progress,
        fp32_score=float(fp32.val_top1 or 0.0),
    )  # fmt: skip
    t2 = time.perf_counter()
    within = within_budget_rows(rows, fp32, inp.budget())
    search: dict[str, Any] = {
        "calibration_passes": len(passes),
        "calibrations": [p.to_json() for p in passes],
        "calibrate_s": round(t1 - t0, 2),
        "score_s": round(t2 - t1, 2),
        "scored": len(rows),
        "timed": [r.name for r in within],
        "not_timed": {
            r.name: r.error or "outside the accuracy budget" for r in rows if r not in within
        },
        "peak_rss_mb_after_scoring": peak_rss_mb(),
        "not_searched": not_searched,
    }
    if within:
        search["latency"] = measure_against_fp32(
            fp32, within, inp.feeds(cfg.latency.batch_sizes), cfg.latency, provider=cfg.provider,
            budget_s=_race_budget(cfg.latency), race=len(within) > 1,
        )  # fmt: skip
    return rows, search


def _linear_cannot_be_faster(
    recipes: Sequence[Recipe], prepared: Path, cfg: QuantizeConfig
) -> dict[str, str]:
    """The searched '-linear' recipes (Gemm/MatMul only) on a model whose Gemm/MatMul hold
    less than `faster_margin` of its MACs, with the reason: even infinitely fast integer
    kernels there leave it below the speed-up INT8 must show (`LatencyConfig.min_speedup`),
    so they are neither calibrated, scored nor timed (ResNet-18: 0.03 % of its MACs; its 9
    such recipes cost 2 calibration passes and most of the scoring). Not when a recipe is
    named, nor when only such recipes are searched."""
    if cfg.recipe.strip().lower() != AUTO:
        return {}
    from onnxship.calibrate.coverage import matmul_mac_share

    linear = [r for r in recipes if r.scope is QuantScope.LINEAR]
    if not linear or len(linear) == len(recipes):
        return {}
    share = matmul_mac_share(prepared)
    if share is None or share >= cfg.latency.faster_margin:
        return {}
    why = (
        f"Gemm/MatMul hold {100 * share:.2f} % of the MACs: quantizing only them cannot reach "
        f"the {cfg.latency.min_speedup:.3f}x speed-up over FP32 INT8 must show"
    )
    log.info("quantize: %d '-linear' recipes not searched: %s", len(linear), why)
    return {r.name: why for r in linear}


def _race_budget(lat: LatencyConfig) -> float:
    return lat.seconds_per_batch_size * len(lat.batch_sizes)


# --------------------------------------------------------------------------------------------
# Phase 4: the accuracy fallback


def _fallback(
    inp: Inputs,
    graph: PreparedGraph,
    fp32: Candidate,
    rows: Sequence[Candidate],
    cfg: QuantizeConfig,
) -> tuple[list[Candidate], dict[str, Any] | None]:
    """Leave the most sensitive nodes in float, starting from the recipes closest to the
    budget (the best scores: nothing outside the budget was timed); stop at the first result
    within the budget, and time that one against FP32. Recipes already within the budget
    are not started from (`fallback_needed`: they are there, just not faster)."""
    fp32_top1 = float(fp32.val_top1 or 0.0)
    within = within_budget_rows(rows, fp32, inp.budget())
    ok = [r for r in rows if r.error is None and r not in within]
    out: list[Candidate] = []
    for j, base in enumerate(sorted(ok, key=lambda r: -(r.val_top1 or 0.0))):
        if j >= cfg.fallback_recipes:
            break
        assert base.recipe is not None
        result = fallback_to_float(
            graph.prepared, base.recipe, inp.calib,
            evaluate=lambda path: inp.evaluate(_eval_session(path, cfg)),
            fp32_top1=fp32_top1, max_drop=inp.budget(), base_excluded=graph.user_excluded,
            scratch=graph.scratch, cache_dir=graph.cache_dir, caps=cfg.caps,
            range_overrides=cfg.range_overrides, max_float_nodes=cfg.max_float_nodes,
            probes=cfg.probes, tag=f"fb{j}", metric=inp.metric,
        )  # fmt: skip
        if result.path is None:
            continue
        fb = Candidate(base.recipe, f"{base.name}+fallback", result.path,
                        base.float_nodes + result.float_nodes)  # fmt: skip
        fb.val_top1 = result.val_top1
        fb.fallback = {
            "from": base.name,
            "sensitivity": result.sensitivity,
            "steps": result.steps,
            "within_budget": result.within_budget,
        }
        out.append(fb)
        if _no_integer_macs(result.path):  # e.g. a '-linear' recipe with its Gemm put back
            fb.error = (
                "every node the recipe quantizes was left in float: no multiply-accumulate "
                "runs in an integer kernel, so this is not an INT8 model (verify refuses one)"
            )
            log.info("fallback %s: %s", fb.name, fb.error)
            continue
        if result.within_budget:
            break
    within = within_budget_rows(out, fp32, inp.budget())
    timing = None
    if within:
        timing = measure_against_fp32(
            fp32, within, inp.feeds(cfg.latency.batch_sizes), cfg.latency, provider=cfg.provider,
            budget_s=_race_budget(cfg.latency), race=len(within) > 1,
        )  # fmt: skip
    return out, timing


def fallback_needed(
    rows: Sequence[Candidate], fp32: Candidate, cfg: QuantizeConfig, budget: float
) -> bool:
    """Run the accuracy fallback when no recipe is within the budget, or when the only ones
    within it quantize just Gemm/MatMul ('-linear' scope) and none is confidently faster than
    FP32 while recipes quantizing every op were scored outside it: on a convolutional network
    (ResNet-18: 0.03 % of its MACs in the Gemm) those cannot be faster, and a full recipe with
    a few sensitive nodes in float can be (ResNet-18 at 224x224, 64 val images: one conv in
    float held the budget at 3.5x FP32, where every full recipe lost an image)."""
    within = within_rows(rows, fp32, cfg, budget)
    if not within:
        return True
    if any(faster(r, cfg.latency) for r in within):
        return False
    linear_only = all(r.recipe is not None and r.recipe.scope is QuantScope.LINEAR for r in within)
    full_scored = any(
        r.recipe is not None and r.recipe.scope is QuantScope.ALL and r.error is None for r in rows
    )
    return linear_only and full_scored


def _no_integer_macs(path: Path) -> bool:
    """True when no Conv/Gemm/MatMul of the model runs in an integer kernel (every MAC was
    counted: `calibrate.coverage`, the measure `verify` holds an INT8 file to)."""
    from onnxship.calibrate.coverage import integer_mac_share

    coverage = integer_mac_share(path)
    return not coverage["integer_macs"] and not coverage.get("nodes_without_shapes")


# --------------------------------------------------------------------------------------------
# Phase 6: confirm


def _confirm(
    chosen: Candidate, fp32: Candidate, inp: Inputs, cfg: QuantizeConfig
) -> tuple[Candidate, dict[str, Any]]:
    """Re-time the winner against FP32 alone, at the batch sizes the race timed: the race's
    best is optimistically biased. Its CIs decide `int8_faster_than_fp32`."""
    assert chosen.recipe is not None
    confirm = Candidate(chosen.recipe, chosen.name, chosen.path, chosen.float_nodes)
    confirm_fp32 = Candidate(None, FP32_ROW, fp32.path, [])
    batches = tuple(timed_batches(chosen, cfg.latency)) or cfg.latency.batch_sizes
    lat = dataclasses.replace(cfg.latency, batch_sizes=batches)
    # the configured batch sizes' budget: what a skipped batch size did not spend goes here
    budget_s = (
        cfg.latency.seconds_per_batch_size
        * cfg.latency.confirm_share
        * len(cfg.latency.batch_sizes)
    )
    info = measure_against_fp32(
        confirm_fp32,
        [confirm],
        inp.feeds(batches),
        lat,
        provider=cfg.provider,
        budget_s=budget_s,
        race=False,
    )
    return confirm, info


# --------------------------------------------------------------------------------------------
# Phase 7: the files (the stage record is `calibrate.quantize_record`)


def _write_outputs(
    inp: Inputs,
    chosen: Candidate,
    cfg: QuantizeConfig,
    out: Path,
    calib_out: str | os.PathLike[str] | None,
) -> None:
    """Phase 7: the INT8 model and its calibration set appear together or not at all."""
    pair = (
        atomic_companion(calib_out, inp.calib.to_npz_bytes(), primary=out)
        if calib_out is not None
        else contextlib.nullcontext()
    )
    if chosen.recipe is None:  # choose_recipe never picks the FP32 row
        raise CalibrateError(f"{inp.src}: no INT8 recipe was chosen")
    with pair:
        write_int8(
            chosen.path, out, inp.src_meta, src_sha=inp.src_sha, mean=inp.mean, std=inp.std,
            recipe=chosen.recipe, recipe_name=chosen.name,
            strip_node_metadata=cfg.strip_node_metadata,
        )  # fmt: skip
