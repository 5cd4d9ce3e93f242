"""Latency statistics of result rows. The timing itself is `runtime_bench.timing` (the one
timing engine): `row_stats` turns its per-model result into a bench row's latency keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.timing import ModelTiming, Percentile


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds for one batch size; throughput in samples/s."""

    batch_size: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput_per_s: float
    # Quartiles and p10 (added for `bench compare`'s noise test: IQR vs the difference).
    p10_ms: float = float("nan")
    p25_ms: float = float("nan")
    p75_ms: float = float("nan")

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def stats_from_ns(samples_ns: np.ndarray | list[int], batch_size: int) -> LatencyStats:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise BenchError("no latency samples were taken; use at least one iteration")
    p10, p25, p50, p75, p90, p99 = np.percentile(ms, [10, 25, 50, 75, 90, 99])
    return LatencyStats(
        batch_size=batch_size,
        iterations=int(ms.size),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        # Throughput from the median: robust to the odd preempted iteration.
        throughput_per_s=float(batch_size / (p50 / 1e3)) if p50 > 0 else float("inf"),
        p10_ms=float(p10),
        p25_ms=float(p25),
        p75_ms=float(p75),
    )


def row_stats(timing: ModelTiming, batch_size: int) -> dict[str, Any]:
    """The latency keys of a result row from the engine's ModelTiming: p50/p90/p99 with their
    CIs and call counts (p90/p99 None below the LoadGen counts, with `*_why`), spread and
    throughput (samples/s from the p50, its CI from the p50's)."""
    ms = np.asarray(timing.samples_ms, dtype=np.float64)
    p10, p25, p75 = np.percentile(ms, [10, 25, 75])
    out: dict[str, Any] = {"iterations": timing.n_calls, "n": timing.n_calls,
                           "n_rounds": timing.n_rounds}  # fmt: skip
    for key in ("p50", "p90", "p99"):
        pct: Percentile = getattr(timing, key)
        out[f"{key}_ms"] = pct.value_ms
        out[f"{key}_ci_ms"] = list(pct.ci_ms) if pct.ci_ms is not None else None
        if pct.why:
            out[f"{key}_why"] = pct.why
    p50 = timing.p50.value_ms or float("nan")
    ci = timing.p50.ci_ms
    out.update(
        mean_ms=timing.mean_ms,
        std_ms=timing.std_ms,
        min_ms=timing.min_ms,
        max_ms=timing.max_ms,
        p10_ms=float(p10),
        p25_ms=float(p25),
        p75_ms=float(p75),
        throughput_per_s=float(batch_size / (p50 / 1e3)) if p50 > 0 else float("inf"),
        throughput_ci_per_s=[batch_size / (ci[1] / 1e3), batch_size / (ci[0] / 1e3)]
        if ci and ci[0] > 0
        else None,
    )
    return out
