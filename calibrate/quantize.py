"""The quantize stage: FP32 .onnx -> static INT8 .onnx, accuracy-aware and tuned per target EP.

`int8_from_onnx(src, cfg, out_path)`:

1. Calibration set from the validation part of MNIST's training split (or a user's .npz),
   preprocessed with the normalisation stored in the model's metadata; the evaluation set
   (`calibrate.dataset.EvaluationSet`) from the rest of that validation part, or from a
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
   The selection rule (`choose_recipe`): the fastest timed candidate, i.e. the lowest geometric
   mean over the timed batch sizes of its latency ratio to FP32 (`speed_score`). If none is
   within budget, the accuracy fallback (`calibrate.fallback`) leaves the most sensitive nodes
   in float, starting from the recipes with the best scores, and the same rule chooses.
5. The winner is re-timed against FP32 alone (the race's best is optimistic), written with the
   source's metadata (`onnxship.precision` = "int8", `onnxship.source_sha256` = the FP32
   file's sha256). INT8 ships as faster than FP32 (`int8_faster_than_fp32`) only when the
   lower bound of its speed-up's CI clears `LatencyConfig.min_speedup` at every timed batch
   size (`runtime_bench.timing.decide_faster`); the record cites the CIs, the calibration
   passes, the time of each phase and the peak resident memory.

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
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.calibrate.dataset import (
    CalibrationConfig,
    CalibrationSet,
    EvaluationSet,
    InputSpec,
    calibration_set_from_mnist,
    calibration_set_from_npz,
    evaluation_set_from_mnist,
    evaluation_set_from_npz,
    input_specs_of,
)
from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.fallback import (
    BUDGET_SLACK,
    METRIC_WORDS,
    drop_text,
    fallback_to_float,
    score_text,
    within_budget,
)
from onnxship.calibrate.graph_prep import cap_opset, ort_max_qdq_opset, reshape_to_flatten
from onnxship.calibrate.ort_static import (
    HistogramCaps,
    RangeOverride,
    node_table,
    preprocess_model,
    quantize_with_recipe,
    resolve_exclusions,
)
from onnxship.calibrate.recipes import (
    AUTO,
    LINEAR_OPS,
    SATURATING_CLASSES,
    QuantFormatChoice,
    QuantScope,
    Recipe,
    parse_recipe,
    recipes_for,
)
from onnxship.core import model_meta
from onnxship.core.artifact import (
    Artifact,
    atomic_companion,
    atomic_output,
    jsonable,
    sha256_file,
)
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
RECIPE_KEY = "onnxship.quant_recipe"  # extra metadata key on the INT8 model
# Where the INT8 file was validated and where its recipe is exact (metadata on the INT8 model).
VALIDATED_CLASS_KEY = "onnxship.integer_class"  # the integer class accuracy was measured on
SAFE_CLASSES_KEY = "onnxship.safe_integer_classes"  # JSON list: classes the recipe is exact on
RISK_KEY = "onnxship.quant_risk"  # the recipe's risk elsewhere, in words
FP32_ROW = "fp32"


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
        from onnxship.core.errors import OnnxshipError
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


# --------------------------------------------------------------------------------------------
# Sessions, accuracy and latency


def _session(path: Path, cfg: QuantizeConfig, *, threads: int | None = None) -> Any:
    from onnxship.runtime_bench.session import SessionConfig, create_session

    n = cfg.latency.threads if threads is None else threads
    return create_session(path, cfg.provider, SessionConfig(intra_op_threads=n))


def _eval_session(path: Path, cfg: QuantizeConfig) -> Any:
    """A session for scoring: ORT's default threads (scoring is not a latency measurement)."""
    return _session(path, cfg, threads=0)


@dataclass
class _Candidate:
    recipe: Recipe | None  # None for the FP32 row
    name: str
    path: Path
    float_nodes: list[dict[str, Any]]
    val_top1: float | None = None
    session: Any = None
    error: str | None = None
    quantize_s: float = 0.0
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    fallback: dict[str, Any] | None = None
    scored_on: int | None = None  # samples scored (fewer: stopped once outside the budget)
    screened_out: str | None = None  # within the budget but cut before the latency race


def _runner(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    def run() -> object:
        return session.run(None, feed)

    return run


def _probe_s(fn: Callable[[], object]) -> float:
    """Seconds of one call (after one warm-up call)."""
    fn()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_against_fp32(
    fp32: _Candidate,
    candidates: Sequence[_Candidate],
    feeds: dict[int, dict[str, np.ndarray]],
    lat: LatencyConfig,
    *,
    cfg: QuantizeConfig,
    budget_s: float,
    race: bool,
) -> dict[str, Any]:
    """Time FP32 and `candidates` with the timing engine at each batch size, smallest first,
    within `budget_s` in all (shared evenly by the batch sizes still to time); fill `.latency`
    and return what the record says about the run (rounds, stop reasons, raced-out and
    skipped batch sizes). Sessions are created here and released at the end, so only the
    timed models hold memory, and only for the timed batch sizes."""
    from onnxship.runtime_bench.timing import time_blocks

    rows = [fp32, *candidates]
    sessions = {row.name: _session(row.path, cfg) for row in rows}
    info: dict[str, Any] = {"budget_s": round(budget_s, 3), "by_batch": {}, "skipped": {}}
    started = time.perf_counter()
    try:
        smallest = min(lat.batch_sizes)
        per_sample_s = _probe_s(_runner(sessions[fp32.name].session, feeds[smallest])) / smallest
        kept = _batches_that_fit(lat, budget_s, per_sample_s, len(rows), info["skipped"])
        for i, batch in enumerate(kept):
            share = max(budget_s - (time.perf_counter() - started), 0.0) / (len(kept) - i)
            t_batch = time.perf_counter()
            fns = {name: _runner(sess.session, feeds[batch]) for name, sess in sessions.items()}
            screened = _prescreen(fns, fp32.name, batch, per_sample_s, share, lat) if race else {}
            for name in screened:
                del fns[name]
            share -= time.perf_counter() - t_batch
            result = time_blocks(fns, lat.timing(max(share, 1e-3)), reference=fp32.name, race=race)
            _fill_latency([r for r in rows if r.name in fns], batch, result, lat)
            for r in rows:
                if r.name in screened:
                    r.screened_out = screened[r.name]
            info["by_batch"][str(batch)] = {
                "rounds": result.models[fp32.name].n_rounds,
                "stop_reason": result.stop_reason,
                "wall_s": round(time.perf_counter() - t_batch, 3),
                "dropped": {**screened, **result.dropped},
                "notes": list(result.notes),
            }
    finally:
        sessions.clear()
    info["wall_s"] = round(time.perf_counter() - started, 3)
    return info


def _prescreen(
    fns: dict[str, Callable[[], object]],
    reference: str,
    batch: int,
    per_sample_s: float,
    share_s: float,
    lat: LatencyConfig,
) -> dict[str, str]:
    """Successive halving's first cut: when `min_iterations` rounds of every model would not
    fit `share_s`, time one round of each (block-interleaved, the engine) and keep only the
    fastest that fit; return the others with the reason. Nothing is cut when all fit."""
    from onnxship.runtime_bench.timing import time_blocks

    model_round_s = per_sample_s * batch * lat.block
    if len(fns) * model_round_s * lat.min_iterations <= share_s:
        return {}
    # the screening round: one untimed and one timed call per model
    left = share_s - len(fns) * per_sample_s * batch * 2
    keep = max(2, int(left / (model_round_s * lat.min_iterations)))  # FP32 + at least one
    if keep >= len(fns):
        return {}
    one = dataclasses.replace(lat, min_iterations=1, max_iterations=1, warmup=0, block=2)
    result = time_blocks(fns, one.timing(max(share_s, 1e-3)), reference=reference)
    stat = lat.statistic.value
    ranked = sorted(
        (n for n in fns if n != reference),
        key=lambda n: result.models[n].min_ms if stat == "min" else result.models[n].mean_ms,
    )
    return {
        name: (
            f"screened out at batch {batch}: {lat.min_iterations} rounds of all {len(fns)} "
            f"models would not fit the {share_s:.1f} s share of the latency budget, so one round "
            f"of each was timed and the {keep - 1} fastest raced on; this one ranked "
            f"{i + keep} of {len(fns) - 1}"
        )
        for i, name in enumerate(ranked[keep - 1 :])
    }


def _batches_that_fit(
    lat: LatencyConfig, budget_s: float, per_sample_s: float, n_models: int, skipped: dict
) -> list[int]:
    """The batch sizes to time, smallest first: the smallest always; a larger one only when
    `min_iterations` rounds of every model fit its share of the budget (the cost estimated
    from FP32's measured time per sample at the smallest batch). The others go in `skipped`
    with the reason."""
    batches = sorted(lat.batch_sizes)
    kept = [batches[0]]
    for batch in batches[1:]:
        share = budget_s / (len(kept) + 1)
        need_s = per_sample_s * batch * n_models * lat.block * lat.min_iterations
        if need_s > share:
            skipped[str(batch)] = (
                f"{lat.min_iterations} rounds of {n_models} models at batch {batch} need "
                f"~{need_s:.1f} s (FP32 ~{per_sample_s * batch * 1e3:.0f} ms a call), more than "
                f"its {share:.1f} s share of the {budget_s:.1f} s latency budget; raise "
                "--bench-seconds to time it"
            )
            log.info("latency: batch %d skipped: %s", batch, skipped[str(batch)])
        else:
            kept.append(batch)
    return kept


def _fill_latency(rows: Sequence[_Candidate], batch: int, result: Any, lat: LatencyConfig) -> None:
    """One row's latency at `batch`: the engine's speed-up over FP32 with its CI, and the
    time ratios (candidate / FP32, lower is faster) that the selection rule uses."""
    base = result.models[rows[0].name]
    for row in rows:
        m = result.models[row.name]
        entry: dict[str, Any] = {
            "p50_ms": _r5(m.p50.value_ms),
            "min_ms": _r5(m.min_ms),
            "p90_ms": _r5(m.p90.value_ms),
            "fp32_p50_ms": _r5(base.p50.value_ms),
            "fp32_min_ms": _r5(base.min_ms),
            "p50_ratio": _r5(m.p50.value_ms / base.p50.value_ms, 4),
            "min_ratio": _r5(m.min_ms / base.min_ms, 4),
            "rounds": m.n_rounds,
            "calls": m.n_calls,
        }
        ratio = result.ratios.get(row.name)
        if ratio is not None:
            entry["speedup"] = _r5(ratio.ratio, 4)
            entry["speedup_ci"] = [_r5(ratio.ci[0], 4), _r5(ratio.ci[1], 4)]
            entry["ci_level"] = ratio.ci_level
            # the selection rule's ratio is the engine's, for the configured statistic
            entry[f"{lat.statistic.value}_ratio"] = _r5(1.0 / ratio.ratio, 4)
        if row.name in result.dropped:
            entry["raced_out"] = result.dropped[row.name]
        row.latency[str(batch)] = entry


def _r5(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(float(value), digits)


def _timed_batches(row: _Candidate, lat: LatencyConfig) -> list[int]:
    return [b for b in lat.batch_sizes if str(b) in row.latency]


def _ratio(row: _Candidate, batch: int, lat: LatencyConfig) -> float:
    return row.latency[str(batch)][f"{lat.statistic.value}_ratio"]


def speed_score(row: _Candidate, lat: LatencyConfig) -> float:
    """Geometric mean over the timed batch sizes of INT8/FP32 latency (lower is faster); the
    speed half of the selection rule (`choose_recipe`)."""
    ratios = [_ratio(row, b, lat) for b in _timed_batches(row, lat)]
    if not ratios:
        return math.inf
    return float(math.exp(sum(math.log(r) for r in ratios) / len(ratios)))


def _faster(row: _Candidate, lat: LatencyConfig) -> bool:
    """The INT8-ships decision: at every timed batch size the lower bound of the speed-up's CI
    clears `lat.min_speedup` (`runtime_bench.timing.decide_faster`)."""
    from onnxship.runtime_bench.timing import Ratio, decide_faster

    timed = _timed_batches(row, lat)
    if not timed:
        return False
    for b in timed:
        e = row.latency[str(b)]
        if "speedup_ci" not in e:
            return False
        r = Ratio(row.name, FP32_ROW, e["speedup"], tuple(e["speedup_ci"]), lat.statistic.value)
        if not decide_faster(r, lat.min_speedup):
            return False
    return True


# --------------------------------------------------------------------------------------------
# Inputs: metadata, calibration and evaluation data


def _source_metadata(src: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(os.fspath(src), load_external_data=False)
    return model_meta.metadata_of_proto(model)


def _normalisation(
    raw: dict[str, str], cfg: QuantizeConfig, src: Path
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    from onnxship.core.dataset import require_mnist_data
    from onnxship.core.errors import CoreError
    from onnxship.core.model_meta import parse_meta

    if cfg.mean is not None and cfg.std is not None:
        return tuple(cfg.mean), tuple(cfg.std), "override (--mean/--std)"
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
    data_dir: str | os.PathLike[str] | None,
    calib: CalibrationSet,
    specs: Sequence[InputSpec],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    val_npz: str | os.PathLike[str] | None,
    cfg: QuantizeConfig,
) -> EvaluationSet:
    """What the budget is measured on: the user's --val-npz, else MNIST validation images
    not used for calibration."""
    if val_npz is not None:
        return evaluation_set_from_npz(val_npz, specs, batch_size=cfg.eval_batch)
    from onnxship.core import mnist

    assert mean is not None and std is not None
    spec = _single(specs, "the accuracy budget on MNIST")
    root = mnist.resolve_data_root(data_dir)
    return evaluation_set_from_mnist(root, calib, spec, mean, std, batch_size=cfg.eval_batch)


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
    cfg: QuantizeConfig,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    data_dir: str | os.PathLike[str] | None,
    calib_npz: str | os.PathLike[str] | None,
) -> CalibrationSet:
    if calib_npz is not None:
        return calibration_set_from_npz(calib_npz, specs, cfg.calibration)
    from onnxship.core import mnist

    assert mean is not None and std is not None
    spec = _single(specs, "MNIST calibration")
    return calibration_set_from_mnist(
        mnist.resolve_data_root(data_dir), spec, mean, std, cfg.calibration
    )


# --------------------------------------------------------------------------------------------
# Output


def _write_int8(
    chosen: Path,
    out_path: Path,
    src_meta: dict[str, str],
    *,
    src_sha: str,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    recipe: Recipe,
    recipe_name: str,
    strip_node_metadata: bool,
) -> None:
    """Copy `chosen` to `out_path` (atomic, self-contained) with the source's metadata, the
    recipe, the integer class it was validated on and the classes the recipe is exact on."""
    import json

    import onnx

    from onnxship.core.env import integer_class

    model = onnx.load(os.fspath(chosen))
    meta = dict(src_meta)
    if mean is not None and std is not None:  # None: npz data, preprocessed by the user
        meta[model_meta.INPUT_MEAN] = json.dumps([float(v) for v in mean])
        meta[model_meta.INPUT_STD] = json.dumps([float(v) for v in std])
        meta.setdefault(model_meta.INPUT_PREPROCESS, model_meta.PREPROCESS_TEXT)
    meta[model_meta.PRECISION] = "int8"
    meta[model_meta.SOURCE_SHA256] = src_sha
    meta[RECIPE_KEY] = recipe_name
    meta[VALIDATED_CLASS_KEY] = integer_class()
    meta[SAFE_CLASSES_KEY] = json.dumps(recipe.safe_integer_classes())
    meta[RISK_KEY] = recipe.risk
    if strip_node_metadata:
        for node in model.graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
    model_meta.set_metadata(model, meta, replace_all=True)
    drop_unused_opset_imports(model)
    with atomic_output(out_path) as tmp:
        onnx.save_model(model, os.fspath(tmp), save_as_external_data=False)


def _node_domains(graph: Any) -> set[str]:
    """Domains of every node of `graph`, its subgraphs (If/Loop/Scan bodies) included."""
    domains: set[str] = set()
    for node in graph.node:
        domains.add(node.domain)
        for attr in node.attribute:
            if attr.HasField("g"):
                domains |= _node_domains(attr.g)
            for sub in attr.graphs:
                domains |= _node_domains(sub)
    return domains


def drop_unused_opset_imports(model: Any) -> list[str]:
    """Remove opset imports of domains no node uses; return their names.

    ORT's optimizer (the quantizer's pre-processing) saves a model importing every domain it
    knows (ai.onnx.training, com.microsoft.nchwc, org.pytorch.aten, ...), used or not; an
    older onnxruntime on the deployment machine need not know those domain versions. The
    default domain and the domains of local functions stay."""
    used = _node_domains(model.graph) | {"", "ai.onnx"}
    for fn in model.functions:
        used.add(fn.domain)
        used |= {n.domain for n in fn.node}
    kept = [o for o in model.opset_import if o.domain in used]
    dropped = [o.domain for o in model.opset_import if o.domain not in used]
    if dropped:
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return dropped


def _row_json(
    row: _Candidate,
    fp32: _Candidate,
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
        timed = bool(_timed_batches(row, cfg.latency))
        out["timed"] = timed
        out["speed_score"] = round(speed_score(row, cfg.latency), 4) if timed else None
        # None: not timed (outside the accuracy budget, or failed): cheap checks first
        out["faster_than_fp32"] = _faster(row, cfg.latency) if timed else None
    if row.screened_out:
        out["screened_out"] = row.screened_out
    if row.error:
        out["error"] = row.error
    if row.fallback:
        out["fallback"] = row.fallback
    return out


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
) -> Artifact:
    """Quantize the FP32 model `src` to static INT8 at `out_path` (see the module docstring).

    Phases: `_load_inputs` (metadata, calibration and validation data), `_prepare_graph`
    (pre-processing in a scratch folder), `_search` (every recipe quantized, scored and timed),
    `_fallback` (only when no recipe meets the budget), `choose_recipe` (the selection rule),
    `_confirm` (the winner re-timed against FP32) and `_write_int8`.

    Writes `out_path` (and the calibration set to `calib_out` when given) only on success.
    `val_npz`: measure the budget on this dataset .npz instead of MNIST validation.
    Raises CalibrateError: bad input (exit 2); no recipe within the accuracy budget (exit 1,
    the message names the best recipe found and its drop).
    """
    started = time.perf_counter()
    cfg.validate()
    inp = _load_inputs(Path(src), cfg, data_dir, calib_npz, val_npz)
    with tempfile.TemporaryDirectory(prefix="onnxship-quantize-") as scratch_name:
        graph = _prepare_graph(inp.src, Path(scratch_name), cfg)
        fp32 = _Candidate(None, FP32_ROW, inp.src, [])
        fp32.val_top1 = inp.evalset.reference_score(
            _eval_session(inp.src, cfg), model=os.fspath(inp.src)
        )
        rows, search = _search(inp, graph, fp32, cfg, progress)
        fallback_info = None
        if cfg.fallback and not _within_rows(rows, fp32, cfg, inp.budget(cfg)):
            fallback_rows, fallback_timing = _fallback(inp, graph, fp32, rows, cfg)
            rows.extend(fallback_rows)
            fallback_info = {"ran": True, "candidates": [r.name for r in fallback_rows],
                             "latency": fallback_timing}  # fmt: skip
        chosen = choose_recipe(
            rows, fp32, cfg, src=inp.src, fallback_ran=fallback_info is not None,
            budget=inp.budget(cfg), budget_text=_budget_text(inp, cfg), metric=_metric(inp),
        )  # fmt: skip
        confirm, search["confirm"] = _confirm(chosen, fp32, inp, cfg)
        faster = _faster(confirm, cfg.latency)
        why = _why(
            confirm, faster, cfg.latency, _within_rows(rows, fp32, cfg, inp.budget(cfg)), rows
        )
        if cfg.require_faster and not faster:
            raise CalibrateError(
                f"{inp.src}: INT8 is not faster than FP32 on {inp.provider} and require_faster "
                f"is set: {why}",
                exit_code=1,
            )
        out = Path(out_path)
        # The INT8 model and its calibration set appear together or not at all.
        pair = (
            atomic_companion(calib_out, inp.calib.to_npz_bytes(), primary=out)
            if calib_out is not None
            else contextlib.nullcontext()
        )
        if chosen.recipe is None:  # choose_recipe never picks the FP32 row
            raise CalibrateError(f"{inp.src}: no INT8 recipe was chosen")
        with pair:
            _write_int8(
                chosen.path, out, inp.src_meta, src_sha=inp.src_sha, mean=inp.mean, std=inp.std,
                recipe=chosen.recipe, recipe_name=chosen.name,
                strip_node_metadata=cfg.strip_node_metadata,
            )  # fmt: skip
        table = [
            _row_json(r, fp32, cfg, inp.budget(cfg), inp.evalset.samples) for r in (fp32, *rows)
        ]
    calib_path = os.fspath(calib_out) if calib_out is not None else None
    metrics = _metrics(inp, cfg, graph, chosen, confirm, table, fallback_info, faster, why, out)
    metrics["calibration"]["path"] = calib_path
    metrics["calibration"]["passes"] = search["calibration_passes"]
    metrics["search"] = search
    metrics["search_wall_s"] = round(time.perf_counter() - started, 2)
    metrics["peak_rss_mb"] = peak_rss_mb()
    return Artifact.from_file(
        out, stage=STAGE, config=jsonable(cfg), parent_sha256=inp.src_sha, metrics=metrics
    )


# --------------------------------------------------------------------------------------------
# Phase 1: inputs (metadata, calibration set, validation set)


@dataclass
class _Inputs:
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

    def evaluate(self, session: Any, cfg: QuantizeConfig) -> float:
        """The candidate's score on the evaluation set (top-1, or fidelity to FP32)."""
        return self.evalset.score(session)

    def feeds(self, batch_sizes: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
        return _feeds(self.evalset.inputs, batch_sizes)

    def budget(self, cfg: QuantizeConfig) -> float:
        """The largest allowed FP32-score-minus-candidate-score for the evaluation set's
        metric. Known only once the FP32 reference was scored (it decides top-1 agreement
        vs output SQNR for data without labels)."""
        return self.evalset.drop_budget(cfg.max_drop, cfg.min_sqnr_db)


def _load_inputs(
    src: Path,
    cfg: QuantizeConfig,
    data_dir: str | os.PathLike[str] | None,
    calib_npz: str | os.PathLike[str] | None,
    val_npz: str | os.PathLike[str] | None,
) -> _Inputs:
    from onnxship.runtime_bench.session import check_model_file, check_provider_available

    check_model_file(src)
    provider = check_provider_available(cfg.provider)
    specs = input_specs_of(src)
    src_meta = _source_metadata(src)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    norm_source = "none: npz data is preprocessed"
    if calib_npz is None or val_npz is None:  # MNIST is involved: it needs the normalisation
        mean, std, norm_source = _normalisation(src_meta, cfg, src)
    calib = _calibration_set(specs, cfg, mean, std, data_dir, calib_npz)
    evalset = _evaluation_set(data_dir, calib, specs, mean, std, val_npz, cfg)
    return _Inputs(
        src=src, provider=provider, specs=specs, src_meta=src_meta, src_sha=sha256_file(src),
        mean=mean, std=std, norm_source=norm_source, calib=calib, evalset=evalset,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Phase 2: the graph every recipe starts from


@dataclass
class _Graph:
    scratch: Path
    cache_dir: Path  # calibration ranges, shared by every recipe with the same method
    prepared: Path
    rewrites: list[Any]
    nodes: list[tuple[str, str]]  # (name, op_type) after pre-processing
    user_excluded: list[str]
    user_rows: list[dict[str, Any]]  # nodes_in_float entries for the user's exclusions


def _prepare_graph(src: Path, scratch: Path, cfg: QuantizeConfig) -> _Graph:
    """`quant_pre_process`, the exact rewrites, and the user's exclusions resolved to names."""
    cache_dir = scratch / "ranges"
    cache_dir.mkdir()
    prepared = preprocess_model(src, scratch / "preprocessed.onnx")
    prepared, rewrites = _prepare(prepared, scratch, cfg)
    nodes = list(node_table(prepared))
    op_of = dict(nodes)
    excluded = list(
        resolve_exclusions(nodes, cfg.exclude_nodes, cfg.exclude_op_types, model=os.fspath(src))
    )
    user_rows = [
        {
            "node": n,
            "op_type": op_of[n],
            "reason": "excluded by config ("
            + ("exclude_nodes" if n in cfg.exclude_nodes else f"op type {op_of[n]}")
            + ")",
        }
        for n in excluded
    ]
    return _Graph(scratch, cache_dir, prepared, rewrites, nodes, excluded, user_rows)


# --------------------------------------------------------------------------------------------
# Phase 3: the search - calibrate once per method, score every recipe, time only the survivors


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (`resource`; Linux reports KiB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _calibrate(
    inp: _Inputs, graph: _Graph, recipes: Sequence[Recipe], cfg: QuantizeConfig
) -> list[Any]:
    """One calibration pass per method the recipes use, over the widest scope they need."""
    from onnxship.calibrate.ort_static import calibrate_ranges, calibration_scopes

    return [
        calibrate_ranges(
            graph.prepared, method, scope, inp.calib, cache_dir=graph.cache_dir, caps=cfg.caps
        )
        for method, scope in calibration_scopes(recipes).items()
    ]


def _score_recipes(
    inp: _Inputs,
    graph: _Graph,
    recipes: Sequence[Recipe],
    cfg: QuantizeConfig,
    progress: bool,
    fp32_score: float,
) -> list[_Candidate]:
    """Quantize (from the cached ranges) and score every recipe; each scoring session is
    released before the next recipe. A failing recipe is a row with its error while
    searching; with one recipe named, its failure is the stage's error."""
    searching = cfg.recipe.strip().lower() == AUTO
    # below this score a candidate is outside the budget; scoring stops once it cannot reach it
    floor = fp32_score - inp.budget(cfg) - BUDGET_SLACK
    rows: list[_Candidate] = []
    bar = _progress(len(recipes), progress)
    for i, recipe in enumerate(recipes):
        row = _Candidate(recipe, recipe.name, graph.scratch / f"cand-{i}.onnx",
                         graph.user_rows + _scope_rows(recipe, graph.nodes, graph.user_excluded))  # fmt: skip
        t0 = time.perf_counter()
        try:
            quantize_with_recipe(
                graph.prepared, row.path, recipe, inp.calib, cache_dir=graph.cache_dir,
                nodes_to_exclude=graph.user_excluded, caps=cfg.caps,
                range_overrides=cfg.range_overrides,
            )  # fmt: skip
            row.quantize_s = time.perf_counter() - t0
            row.val_top1, row.scored_on = inp.evalset.score_screened(
                _eval_session(row.path, cfg), floor
            )
        except OnnxshipError as exc:  # CalibrateError, or BenchError from the session
            if not searching:
                raise
            row.error = str(exc)
            log.warning("recipe %s failed: %s", recipe.name, exc)
        rows.append(row)
        bar.update(1)
    bar.close()
    if all(r.error is not None for r in rows):
        raise CalibrateError(
            f"every recipe failed to quantize {inp.src}: "
            + "; ".join(f"{r.name}: {r.error}" for r in rows)
        )
    return rows


def _search(
    inp: _Inputs, graph: _Graph, fp32: _Candidate, cfg: QuantizeConfig, progress: bool
) -> tuple[list[_Candidate], dict[str, Any]]:
    """Cheap first: calibrate once per method, score every recipe, then race only the
    recipes within the accuracy budget against FP32 (`measure_against_fp32`)."""
    recipes = recipe_grid(cfg)
    t0 = time.perf_counter()
    passes = _calibrate(inp, graph, recipes, cfg)
    t1 = time.perf_counter()
    rows = _score_recipes(inp, graph, recipes, cfg, progress, float(fp32.val_top1 or 0.0))
    t2 = time.perf_counter()
    within = _within_budget_rows(rows, fp32, inp.budget(cfg))
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
    }
    if within:
        search["latency"] = measure_against_fp32(
            fp32, within, inp.feeds(cfg.latency.batch_sizes), cfg.latency, cfg=cfg,
            budget_s=_race_budget(cfg.latency), race=len(within) > 1,
        )  # fmt: skip
    return rows, search


def _race_budget(lat: LatencyConfig) -> float:
    return lat.seconds_per_batch_size * len(lat.batch_sizes)


def _within_budget_rows(
    rows: Sequence[_Candidate], fp32: _Candidate, budget: float
) -> list[_Candidate]:
    """Scored rows within the accuracy budget (timed or not)."""
    fp32_top1 = float(fp32.val_top1 or 0.0)
    return [r for r in rows if r.error is None and within_budget(fp32_top1, r.val_top1, budget)]


# --------------------------------------------------------------------------------------------
# Phase 4: the accuracy fallback


def _fallback(
    inp: _Inputs, graph: _Graph, fp32: _Candidate, rows: Sequence[_Candidate], cfg: QuantizeConfig
) -> tuple[list[_Candidate], dict[str, Any] | None]:
    """Leave the most sensitive nodes in float, starting from the recipes closest to the
    budget (the best scores: nothing outside the budget was timed); stop at the first result
    within the budget, and time that one against FP32."""
    fp32_top1 = float(fp32.val_top1 or 0.0)
    ok = [r for r in rows if r.error is None]
    out: list[_Candidate] = []
    for j, base in enumerate(sorted(ok, key=lambda r: -(r.val_top1 or 0.0))):
        if j >= cfg.fallback_recipes:
            break
        assert base.recipe is not None
        result = fallback_to_float(
            graph.prepared, base.recipe, inp.calib,
            evaluate=lambda path: inp.evaluate(_eval_session(path, cfg), cfg),
            fp32_top1=fp32_top1, max_drop=inp.budget(cfg), base_excluded=graph.user_excluded,
            scratch=graph.scratch, cache_dir=graph.cache_dir, caps=cfg.caps,
            range_overrides=cfg.range_overrides, max_float_nodes=cfg.max_float_nodes,
            probes=cfg.probes, tag=f"fb{j}", metric=_metric(inp),
        )  # fmt: skip
        if result.path is None:
            continue
        fb = _Candidate(base.recipe, f"{base.name}+fallback", result.path,
                        base.float_nodes + result.float_nodes)  # fmt: skip
        fb.val_top1 = result.val_top1
        fb.fallback = {
            "from": base.name,
            "sensitivity": result.sensitivity,
            "steps": result.steps,
            "within_budget": result.within_budget,
        }
        out.append(fb)
        if result.within_budget:
            break
    within = _within_budget_rows(out, fp32, inp.budget(cfg))
    timing = None
    if within:
        timing = measure_against_fp32(
            fp32, within, inp.feeds(cfg.latency.batch_sizes), cfg.latency, cfg=cfg,
            budget_s=_race_budget(cfg.latency), race=len(within) > 1,
        )  # fmt: skip
    return out, timing


# --------------------------------------------------------------------------------------------
# Phase 5: the selection rule


def choose_recipe(
    rows: Sequence[_Candidate],
    fp32: _Candidate,
    cfg: QuantizeConfig,
    *,
    src: Path | None = None,
    fallback_ran: bool = False,
    budget: float | None = None,
    budget_text: str | None = None,
    metric: str = "top1",
) -> _Candidate:
    """The one selection rule: among the candidates within the accuracy budget
    (`within_budget`: FP32 val top-1 minus the candidate's is at most `max_drop`), the fastest,
    i.e. the lowest `speed_score` (geometric mean over the batch sizes of its latency ratio
    to FP32); the first in table order on a tie.

    `budget` replaces `cfg.max_drop` when the score is not top-1 (fidelity without labels:
    `EvaluationSet.drop_budget`); `budget_text` then says what it means and `metric` (a
    `BudgetMetric` value) names the score in the message.
    Raises CalibrateError (exit 1) when no candidate is within the budget.
    """
    budget = cfg.max_drop if budget is None else budget
    within = _within_rows(rows, fp32, cfg, budget)
    if within:
        return min(within, key=lambda r: speed_score(r, cfg.latency))
    fp32_top1 = float(fp32.val_top1 or 0.0)
    scored = [r for r in rows if r.val_top1 is not None]
    best = max(scored, key=lambda r: r.val_top1 or 0.0) if scored else None
    found = (
        f"best found {best.name} with {drop_text(metric, fp32_top1, best.val_top1 or 0.0)}"
        if best is not None
        else "no candidate was scored"
    )
    raise CalibrateError(
        f"no INT8 recipe for {src} is within the accuracy budget of "
        f"{budget_text or f'{cfg.max_drop * 100:.2f} pp of val top-1'}: FP32 "
        f"{score_text(metric, fp32_top1)}, {found} after trying "
        f"{len(rows)} candidates{' and the float fallback' if fallback_ran else ''}; "
        "raise --max-drop, calibrate with more data (--calib-size) or exclude "
        "sensitive nodes",
        exit_code=1,
    )


def _within_rows(
    rows: Sequence[_Candidate], fp32: _Candidate, cfg: QuantizeConfig, budget: float | None = None
) -> list[_Candidate]:
    fp32_top1 = float(fp32.val_top1 or 0.0)
    budget = cfg.max_drop if budget is None else budget
    timed = set(fp32.latency)  # every row must be timed at every batch size FP32 was
    return [
        r
        for r in rows
        if r.error is None
        and r.latency
        and set(r.latency) >= timed
        and within_budget(fp32_top1, r.val_top1, budget)
    ]


def _metric(inp: _Inputs) -> str:
    """The budget's metric (`BudgetMetric` value): top1, top1_agreement or sqnr_db."""
    return inp.evalset.metric.value if inp.evalset.metric else "top1"


def _budget_text(inp: _Inputs, cfg: QuantizeConfig) -> str:
    """The budget in its metric's words: dB for SQNR, % for agreement, pp for top-1."""
    metric = _metric(inp)
    if metric == "sqnr_db":
        return f"{cfg.min_sqnr_db:.1f} dB output SQNR vs FP32 (on {inp.evalset.source})"
    if metric == "top1_agreement":
        return f"{(1 - cfg.max_drop) * 100:.2f} % {METRIC_WORDS[metric]} (on {inp.evalset.source})"
    return f"{cfg.max_drop * 100:.2f} pp of {METRIC_WORDS[metric]} (on {inp.evalset.source})"


# --------------------------------------------------------------------------------------------
# Phase 6: confirm


def _confirm(
    chosen: _Candidate, fp32: _Candidate, inp: _Inputs, cfg: QuantizeConfig
) -> tuple[_Candidate, dict[str, Any]]:
    """Re-time the winner against FP32 alone, at the batch sizes the race timed: the race's
    best is optimistically biased. Its CIs decide `int8_faster_than_fp32`."""
    assert chosen.recipe is not None
    confirm = _Candidate(chosen.recipe, chosen.name, chosen.path, chosen.float_nodes)
    confirm_fp32 = _Candidate(None, FP32_ROW, fp32.path, [])
    batches = tuple(_timed_batches(chosen, cfg.latency)) or cfg.latency.batch_sizes
    lat = dataclasses.replace(cfg.latency, batch_sizes=batches)
    # the configured batch sizes' budget: what a skipped batch size did not spend goes here
    budget_s = (
        cfg.latency.seconds_per_batch_size
        * cfg.latency.confirm_share
        * len(cfg.latency.batch_sizes)
    )
    info = measure_against_fp32(
        confirm_fp32, [confirm], inp.feeds(batches), lat, cfg=cfg, budget_s=budget_s, race=False
    )
    return confirm, info


# --------------------------------------------------------------------------------------------
# The stage record


def _metrics(
    inp: _Inputs,
    cfg: QuantizeConfig,
    graph: _Graph,
    chosen: _Candidate,
    confirm: _Candidate,
    table: list[dict[str, Any]],
    fallback_info: dict[str, Any] | None,
    faster: bool,
    why: str,
    out: Path,
) -> dict[str, Any]:
    from onnxship.core.env import cpu_model_name, integer_class_record, isa_summary

    assert chosen.recipe is not None
    here = integer_class_record()
    fp32_top1 = float(table[0]["val_top1"])
    fp32_bytes = inp.src.stat().st_size
    int8_bytes = out.stat().st_size
    return {
        "recipe": {
            "name": chosen.name,
            "options": chosen.recipe.options(),
            "searched": cfg.recipe.strip().lower() == AUTO,
            "safe_integer_classes": chosen.recipe.safe_integer_classes(),
            "risk": chosen.recipe.risk,
            "exact_on_validated_class": chosen.recipe.safe_on(str(here["integer_class"])),
        },
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
        "latency": {
            "provider": inp.provider,
            "threads": cfg.latency.threads,
            "statistic": cfg.latency.statistic.value,
            "by_batch": confirm.latency,
            "min_speedup": round(cfg.latency.min_speedup, 4),
            "engine": "runtime_bench.timing (block-interleaved rounds, paired bootstrap CI)",
        },
        "int8_faster_than_fp32": faster,
        "int8_faster_than_fp32_why": why,
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "bytes_ratio": round(int8_bytes / fp32_bytes, 4),
        "calibration": {
            "path": None,
            "sha256": inp.calib.sha256(),
            "samples": inp.calib.samples,
            "batch_size": inp.calib.batch_size,
            "source_split": inp.calib.source,
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
        },
        "graph_rewrites": [r.to_json() for r in graph.rewrites],
        "fallback": fallback_info,
        "target": {
            "provider": inp.provider,
            "cpu": cpu_model_name(),
            "isa": isa_summary(),
            **here,
        },  # fmt: skip
    }


def _prepare(prepped: Path, scratch: Path, cfg: QuantizeConfig) -> tuple[Path, list[Any]]:
    """Exact rewrites of the pre-processed model (`calibrate.graph_prep`)."""
    import onnx

    model = onnx.load(os.fspath(prepped))
    entry = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    rewrites = cap_opset(model, ort_max_qdq_opset(entry.version)) if entry else []
    if cfg.flatten_reshapes:
        rewrites += reshape_to_flatten(model)
    if not rewrites:
        return prepped, []
    out = scratch / "prepared.onnx"
    onnx.save_model(model, os.fspath(out))
    return out, rewrites


def _speedups(row: _Candidate, lat: LatencyConfig) -> str:
    """'batch 1: 1.78x [1.70, 1.85]' per timed batch size: the engine's speed-up over FP32."""
    parts = []
    for b in _timed_batches(row, lat):
        e = row.latency[str(b)]
        lo, hi = e.get("speedup_ci") or (float("nan"), float("nan"))
        parts.append(f"batch {b}: {e.get('speedup', float('nan')):.2f}x [{lo:.2f}, {hi:.2f}]")
    return ", ".join(parts) or "not timed"


def _why(
    chosen: _Candidate,
    faster: bool,
    lat: LatencyConfig,
    within: Sequence[_Candidate],
    rows: Sequence[_Candidate],
) -> str:
    ci = int(round(lat.ci_level * 100))
    ratios = (
        f"speed-up over FP32 {_speedups(chosen, lat)} ({lat.statistic.value} latency, {ci} % "
        f"CI, re-run interleaved with FP32; INT8 counts as faster when the CI's lower bound "
        f"clears {lat.min_speedup:.3f}x at every timed batch size)"
    )
    if faster:
        return f"{chosen.name}: {ratios}"
    names_within = {r.name for r in within}
    fast_within = sum(1 for r in rows if r.name in names_within and r.latency and _faster(r, lat))
    if fast_within:
        others = (
            f"{fast_within} of the {len(names_within)} candidates within the budget measured "
            "faster in the race, but the chosen one's re-run interleaved with FP32 did not "
            "confirm it: the difference is within this machine's run-to-run noise or the "
            "budget was too short for a confident answer (raise --bench-seconds)"
        )
    else:
        others = (
            f"none of the {len(names_within)} timed candidates within the budget was "
            f"confidently faster at every timed batch size; the other {len(rows) - len(names_within)} "
            "were outside the accuracy budget or screened out before the race (see each "
            "candidate's `screened` / `screened_out`)"
        )
    return (
        f"no INT8 recipe within the accuracy budget was faster than FP32 at every batch size "
        f"on this target ({others}); the chosen {chosen.name}: {ratios}. ORT's integer kernels "
        "do not confidently beat its float ones on this model and CPU; prefer the FP32 model "
        "where latency matters"
    )


def _scope_rows(
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


def _feeds(
    inputs: dict[str, np.ndarray], batch_sizes: Sequence[int]
) -> dict[int, dict[str, np.ndarray]]:
    """Real validation samples as latency feeds (repeated if a batch exceeds the set)."""
    out = {}
    for b in batch_sizes:
        rows = np.arange(b) % next(iter(inputs.values())).shape[0]
        out[b] = {name: np.ascontiguousarray(x[rows]) for name, x in inputs.items()}
    return out


def _progress(total: int, enabled: bool) -> Any:
    from onnxship.core.progress import progress

    return progress(total, "quantize recipes", "recipe", enabled=enabled)
