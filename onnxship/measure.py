"""What the pipeline's eval and bench stages (`onnxship/stages/eval.py`, `bench.py`) measure:
accuracy of every artifact on the run's test npz and latency of every artifact on every
available EP, both through ONNX Runtime (runtime_bench).

Their outputs are files like any stage's (`results/eval.json`, `results/bench.json`, the latter
in `onnxship bench`'s schema so `onnxship bench compare` works on bundles from two machines),
cached on the artifacts' sha256, the settings and (for latency) the machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxship.core.artifact import Artifact, atomic_write_json, utc_now
from onnxship.errors import PipelineError
from onnxship.runtime_bench.providers import (  # the EP table; ProviderProbe kept importable here
    CPU_EP,
    PROBED_PROVIDERS,
    ProviderProbe,
    probe_provider,
    resolve_provider,
)

EVAL_SCHEMA = 1
PREDICTIONS_FILE = "predictions.npz"  # one int32 array of argmax classes per artifact


SCENARIOS = ("single-stream", "offline")


@dataclass(frozen=True)
class RecommendPolicy:
    """How `recommended` is decided from the bench stage's measurements (margins and band are
    here, never in messages).

    scenario: which scenario `recommended[EP]` names ("single-stream": batch-1 p50 latency;
      "offline": throughput at each artifact's best batch size of the list); both are recorded.
    margin: a faster but less simple artifact wins only when the CI lower bound of its speed-up
      over the simpler one is >= 1 + margin.
    tie_band: speed-ups closer than this (relative) are a tie whatever the CIs say.
    int8_min_speedup / int8_batch: an INT8 artifact ships only when its quantize stage measured
      it at least this much faster than its own FP32 at this batch size.
    """

    scenario: str = "offline"
    margin: float = 0.05
    tie_band: float = 0.03
    int8_min_speedup: float = 1.3
    int8_batch: int = 64

    def validate(self) -> None:
        if self.scenario not in SCENARIOS:
            raise PipelineError(
                f"bench.recommend.scenario must be one of {', '.join(SCENARIOS)}, got "
                f"{self.scenario!r}"
            )
        if not (0 <= self.margin < 10 and 0 <= self.tie_band < 1):
            raise PipelineError(
                "bench.recommend: margin must be in [0, 10) and tie_band in [0, 1) (fractions, "
                f"0.05 = 5 %), got {self.margin} and {self.tie_band}"
            )
        if self.int8_min_speedup <= 0 or self.int8_batch < 1:
            raise PipelineError(
                "bench.recommend: int8_min_speedup must be > 0 and int8_batch >= 1, got "
                f"{self.int8_min_speedup} and {self.int8_batch}"
            )


@dataclass(frozen=True)
class BenchSettings:
    """How the pipeline benchmarks every artifact (see `onnxship bench` for the harness).

    All artifacts of one EP are timed together, block-interleaved, by the timing engine
    (`runtime_bench.timing`): rounds repeat until every ratio vs `reference` has a CI
    half-width <= target_rel_ci of the ratio, or the budget is spent. `budget_s` bounds the
    timing of the whole stage (split evenly over EPs x batch sizes); `iterations` caps the timed
    calls per artifact and batch size."""

    batch_sizes: tuple[int, ...] = (1, 64)
    threads: int = 1
    warmup: int = 20
    iterations: int = 20_000
    # Empty = every *available* EP among CPU and CUDA; otherwise names or cpu/cuda.
    providers: tuple[str, ...] = ()
    # Calls per artifact per round of the interleaved timing, the first untimed: a deployed
    # model called in a row has warm caches (runtime_bench.timing).
    interleave_block: int = 4
    budget_s: float = 24.0
    ci_level: float = 0.95
    target_rel_ci: float = 0.02
    statistic: str = "p50"
    reference: str = "teacher-fp32"
    # stop timing artifacts clearly slower than the fastest (successive halving); they keep
    # the rounds they had, with wider CIs, and the record says so
    race: bool = True
    recommend: RecommendPolicy = field(default_factory=RecommendPolicy)

    def validate(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise PipelineError(
                f"bench.batch_sizes must be positive integers, got {self.batch_sizes}"
            )
        if self.interleave_block < 1:
            raise PipelineError(f"bench.interleave_block must be >= 1, got {self.interleave_block}")
        if self.threads < 1 or self.iterations < 1 or self.warmup < 0:
            raise PipelineError(
                f"bench: threads and iterations must be >= 1 and warmup >= 0, got threads="
                f"{self.threads}, iterations={self.iterations}, warmup={self.warmup}"
            )
        if not self.budget_s > 0:
            raise PipelineError(f"bench.budget_s must be > 0 seconds, got {self.budget_s}")
        self.recommend.validate()
        from onnxship.runtime_bench.errors import BenchError
        from onnxship.runtime_bench.timing import TimingConfig

        try:
            TimingConfig(ci_level=self.ci_level, target_rel_ci=self.target_rel_ci,
                         statistic=self.statistic)  # fmt: skip
        except BenchError as exc:
            raise PipelineError(f"bench: {exc}") from None


@dataclass(frozen=True)
class EvalSettings:
    batch_size: int = 1000
    provider: str = "cpu"

    def validate(self) -> None:
        if self.batch_size < 1:
            raise PipelineError(f"eval.batch_size must be >= 1, got {self.batch_size}")


def machine_key() -> dict[str, Any]:
    """What a measurement depends on beyond its inputs: the machine part of the one fingerprint
    (CPU model, ISA, integer class, usable cores and cgroup quota, onnxruntime). Part of the
    eval and bench stages' cache keys, so a bundle re-run on another machine (or onnxruntime,
    or container limit) is re-measured there."""
    from onnxship.core.env import FINGERPRINT_MACHINE_KEYS, machine_fingerprint

    fp = machine_fingerprint()
    return {k: fp[k] for k in FINGERPRINT_MACHINE_KEYS}


def eval_key(settings: EvalSettings) -> dict[str, Any]:
    """The eval stage's recorded config. The machine is part of it, as for bench: the manifest
    records the environment of the run that writes it, and verify demands exact predictions on
    that environment, so a bundle re-run elsewhere (seen: re-benched on the GPU machine)
    re-measures accuracy there instead of keeping predictions from another CPU under the new
    machine's name."""
    return {"settings": settings, **machine_key()}


def eval_results(
    onnx_paths: Mapping[str, Path],
    settings: EvalSettings,
    out: Path,
    preds_path: Path,
    *,
    data_npz: Path,
) -> Artifact:
    """Measure every artifact's test top-1 on the labelled `data_npz` (the run's
    data/test.npz) and write `out` (results/eval.json) and every argmax to `preds_path`, so
    `onnxship verify` on another CPU can count differing predictions."""
    results, predictions = _evaluated(onnx_paths, settings, data_npz)
    _write_predictions(preds_path, predictions, results)
    atomic_write_json(
        out,
        {
            "schema_version": EVAL_SCHEMA,
            "created": utc_now(),
            "split": "test",
            "batch_size": settings.batch_size,
            "provider": settings.provider,
            "artifacts": results,
        },
    )
    metrics = {name: {"test_top1": r["top1"]} for name, r in results.items()}
    return Artifact.from_file(out, stage="eval", config=settings, metrics=metrics)


def _evaluated(
    onnx_paths: Mapping[str, Path],
    settings: EvalSettings,
    data_npz: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each artifact's accuracy record and its predictions (int32 argmax per sample)."""
    import numpy as np

    from onnxship.runtime_bench.accuracy import evaluate_npz

    results: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    for name, path in onnx_paths.items():
        results[name] = evaluate_npz(
            path,
            data_npz,
            batch_size=settings.batch_size,
            provider=settings.provider,
            return_predictions=True,
        )
        predictions[name] = results[name].pop("predictions").astype(np.int32)
    return results, predictions


def _write_predictions(
    preds_path: Path, predictions: Mapping[str, Any], results: dict[str, Any]
) -> None:
    """Every argmax, so `onnxship verify` on another CPU can count differing predictions;
    each result names the file, its key and its sha256."""
    import numpy as np

    from onnxship.core.artifact import atomic_output, sha256_file

    with atomic_output(preds_path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **predictions)
    preds_sha = sha256_file(preds_path)
    for name in results:
        results[name]["predictions"] = {
            "path": f"results/{PREDICTIONS_FILE}",
            "key": name,
            "sha256": preds_sha,
        }


def bench_providers(requested: tuple[str, ...]) -> tuple[list[str], list[ProviderProbe]]:
    """The EPs the pipeline benchmarks on, and the ones it skipped with the reason.

    Requested EPs (names or cpu/cuda) are used as given: one that cannot run is a hard error
    when its session is created, as with `onnxship bench --provider`. With none requested:
    the CPU EP, plus CUDA when a probe session on it actually runs (probed once)."""
    if requested:
        return [resolve_provider(p) for p in requested], []
    probes = [probe_provider(p) for p in PROBED_PROVIDERS]
    return [*(p.provider for p in probes if p.usable), CPU_EP], [p for p in probes if not p.usable]


def bench_key(settings: BenchSettings, providers: list[str]) -> dict[str, Any]:
    """The bench stage's recorded config. The machine is part of it: a bundle re-run elsewhere
    is re-measured there."""
    return {"settings": settings, "providers": providers, "timing": "interleaved", **machine_key()}


def bench_results(
    onnx_paths: Mapping[str, Path],
    settings: BenchSettings,
    providers: list[str],
    skipped: list[dict[str, str]],
    out: Path,
) -> Artifact:
    """Time every artifact on every EP of `providers` and write `out` (results/bench.json).

    On each EP the artifacts are timed block-interleaved in one run at each batch size
    (`benchmark_models_interleaved`, the timing engine), so the ratios between them (the
    report's headline, `recommended`, the gate's latency_ratios) compare numbers taken at the
    same moments, each with a paired bootstrap CI. The stage's timing budget is split evenly
    over every (EP, batch size) measurement."""
    from onnxship.runtime_bench.bench import BenchConfig, benchmark_models_interleaved

    share_s = settings.budget_s / (len(providers) * len(settings.batch_sizes))
    merged: dict[str, Any] | None = None
    for provider in providers:
        cfg = BenchConfig(
            provider=provider,
            batch_sizes=tuple(settings.batch_sizes),
            threads=settings.threads,
            warmup=settings.warmup,
            iterations=settings.iterations,
            time_budget_s=share_s,
            progress=False,
            interleave_block=settings.interleave_block,
            ci_level=settings.ci_level,
            target_rel_ci=settings.target_rel_ci,
            statistic=settings.statistic,
            reference=settings.reference if settings.reference in onnx_paths else None,
            race=settings.race,
        )
        result = benchmark_models_interleaved(list(onnx_paths.values()), cfg)
        if merged is None:
            merged = result
            merged["config"] = {"providers": providers, **dict(result.get("config", {}))}
        else:
            merged["results"].extend(result["results"])
            merged["ratios"].extend(result["ratios"])
            merged["timing_runs"].extend(result["timing_runs"])
    assert merged is not None
    merged["skipped_providers"] = skipped
    atomic_write_json(out, merged)
    return Artifact.from_file(
        out,
        stage="bench",
        config=bench_key(settings, providers),
        metrics={
            "providers": providers,
            "skipped_providers": skipped,
            "budget_s": settings.budget_s,
            "timing_runs": merged["timing_runs"],
        },  # fmt: skip
    )
