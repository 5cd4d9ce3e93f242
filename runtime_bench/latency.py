"""Latency statistics and the timing loops (wall clock, `perf_counter_ns`).

`measure_latency` times one callable; `measure_interleaved` times several in round-robin so that
slow drift of a noisy shared machine (other tenants, frequency changes) hits every candidate
alike: ratios from one interleaved run are what onnxship reports, never absolute numbers
compared across runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from onnxship.runtime_bench.errors import BenchError


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


def _check_counts(warmup: int, iterations: int) -> None:
    if warmup < 0:
        raise BenchError(f"warm-up runs must be >= 0, got {warmup}")
    if iterations < 1:
        raise BenchError(f"iterations must be >= 1, got {iterations}")


def measure_latency(
    fn: Callable[[], object],
    *,
    batch_size: int,
    warmup: int = 10,
    iterations: int = 100,
    time_budget_s: float | None = None,
) -> LatencyStats:
    """Call `fn` `warmup` times untimed, then `iterations` times timed (or until the time budget
    is spent, whichever comes first; at least one timed call)."""
    _check_counts(warmup, iterations)
    for _ in range(warmup):
        fn()
    samples: list[int] = []
    deadline = None if time_budget_s is None else time.perf_counter() + time_budget_s
    clock = time.perf_counter_ns
    for _ in range(iterations):
        start = clock()
        fn()
        samples.append(clock() - start)
        if deadline is not None and time.perf_counter() > deadline:
            break
    return stats_from_ns(samples, batch_size)


def measure_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    batch_size: int,
    warmup: int = 10,
    iterations: int = 100,
    block: int = 1,
) -> dict[str, LatencyStats]:
    """Time several callables interleaved in one run; one LatencyStats each (`iterations`
    timed calls each).

    block=1: round-robin call by call (A, B, C, A, B, C, ...). block=k>1: each round calls
    each callable k times in a row (A A A B B B C C C, ...) and times the last k-1 calls; the
    first call of a block re-fills the caches the previous model evicted. A deployed model
    called in a row does not pay that, and call-by-call rounds charge it to every call, which
    penalises the small models most: measured on the 2-core Xeon, a 73k-MAC student read 8.2x
    faster than the teacher call by call next to the teacher's FP16 and INT8 files, and 12.9x in
    the search's screen next to other small models. Either way every model is timed in the
    same rounds, so slow drift of a noisy machine hits all alike."""
    _check_counts(warmup, iterations)
    if block < 1:
        raise BenchError(f"interleaving block must be >= 1 call, got {block}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[int]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    timed_per_block = max(block - 1, 1)
    rounds = -(-iterations // timed_per_block)
    for _ in range(rounds):
        for name in names:
            fn = fns[name]
            if block > 1:
                fn()  # untimed: refills what the previous model evicted
            for _ in range(timed_per_block):
                start = clock()
                fn()
                samples[name].append(clock() - start)
    return {name: stats_from_ns(samples[name][:iterations], batch_size) for name in names}
