"""`runtime_bench.latency.measure_interleaved`: call order and counts (no timed assertions)."""

from __future__ import annotations

import pytest

from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.latency import measure_interleaved


def _recorders(names: str, log: list[str]) -> dict[str, object]:
    return {name: (lambda name=name: log.append(name)) for name in names}


def test_measure_interleaved_call_by_call_alternates_models() -> None:
    log: list[str] = []
    stats = measure_interleaved(_recorders("ab", log), batch_size=1, warmup=1, iterations=3)
    assert log == ["a", "b"] * 4  # one warm-up round, three timed rounds
    assert {s.iterations for s in stats.values()} == {3}


def test_measure_interleaved_in_blocks_runs_each_model_in_a_row_and_times_all_but_the_first() -> (
    None
):
    log: list[str] = []
    stats = measure_interleaved(
        _recorders("ab", log), batch_size=1, warmup=0, iterations=5, block=3
    )
    # 5 timed samples at 2 per block: 3 rounds of a a a b b b; the 6th sample is dropped.
    assert log == (["a"] * 3 + ["b"] * 3) * 3
    assert {s.iterations for s in stats.values()} == {5}


def test_measure_interleaved_refuses_a_block_below_one() -> None:
    with pytest.raises(BenchError, match="interleaving block must be >= 1"):
        measure_interleaved(_recorders("a", []), batch_size=1, iterations=1, block=0)
