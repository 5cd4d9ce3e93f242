"""The quantize stage's configuration: how the calibration set is drawn (`CalibrationConfig`),
its memory bounds and forced ranges (`HistogramCaps`, `RangeOverride`), how candidates are
timed (`LatencyConfig`), what the stage searches and within which budget (`QuantizeConfig`),
and the recipe grid it implies. Kept apart from the stage so the search, selection and record
modules read the config's own types without importing the stage, and free of onnx and
`onnxruntime.quantization` (of the calibrate package only `calibrate.recipes` is read, which
imports neither at load) so the CLI builds `onnxship quantize`'s flags without them.
`calibrate.calibration_data` and `calibrate.ort_static` re-export the calibration types."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.recipes import (
    AUTO,
    Recipe,
    recipes_for,
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


@dataclass(frozen=True)
class CalibrationConfig:
    """How the calibration set is drawn and fed.

    size: images drawn from the validation part of MNIST's training split (ignored for a
      user's --calib-npz, which is used whole; also the rows drawn from one validation .npz
      that calibrates and measures the budget, `calibration_and_evaluation_from_npz`).
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


@dataclass(frozen=True)
class HistogramCaps:
    """Memory bounds for Entropy / Percentile calibration (see `calibrate.ort_static`).

    max_samples: at most this many calibration samples feed the histograms.
    batches_in_memory: intermediate outputs of at most this many batches are held at once.
    """

    max_samples: int = 128
    batches_in_memory: int = 2

    def validate(self) -> None:
        for name in ("max_samples", "batches_in_memory"):
            if getattr(self, name) < 1:
                raise CalibrateError(
                    f"HistogramCaps.{name} must be >= 1, got {getattr(self, name)}"
                )


@dataclass(frozen=True)
class RangeOverride:
    """Force a tensor's calibration range (ORT `TensorQuantOverrides` rmin/rmax).

    For experts (and for the test that proves the fallback restores a node whose tensor was
    given a range that clips real data).
    """

    tensor: str
    rmin: float
    rmax: float


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
