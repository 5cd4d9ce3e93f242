"""`runtime_bench.timing`: the one timing engine. Structure, policy, the budget bound (with
generous slack) and racing; never a timed assertion on absolute speed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)

from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.timing import (
    MIN_CALLS,
    Ratio,
    TimingConfig,
    decide_faster,
    summarise,
    tie,
    time_blocks,
)


def _sleeper(seconds: float):
    return lambda: time.sleep(seconds)


def _recorders(names: str, log: list[str]) -> dict[str, object]:
    return {name: (lambda name=name: log.append(name)) for name in names}


def test_time_blocks_calls_each_model_in_blocks_and_times_all_but_the_first() -> None:
    log: list[str] = []
    cfg = TimingConfig(block=3, min_rounds=2, max_rounds=2, warmup=0, budget_s=30)
    result = time_blocks(_recorders("ab", log), cfg)
    assert log == (["a"] * 3 + ["b"] * 3) * 2
    assert {m.n_calls for m in result.models.values()} == {4}  # 2 rounds x 2 timed
    assert {m.n_rounds for m in result.models.values()} == {2}
    assert result.stop_reason == "max_rounds"


def test_time_blocks_block_one_alternates_call_by_call_after_warmup() -> None:
    log: list[str] = []
    cfg = TimingConfig(block=1, min_rounds=3, max_rounds=3, warmup=1, budget_s=30)
    result = time_blocks(_recorders("ab", log), cfg)
    assert log == ["a", "b"] * 4  # one warm-up round, three timed rounds
    assert result.models["a"].n_calls == 3


def test_time_blocks_ratio_ci_contains_its_estimate_and_orders_models() -> None:
    fns = {"ref": _sleeper(0.004), "fast": _sleeper(0.001)}
    result = time_blocks(fns, TimingConfig(budget_s=2.0, min_rounds=5), reference="ref")
    r = result.ratios["fast"]
    assert r.reference == "ref" and r.statistic == "p50"
    assert r.ci[0] <= r.ratio <= r.ci[1]
    assert r.ratio > 1.0  # 4 ms vs 1 ms of sleep: the faster one has the larger speed-up
    for m in result.models.values():
        assert m.p50.ci_ms is not None
        assert m.p50.ci_ms[0] <= m.p50.value_ms <= m.p50.ci_ms[1]
        assert len(m.round_stats_ms) == m.n_rounds
    assert "ref" not in result.ratios
    doc = result.to_json()
    assert doc["ratios"]["fast"]["ci"][0] <= doc["ratios"]["fast"]["ratio"]
    assert doc["models"]["fast"]["p50_n"] == result.models["fast"].n_calls


@pytest.mark.parametrize("budget_s", [0.5, 1.5])
def test_time_blocks_holds_the_budget_even_when_the_floor_asks_for_more(budget_s: float) -> None:
    # min_rounds far above what the budget allows: the budget wins, the record says so.
    cfg = TimingConfig(budget_s=budget_s, min_rounds=10_000, target_rel_ci=1e-9)
    start = time.perf_counter()
    result = time_blocks({"a": _sleeper(0.003), "b": _sleeper(0.006)}, cfg, reference="a")
    wall = time.perf_counter() - start
    assert result.stop_reason == "budget"
    assert wall <= budget_s * 1.2 + 0.25  # 20 % plus slack for a loaded machine
    assert result.models["a"].n_rounds < 10_000
    assert any("fewer than the 10000" in note for note in result.notes)


def test_time_blocks_runs_one_round_when_a_single_round_overruns_and_says_so() -> None:
    cfg = TimingConfig(budget_s=0.05, block=2)
    result = time_blocks({"a": _sleeper(0.04), "b": _sleeper(0.04)}, cfg)
    assert result.models["a"].n_rounds == 1
    assert result.stop_reason == "budget"
    assert any("longer than" in note for note in result.notes)


def test_time_blocks_stops_when_the_ci_is_reached() -> None:
    cfg = TimingConfig(budget_s=20.0, target_rel_ci=0.5, min_rounds=5)
    result = time_blocks({"a": _sleeper(0.001), "b": _sleeper(0.002)}, cfg, reference="a")
    assert result.stop_reason == "ci_reached"
    assert result.ratios["b"].rel_half_width <= 0.5
    assert result.wall_s < 20.0


def test_percentile_policy_follows_loadgen_counts() -> None:
    cfg = TimingConfig()
    few = summarise("m", np.full((20, 3), 1.0), cfg)  # 60 calls
    assert few.p50.value_ms == pytest.approx(1.0)
    assert few.p90.value_ms is None and few.p90.n == 60 and "64" in few.p90.why
    assert few.p99.value_ms is None and "662" in few.p99.why
    rng = np.random.default_rng(0)
    many = summarise("m", rng.gamma(4.0, 0.25, size=(250, 3)), cfg)  # 750 calls
    assert many.p99.value_ms is not None and many.p99.n == 750 >= MIN_CALLS["p99"]
    assert many.p50.value_ms < many.p90.value_ms < many.p99.value_ms
    for pct in (many.p50, many.p90, many.p99):
        assert pct.ci_ms[0] <= pct.value_ms <= pct.ci_ms[1]


def test_racing_drops_an_obviously_slower_model() -> None:
    fns = {"ref": _sleeper(0.002), "fast": _sleeper(0.001), "slow": _sleeper(0.02)}
    cfg = TimingConfig(budget_s=3.0, target_rel_ci=1e-6, race_after_rounds=5, min_rounds=5)
    result = time_blocks(fns, cfg, reference="ref", race=True)
    assert "slow" in result.dropped and "raced out" in result.dropped["slow"]
    assert result.models["slow"].n_rounds < result.models["ref"].n_rounds
    assert "ref" not in result.dropped and "fast" not in result.dropped
    assert result.ratios["slow"].n_rounds == result.models["slow"].n_rounds


def test_decide_faster_needs_the_lower_bound_to_clear_the_margin() -> None:
    r = Ratio("int8", "fp32", ratio=1.4, ci=(1.25, 1.55), statistic="p50")
    assert not decide_faster(r, 1.3)
    assert decide_faster(r, 1.2)


def test_tie_when_cis_overlap_or_within_band() -> None:
    a = Ratio("a", "t", ratio=10.0, ci=(9.5, 10.5), statistic="p50")
    b = Ratio("b", "t", ratio=10.3, ci=(10.2, 10.4), statistic="p50")
    c = Ratio("c", "t", ratio=13.0, ci=(12.8, 13.2), statistic="p50")
    assert tie(a, b, band=0.0)
    assert not tie(a, c, band=0.05)
    assert tie(a, c, band=0.25)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ci_level", 1.0, "CI level must be a fraction in"),
        ("ci_level", 0.0, "CI level must be a fraction in"),
        ("budget_s", 0, "budget must be > 0"),
        ("block", 0, "block must be an integer >= 1"),
        ("statistic", "p75", "statistic must be one of"),
    ],
)
def test_timing_config_refuses_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        TimingConfig(**{field: value})


def test_time_blocks_refuses_an_unknown_reference() -> None:
    with pytest.raises(BenchError, match="reference 'x' is not one of"):
        time_blocks({"a": lambda: None}, TimingConfig(budget_s=0.1), reference="x")


def test_time_blocks_times_real_ort_sessions(tmp_path: Path) -> None:
    paths = [tiny.linear_classifier(tmp_path / f"m{i}.onnx", seed=i) for i in range(2)]
    feed = {"input": np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = [
        ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in paths
    ]
    fns = {f"m{i}": (lambda s=s: s.run(None, feed)) for i, s in enumerate(sessions)}
    result = time_blocks(fns, TimingConfig(budget_s=1.0), reference="m0")
    r = result.ratios["m1"]
    assert r.ci[0] <= r.ratio <= r.ci[1]
    assert result.models["m0"].n_calls == result.models["m0"].n_rounds * 3
    assert result.stop_reason in ("ci_reached", "budget", "max_rounds")
    assert result.wall_s <= 1.0 * 1.2 + 0.25


def test_time_blocks_warmup_takes_at_most_a_fifth_of_the_budget() -> None:
    log: list[str] = []

    def slow() -> None:
        log.append("a")
        time.sleep(0.02)

    cfg = TimingConfig(budget_s=0.5, warmup=1000, block=1, min_rounds=1, max_rounds=1)
    result = time_blocks({"a": slow}, cfg)
    assert len(log) < 1000 and result.models["a"].n_rounds == 1
    assert result.wall_s <= 0.5 * 1.2 + 0.25
