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
import enum
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxship.calibrate.calibration_data import CalibrationConfig
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
from onnxship.calibrate.ort_static import HistogramCaps, RangeOverride
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
    recipes_for,
)
from onnxship.calibrate.selection import (
    budget_text,
    choose_recipe,
    within_budget_rows,
    within_rows,
)
from onnxship.core.artifact import Artifact, atomic_companion, jsonable
from onnxship.core.errors import OnnxshipError
from onnxship.core.flags import (
    Flag,
    flag,
    float_list,
    fraction,
    int_list,
    nested,
    positive_float,
    positive_int,
)

log = logging.getLogger(__name__)

STAGE = "quantize"


class LatencyStatistic(enum.Enum):
    MIN = "min"  # robust to preemption on a shared machine (the default)
    P50 = "p50"  # the median; use on a quiet, dedicated machine


@dataclass(frozen=True)
class LatencyConfig:
    """How the candidates within the accuracy budget are timed against FP32 on the target
    provider, with the timing engine (`runtime_bench.timing`: block-interleaved rounds,
    bootstrap CIs over rounds, racing).

    seconds_per_batch_size: the time budget of the race per batch size (the engine holds it
      within 20 %); the winner's re-run against FP32 gets `confirm_share` of it again. The whole
      latency part of the search is bounded by (1 + confirm_share) x this x the batch sizes;
      what a skipped batch size does not spend goes to the timed ones.
    min_iterations: rounds before a CI is trusted (the engine's `min_rounds`); a floor that
      never overrides the budget. A batch size larger than the smallest is skipped (and the
      record says so) when this many rounds of every candidate would not fit its share of the
      budget, estimated from the FP32 model's measured cost per sample.
    max_iterations: at most this many rounds per batch size.
    block: calls per model per round, the first untimed.
    warmup: untimed calls per model before the first round.
    faster_margin: INT8 counts as faster than FP32 only when the lower bound of the CI of its
      speed-up clears 1 / (1 - margin) at every timed batch size (`decide_faster`).
    """

    batch_sizes: tuple[int, ...] = (1, 64)
    threads: int = 1
    warmup: int = 1
    seconds_per_batch_size: float = 5.0
    min_iterations: int = 5
    max_iterations: int = 400
    statistic: LatencyStatistic = LatencyStatistic.MIN
    faster_margin: float = 0.02
    block: int = 4
    confirm_share: float = 1.0
    ci_level: float = 0.95
    target_rel_ci: float = 0.05

    def validate(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise CalibrateError(f"latency batch sizes must be >= 1, got {self.batch_sizes}")
        if self.threads < 0:
            raise CalibrateError(
                f"latency threads must be >= 0 (0 = ORT default), got {self.threads}"
            )
        if self.min_iterations < 1 or self.max_iterations < self.min_iterations:
            raise CalibrateError(
                f"latency iterations must satisfy 1 <= min ({self.min_iterations}) <= max "
                f"({self.max_iterations})"
            )
        if not 0 <= self.faster_margin < 1:
            raise CalibrateError(f"faster_margin must be in [0, 1), got {self.faster_margin}")
        if not self.seconds_per_batch_size > 0 or not 0 < self.confirm_share <= 1:
            raise CalibrateError(
                "latency budget: seconds_per_batch_size must be > 0 and confirm_share in (0, 1], "
                f"got {self.seconds_per_batch_size} and {self.confirm_share}"
            )
        self.timing(1.0)  # the engine checks block, warm-up, CI level and target

    @property
    def min_speedup(self) -> float:
        """The speed-up over FP32 the CI's lower bound must clear to call INT8 faster."""
        return 1.0 / (1.0 - self.faster_margin)

    def timing(self, budget_s: float) -> Any:
        """The engine's config for one timed run of `budget_s` seconds."""
        from onnxship.runtime_bench.timing import TimingConfig

        try:
            return TimingConfig(
                block=self.block, min_rounds=self.min_iterations, max_rounds=self.max_iterations,
                budget_s=budget_s, ci_level=self.ci_level, target_rel_ci=self.target_rel_ci,
                statistic=self.statistic.value, warmup=self.warmup,
                race_after_rounds=self.min_iterations,
            )  # fmt: skip
        except OnnxshipError as exc:
            raise CalibrateError(f"latency settings: {exc}") from exc


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything the quantize stage does, typed (the stage record stores it as JSON).

    recipe: "auto" (search the presets) or one recipe name (see `calibrate.recipes`).
    provider: target EP for accuracy and latency ('cpu', 'cuda' or an ORT EP name).
    max_drop: accuracy budget, FP32 val top-1 minus INT8 val top-1 (0.003 = 0.3 pp); without
      labels, 1 minus INT8's top-1 agreement with FP32.
    min_sqnr_db: the budget without labels for a model whose output is not class scores:
      INT8's output SQNR vs FP32 on the evaluation set, in dB.
    exclude_nodes / exclude_op_types: always left in float (names after quant_pre_process).
    mean / std: override the normalisation (needed when the model has no onnxship metadata).
    fallback: run the accuracy fallback when no recipe meets the budget.
    require_faster: fail (exit 1, nothing written) when no INT8 recipe within budget is faster
      than FP32 at every batch size; by default the least slow one is written and the record
      says `int8_faster_than_fp32: false`.
    max_float_nodes / probes / fallback_recipes: bounds of the fallback's work.
    range_overrides: force calibration ranges of named tensors (experts and tests).
    flatten_reshapes: apply `calibrate.graph_prep.reshape_to_flatten` (exact; see there).
    portable: search only recipes exact on every x86 integer class (reduce_range or U8U8), for
      a target CPU that is unknown; by default the grid is the one exact on this CPU's class.
    strip_node_metadata: drop per-node metadata_props / doc_string from the INT8 file (the
      exporter's Python stack traces, with build-machine paths: ~5 kB, 10 % of a student INT8
      file); the model-level metadata is always kept.
    """

    # fmt: off
    recipe: str = field(default=AUTO, metadata=flag(
        "--recipe", "'auto' (search, the default) or a recipe name"))
    provider: str = field(default="cpu", metadata=flag(
        "--provider", "target EP for accuracy and latency: cpu, cuda or an EP name "
        "(default: {default})"))
    max_drop: float = field(default=0.003, metadata=flag(
        "--max-drop", "accuracy budget: FP32 minus INT8 validation top-1, as a fraction "
        "(default: {default} = 0.3 pp)", type=fraction))
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig, metadata=nested(
        size=Flag("--calib-size", "calibration images from the validation split "
                  "(default: {default})", type=positive_int),
        batch_size=Flag("--calib-batch", "images per calibration batch (default: {default})",
                        type=positive_int)))
    caps: HistogramCaps = field(default_factory=HistogramCaps)
    latency: LatencyConfig = field(default_factory=LatencyConfig, metadata=nested(
        batch_sizes=Flag("--batch-sizes", "batch sizes of the latency comparison "
                         "(default: {default})", type=int_list),
        threads=Flag("--threads", "intra-op threads of the latency comparison "
                     "(default: {default})", type=positive_int),
        seconds_per_batch_size=Flag(
            "--bench-seconds", "latency budget per batch size, in seconds: the race of the "
            "candidates within the accuracy budget against FP32, plus as much again for the "
            "winner's re-run; a batch size that does not fit is skipped and said in the record "
            "(default: {default})", type=positive_float)))
    exclude_nodes: tuple[str, ...] = field(default=(), metadata=flag(
        "--exclude-node", "keep this node in float (repeatable)", action="append",
        metavar="NODE"))
    exclude_op_types: tuple[str, ...] = field(default=(), metadata=flag(
        "--exclude-op-type", "keep every node of this op type in float (repeatable), e.g. Conv",
        action="append", metavar="OP"))
    mean: tuple[float, ...] | None = field(default=None, metadata=flag(
        "--mean", "input mean per channel", type=float_list))
    std: tuple[float, ...] | None = field(default=None, metadata=flag(
        "--std", "input std per channel", type=float_list))
    fallback: bool = field(default=True, metadata=flag(
        "--no-fallback", "do not keep sensitive nodes in float when no recipe meets the budget",
        action="store_true", invert=True))
    require_faster: bool = field(default=False, metadata=flag(
        "--require-faster", "exit 1 (writing nothing) if no INT8 recipe beats FP32 at every "
        "batch size", action="store_true"))
    # fmt: on
    max_float_nodes: int = 4
    probes: int = 8
    fallback_recipes: int = 2
    range_overrides: tuple[RangeOverride, ...] = ()
    flatten_reshapes: bool = True
    strip_node_metadata: bool = True
    eval_batch: int = 500
    # fmt: off
    min_sqnr_db: float = field(default=30.0, metadata=flag(
        "--min-sqnr", "budget without labels for outputs that are not class scores: INT8 output "
        "SQNR vs FP32, in dB (default: {default:g})", type=positive_float, metavar="DB"))
    portable: bool = field(default=False, metadata=flag(
        "--portable", "search only recipes exact on every x86 integer class (reduce_range or "
        "U8U8), for an unknown target CPU; by default the grid is the one exact on this CPU's "
        "class", action="store_true"))
    # fmt: on

    def validate(self) -> None:
        recipe_grid(self)  # raises on an unknown name (listing the known ones) or not portable
        if not 0 <= self.max_drop < 1:
            raise CalibrateError(
                f"accuracy budget max_drop must be a fraction in [0, 1), got {self.max_drop}"
            )
        self.calibration.validate()
        self.caps.validate()
        self.latency.validate()
        if (self.mean is None) != (self.std is None):
            raise CalibrateError("pass both --mean and --std (per channel), or neither")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std) or not self.mean:
                raise CalibrateError(
                    f"--mean has {len(self.mean)} values and --std {len(self.std)}; give one "
                    "value per input channel to each"
                )
            if any(not s > 0 for s in self.std):
                raise CalibrateError(f"--std values must be > 0, got {list(self.std)}")
        if not 0 < self.min_sqnr_db < 140:
            raise CalibrateError(
                f"min_sqnr_db must be in (0, 140) dB, got {self.min_sqnr_db}; 30 dB = an RMS "
                "error of 3 % of the output's RMS"
            )
        for name in ("max_float_nodes", "probes", "fallback_recipes", "eval_batch"):
            if getattr(self, name) < 1:
                raise CalibrateError(f"{name} must be >= 1, got {getattr(self, name)}")


def recipe_grid(cfg: QuantizeConfig) -> tuple[Recipe, ...]:
    """The recipes this run tries: `auto` -> the grid exact on this CPU's integer class (every
    x86 class with `portable`, `calibrate.recipes.auto_grid`); a name -> that recipe."""
    from onnxship.core.env import integer_class

    return recipes_for(cfg.recipe, integer_class(), portable=cfg.portable)


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
