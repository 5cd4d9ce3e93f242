"""Which batch sizes the INT8 latency race times within its budget (`_batches_that_fit`).

Defaults: 5 rounds x 4 calls per model; 15 models -> 300 FP32-sized calls per batch size; a
10 s budget over batches (1, 64) gives batch 64 a 5 s share.
"""

from __future__ import annotations

import pytest

from onnxship.calibrate.latency_race import _batches_that_fit
from onnxship.calibrate.quantize_config import LatencyConfig

LAT = LatencyConfig(batch_sizes=(1, 64))
CALLS = 15 * LAT.block * LAT.min_iterations  # 300


def _fit(per_sample_s: float, call_at_64_s: float | None) -> tuple[list[int], dict, list[int]]:
    probed: list[int] = []

    def call_s(batch: int) -> float:
        probed.append(batch)
        assert call_at_64_s is not None, "the probe must not run here"
        return call_at_64_s

    skipped: dict = {}
    kept = _batches_that_fit(LAT, 10.0, per_sample_s, call_s, 15, skipped)
    return kept, skipped, probed


def test_a_batch_that_fits_by_extrapolation_is_kept_without_a_probe() -> None:
    kept, skipped, probed = _fit(per_sample_s=1e-5, call_at_64_s=None)  # 0.64 ms a call
    assert kept == [1, 64] and skipped == {} and probed == []


def test_a_batch_the_extrapolation_overstates_is_timed_once_and_kept() -> None:
    # Batch 1 measured 0.37 ms (per-call overhead): x64 = 24 ms a call, 7.1 s > the 5 s share;
    # one real call at 64 takes 1.3 ms: 300 calls = 0.39 s, which fits.
    kept, skipped, probed = _fit(per_sample_s=0.37e-3, call_at_64_s=1.3e-3)
    assert probed == [64]
    assert kept == [1, 64] and skipped == {}


def test_a_batch_still_too_slow_when_timed_is_skipped_with_the_measured_cost() -> None:
    kept, skipped, probed = _fit(per_sample_s=0.37e-3, call_at_64_s=20e-3)
    assert probed == [64] and kept == [1]
    assert "FP32 ~20 ms a call" in skipped["64"] and "6.0 s" in skipped["64"]


def test_a_batch_too_expensive_to_probe_is_skipped_without_timing_it() -> None:
    # 10 ms per sample: 640 ms a call; two calls (1.3 s) exceed a tenth of the 5 s share.
    kept, skipped, probed = _fit(per_sample_s=10e-3, call_at_64_s=None)
    assert probed == [] and kept == [1]
    assert skipped["64"].startswith("5 rounds of 15 models at batch 64 need ~192.0 s")


@pytest.mark.parametrize("per_sample_s", [1e-5, 0.37e-3, 10e-3])
def test_the_smallest_batch_is_always_timed(per_sample_s: float) -> None:
    kept, _, _ = _fit(per_sample_s, call_at_64_s=1.0)
    assert kept[0] == 1
