"""runtime_bench.scenarios: single-stream, offline and server on real ORT sessions (tiny models).

No assertion on speed: the machine is shared. The load generator's semantics (queueing counts,
seeded arrivals) are asserted with lower bounds that sleeping guarantees."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path)

from onnxship.cli import main
from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.scenarios import (
    P99_MIN_QUERIES,
    ScenarioConfig,
    check_qps_generable,
    parse_scenario,
    poisson_arrivals,
    quantile_ci_ms,
    run_load,
    run_scenario,
)


def test_poisson_arrivals_are_seeded_and_at_the_target_rate():
    a = poisson_arrivals(500.0, 20_000, seed=3)
    assert np.array_equal(a, poisson_arrivals(500.0, 20_000, seed=3))
    assert not np.array_equal(a, poisson_arrivals(500.0, 20_000, seed=4))
    gaps = np.diff(a)
    assert np.all(gaps >= 0)
    # exponential gaps: mean 1/qps, coefficient of variation 1 (20k draws: within 3 %)
    assert np.mean(gaps) == pytest.approx(1 / 500, rel=0.03)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, rel=0.03)


def test_run_load_latency_counts_queueing_from_scheduled_arrival():
    # five 3-ms queries all due at t=0 on one worker: query i waits for the i before it
    run = run_load(lambda: time.sleep(0.003), np.zeros(5), concurrency=1)
    lat = run.latency_ms
    for i in range(5):
        assert lat[i] >= 3.0 * (i + 1) - 0.01, lat
    assert np.all(run.start_s >= run.arrival_s) and np.all(run.done_s > run.start_s)
    # two workers halve the queue: query 4 waits for two rounds, not four
    two = run_load(lambda: time.sleep(0.003), np.zeros(5), concurrency=2)
    assert two.issue_delay_ms[4] >= 6.0 - 0.01


def test_quantile_ci_brackets_the_quantile_and_needs_enough_samples():
    x = np.sort(np.random.default_rng(0).exponential(1.0, 5000))
    lo, hi = quantile_ci_ms(x, 0.99, 0.95)
    assert lo <= np.percentile(x, 99) <= hi
    assert quantile_ci_ms(x[:50], 0.99, 0.95) is None  # the upper rank does not exist


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"scenario": "batch"}, "unknown scenario 'batch'"),
        ({"slo_ms": 0}, "--slo-ms must be a latency bound > 0 ms"),
        ({"slo_ms": -2.5}, "--slo-ms must be a latency bound > 0 ms"),
        ({"ci_level": 1.0}, "CI level must be a fraction in (0, 1)"),
        ({"ci_level": 0}, "CI level must be a fraction in (0, 1)"),
        ({"qps": (float("inf"),)}, "target QPS must be a finite number > 0"),
        ({"min_queries": 100}, "min_queries must be >= 662"),
    ],
)
def test_scenario_config_refuses_bad_values(kwargs, expected):
    with pytest.raises(BenchError, match=None) as info:
        ScenarioConfig(**kwargs)
    assert expected in str(info.value)


def test_check_qps_generable_refuses_rates_above_capacity_and_beyond_the_budget():
    cfg = ScenarioConfig(scenario="server", budget_s=10)
    with pytest.raises(BenchError, match="above what the load generator can issue"):
        check_qps_generable(5000.0, cfg, capacity=1000.0)
    with pytest.raises(BenchError, match="needs 662 s .* more than the budget of 10 s"):
        check_qps_generable(1.0, cfg, capacity=1000.0)
    check_qps_generable(500.0, cfg, capacity=1000.0)


def test_single_stream_reports_named_percentiles_with_cis_and_fingerprint(tmp_path: Path):
    a = tiny.linear_classifier(tmp_path / "a.onnx")
    b = tiny.linear_classifier(tmp_path / "b.onnx", seed=1)
    doc = run_scenario([a, b], ScenarioConfig(scenario="single-stream", budget_s=3))
    assert doc["scenario"] == "single-stream"
    first, second = doc["results"]
    for r in doc["results"]:
        assert r["scenario"] == "single-stream" and "batch-1" in r["statistic"]
        assert r["batch_size"] == 1 and r["fingerprint"]["id"]
        assert r["fingerprint"]["intra_op_threads"] == 1
        p99 = r["p99"]
        if r["n_calls"] >= P99_MIN_QUERIES:
            assert p99["value_ms"] is not None and p99["ci_ms"][0] <= p99["value_ms"]
        else:  # budget spent first on a loaded machine: no p99, and it says why
            assert p99["value_ms"] is None and "662" in p99["why"]
        assert r["p50"]["ci_ms"][0] <= r["p50"]["value_ms"] <= r["p50"]["ci_ms"][1]
    assert first["speedup_vs_first"] is None
    ratio = second["speedup_vs_first"]
    assert ratio["reference"] == "a.onnx" and ratio["ci"][0] <= ratio["ratio"] <= ratio["ci"][1]


def test_offline_picks_the_batch_with_the_highest_throughput(tmp_path: Path):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    doc = run_scenario([model], ScenarioConfig(scenario="offline", batch_sizes=(1, 8, 64),
                                               budget_s=2))  # fmt: skip
    r = doc["results"][0]
    assert r["scenario"] == "offline" and r["unit"] == "samples/s"
    rates = {row["batch_size"]: row["samples_per_s"] for row in r["per_batch"]}
    assert set(rates) == {1, 8, 64}
    assert r["batch_size"] == max(rates, key=rates.get) and r["value"] == max(rates.values())
    for row in r["per_batch"]:
        assert row["samples_per_s"] == pytest.approx(row["batch_size"] * 1e3 / row["p50_ms"])


def test_server_fixed_qps_meets_a_loose_slo_with_enough_queries(tmp_path: Path):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    cfg = ScenarioConfig(scenario="server", qps=(1500.0, 3000.0), slo_ms=60_000, budget_s=10)
    r = run_scenario([model], cfg)["results"][0]
    assert r["scenario"] == "server" and "p99" in r["statistic"]
    assert [s["target_qps"] for s in r["steps"]] == [1500.0, 3000.0]
    for step in r["steps"]:
        assert step["queries"] >= P99_MIN_QUERIES and step["met"] is True
        assert step["p50_ms"] <= step["p90_ms"] <= step["p99_ms"] <= step["max_ms"]
    assert r["slo_met"] is True and r["value"] == 3000.0 and r["stop_reason"] == "fixed_qps"
    assert r["skipped_qps"] == []


def test_server_search_that_cannot_meet_the_slo_says_so(tmp_path: Path, capsys):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    out = tmp_path / "s.json"
    rc = main(["bench", str(model), "--scenario", "server", "--slo-ms", "1e-6",
               "--budget-s", "6", "--json", str(out)])  # fmt: skip
    assert rc == 0
    r = json.loads(out.read_text())["results"][0]
    assert r["value"] is None and r["slo_met"] is False
    assert r["stop_reason"] == "slo_missed_at_lowest_qps" and len(r["steps"]) == 1
    assert "not met even at the lowest QPS" in capsys.readouterr().out


def test_server_search_brackets_the_max_qps(tmp_path: Path):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    r = run_scenario([model], ScenarioConfig(scenario="server", slo_ms=60_000, budget_s=6))
    r = r["results"][0]
    assert r["stop_reason"] in ("converged", "budget", "generator_limit")
    met = [s["target_qps"] for s in r["steps"] if s["met"]]
    assert met and r["value"] == max(met)
    assert all(s["queries"] >= P99_MIN_QUERIES for s in r["steps"])
    lo, hi = r["search_bounds_qps"]
    assert lo <= hi <= r["generator_capacity_qps"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--scenario", "burst"], "unknown scenario 'burst'"),
        (["--scenario", "server", "--slo-ms", "0"], "--slo-ms must be a latency bound > 0"),
        (["--scenario", "server", "--slo-ms", "-1"], "--slo-ms must be a latency bound > 0"),
        (["--scenario", "server", "--qps", "1e12"], "above what the load generator can issue"),
        (["--scenario", "server", "--qps", "0.01", "--budget-s", "5"], "more than the budget"),
        (["--scenario", "single-stream", "--ci-level", "1.5"], "--ci-level must be a fraction"),
        (["--ci-level", "0"], "--ci-level must be a fraction in (0, 1)"),
        (["--scenario", "offline", "--plot", "x.png"], "--plot draws the server scenario"),
    ],
)
def test_cli_scenario_bad_input_exits_2_with_one_line(tmp_path: Path, capsys, args, expected):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    assert main(["bench", str(model), *args]) == 2
    line = _one_line(capsys)
    assert line.startswith("onnxship bench: error: ") and expected in line, line


def test_parse_scenario_accepts_loadgen_names():
    assert [parse_scenario(s).value for s in ("Single-Stream", "offline", "server")] == [
        "single-stream",
        "offline",
        "server",
    ]


def test_cli_scenarios_run_without_torch(tmp_path: Path):
    from test_cli_bench import _torch_free

    model = tiny.linear_classifier(tmp_path / "m.onnx")
    out = tmp_path / "s.json"
    done = _torch_free("bench", str(model), "--scenario", "server", "--qps", "2000",
                       "--slo-ms", "60000", "--budget-s", "5", "--json", str(out), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["results"][0]["slo_met"] is True
    done = _torch_free("bench", str(model), "--scenario", "single-stream", "--budget-s", "2",
                       cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and "scenario: single-stream" in done.stdout, done.stderr
