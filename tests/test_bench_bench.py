"""runtime_bench.bench: real CPU sessions on tiny models; counts, ordering, result schema."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)

from onnxship.core.env import usable_cores
from onnxship.measure import probe_provider
from onnxship.runtime_bench.bench import (
    REPLAY_ATOL,
    ROW_KEYS,
    BenchConfig,
    benchmark_model,
    benchmark_models,
    check_replay,
    cuda_graph_blocker,
)
from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.results import validate_result

# Listed is not usable (onnxruntime-gpu lists CUDA without a GPU): a probe session decides.
HAS_CUDA = probe_provider("CUDAExecutionProvider").usable
FAST = {"warmup": 2, "iterations": 20, "progress": False}


def test_benchmark_models_rows_keys_counts_and_order(tmp_path: Path):
    a = tiny.linear_classifier(tmp_path / "a.onnx")
    b = tiny.external_data_model(tmp_path, name="b.onnx")
    doc = benchmark_models([a, b], BenchConfig(batch_sizes=(1, 3, 16), **FAST))
    validate_result(json.loads(json.dumps(doc)), source="doc")  # JSON round trip
    assert doc["schema_version"] == 1 and doc["tool"] == "onnxship bench"
    assert doc["environment"]["onnxruntime"] == ort.__version__
    assert doc["config"]["batch_sizes"] == [1, 3, 16]
    rows = doc["results"]
    assert [(r["model_name"], r["batch_size"]) for r in rows] == [
        ("a", 1), ("a", 3), ("a", 16), ("b", 1), ("b", 3), ("b", 16),
    ]  # fmt: skip
    for r in rows:
        assert set(ROW_KEYS) <= set(r)
        assert r["provider"] == "CPUExecutionProvider" and r["io"] == "host"
        assert r["iterations"] == 20 and r["warmup"] == 2 and r["threads"] == 1
        assert r["spinning"] is True
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["max_ms"]
        assert r["p25_ms"] <= r["p50_ms"] <= r["p75_ms"]
        # LoadGen policy: 20 timed calls are too few for a p90 (64) or a p99 (662)
        assert r["n"] == 20 and r["p90_ms"] is None and r["p99_ms"] is None
        assert "64" in r["p90_why"] and "662" in r["p99_why"]
        assert r["p50_ci_ms"][0] <= r["p50_ms"] <= r["p50_ci_ms"][1]
        assert math.isclose(
            r["throughput_per_s"], r["batch_size"] / (r["p50_ms"] / 1e3), rel_tol=1e-9
        )
        assert r["session_create_ms"] > 0 and r["first_run_ms"] > 0
        assert r["nodes_per_provider"] and set(r["nodes_per_provider"]) == {"CPUExecutionProvider"}
        assert r["inputs"] == [
            {"name": "input", "shape": [r["batch_size"], 1, 28, 28], "dtype": "float32"}
        ]
    assert len({r["session_create_ms"] for r in rows if r["model_name"] == "a"}) == 1


def test_benchmark_model_time_budget_caps_iterations(tmp_path: Path):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    cfg = BenchConfig(
        batch_sizes=(1,), warmup=0, iterations=1_000_000, time_budget_s=0.05, progress=False
    )
    (row,) = benchmark_model(model, cfg)
    assert 1 <= row["iterations"] < 1_000_000
    assert row["time_budget_s"] == 0.05


def test_benchmark_model_threads_above_cores_warns_and_records(tmp_path: Path, caplog):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    threads = usable_cores() + 1
    with caplog.at_level(logging.WARNING, logger="onnxship.runtime_bench.bench"):
        (row,) = benchmark_model(model, BenchConfig(batch_sizes=(2,), threads=threads, **FAST))
    assert row["threads"] == threads and row["threads_exceed_cores"] is True
    assert any(
        "more than the" in rec.message and "usable CPU cores" in rec.message
        for rec in caplog.records
    )


def test_benchmark_model_with_npz_and_dims(tmp_path: Path):
    seq = tiny.seq_model(tmp_path / "seq.onnx")
    (row,) = benchmark_model(seq, BenchConfig(batch_sizes=(2,), dim_values={"seq": 5}, **FAST))
    assert row["inputs"][0]["shape"] == [2, 5]
    np.savez(tmp_path / "x.npz", x=np.ones((3, 7), np.float32))
    (row,) = benchmark_model(seq, BenchConfig(batch_sizes=(4,), npz=tmp_path / "x.npz", **FAST))
    assert row["inputs"][0]["shape"] == [4, 7] and row["input_source"].startswith("npz:")


def test_benchmark_model_spinning_off_recorded(tmp_path: Path):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    (row,) = benchmark_model(
        model, BenchConfig(batch_sizes=(1,), spinning=False, threads=2, **FAST)
    )
    assert row["spinning"] is False and row["threads"] == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_sizes": (1, 0)}, "batch size must be >= 1, got 0"),
        ({"batch_sizes": ()}, "batch_sizes is empty"),
        ({"threads": -2}, "threads must be"),
        ({"iterations": 0}, "iterations must be >= 1"),
        ({"warmup": -1}, "warm-up runs must be >= 0"),
        ({"time_budget_s": 0.0}, "time budget must be > 0"),
        ({"dim_values": {"seq": 0}}, "dimension 'seq' must be an integer >= 1"),
    ],
)
def test_bench_config_rejects_bad_values(kwargs, match):
    with pytest.raises(BenchError, match=match) as info:
        BenchConfig(**kwargs)
    assert info.value.exit_code == 2


def test_benchmark_models_requires_a_model():
    with pytest.raises(BenchError, match="no model given"):
        benchmark_models([], BenchConfig(**FAST))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no usable CUDAExecutionProvider")
def test_benchmark_model_cuda_reports_device_and_end_to_end(tmp_path: Path):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    rows = benchmark_model(
        model, BenchConfig(provider="cuda", batch_sizes=(1, 64), cuda_graph=True, **FAST)
    )
    assert {(r["batch_size"], r["io"]) for r in rows} == {
        (b, io) for b in (1, 64) for io in ("end_to_end", "device", "cuda_graph")
    }
    assert all(r["provider"] == "CUDAExecutionProvider" for r in rows)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no usable CUDAExecutionProvider")
def test_benchmark_model_cuda_graph_replay_matches_the_host_run(tmp_path: Path):
    """Untested on a GPU so far (written on a CPU-only machine): device buffers are bound
    before the first run of the graph session, and one replay is compared with a host run."""
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    rows = benchmark_model(
        model, BenchConfig(provider="cuda", batch_sizes=(1, 8), cuda_graph=True, **FAST)
    )
    graph_rows = [r for r in rows if r["io"] == "cuda_graph"]
    assert len(graph_rows) == 2
    assert all(r["replay_max_abs_diff"] <= 1e-2 for r in graph_rows)


def test_cuda_graph_blocker_names_the_nodes_outside_cuda(tmp_path: Path):
    """ORT refuses graph capture when any node is on another EP (seen on an H200 for every
    QDQ INT8 artifact: 2 nodes on the CPU EP); the blocker says so instead of failing the run."""
    from dataclasses import replace

    from onnxship.runtime_bench.session import create_session

    handle = create_session(tiny.linear_classifier(tmp_path / "m.onnx"))
    mixed = replace(handle, nodes_per_provider={"CUDAExecutionProvider": 17,
                                                "CPUExecutionProvider": 2})  # fmt: skip
    reason = cuda_graph_blocker(mixed)
    assert reason is not None and "2 on CPUExecutionProvider" in reason and "17 on CUDA" in reason
    all_on_cuda = replace(handle, nodes_per_provider={"CUDAExecutionProvider": 7})
    assert cuda_graph_blocker(all_on_cuda) is None
    assert cuda_graph_blocker(replace(handle, nodes_per_provider=None)) is None


def test_check_replay_returns_the_largest_difference_within_tolerance():
    ref = [np.array([[1.0, -2.0, 3.0]], dtype=np.float32)]
    got = [ref[0] + np.float32(REPLAY_ATOL / 2)]
    # float32 rounding of 3.0 + 5e-5: within 1e-6 of the added offset
    assert check_replay(Path("m.onnx"), got, ref) == pytest.approx(REPLAY_ATOL / 2, abs=1e-6)


def test_check_replay_refuses_a_replay_that_differs_from_the_host_run():
    ref = [np.zeros((2, 10), dtype=np.float32)]
    with pytest.raises(BenchError, match="replay output 0 differs from the host run by up to 0.5"):
        check_replay(Path("m.onnx"), [ref[0] + np.float32(0.5)], ref)
    with pytest.raises(BenchError, match=r"has shape \[1, 10\], the host run \[2, 10\]"):
        check_replay(Path("m.onnx"), [np.zeros((1, 10), np.float32)], ref)


def test_benchmark_models_interleaved_gives_paired_ratio_cis_within_the_budget(tmp_path: Path):
    import time

    from onnxship.runtime_bench.bench import benchmark_models_interleaved
    from onnxship.runtime_bench.results import markdown_table

    ref = tiny.linear_classifier(tmp_path / "ref.onnx", seed=0)
    other = tiny.pixel_classifier(tmp_path / "other.onnx")
    cfg = BenchConfig(batch_sizes=(1, 8), warmup=2, iterations=100_000, time_budget_s=0.6,
                      interleave_block=4, reference="ref", progress=False)  # fmt: skip
    start = time.perf_counter()
    doc = benchmark_models_interleaved([ref, other], cfg)
    # the budget bounds each batch size (20 % plus slack for sessions and a loaded machine)
    assert time.perf_counter() - start <= 2 * 0.6 * 1.2 + 1.0
    validate_result(json.loads(json.dumps(doc)), source="doc")
    assert [(r["name"], r["reference"], r["batch_size"]) for r in doc["ratios"]] == [
        ("other", "ref", 1), ("other", "ref", 8)
    ]  # fmt: skip
    for r in doc["ratios"]:
        assert r["ci"][0] <= r["ratio"] <= r["ci"][1] and r["ci_level"] == 0.95
    for row in doc["results"]:
        assert row["timing"] == "interleaved" and len(row["round_stats_ms"]) == row["n_rounds"]
        assert row["n"] == 3 * row["n_rounds"]  # block 4: three timed calls per round
    assert {run["stop_reason"] for run in doc["timing_runs"]} <= {"ci_reached", "budget"}
    assert "speed-up" in markdown_table(doc)


def test_benchmark_models_interleaved_refuses_an_unknown_reference(tmp_path: Path):
    from onnxship.runtime_bench.bench import benchmark_models_interleaved

    model = tiny.linear_classifier(tmp_path / "m.onnx")
    with pytest.raises(BenchError, match="reference model 'teacher' is not among"):
        benchmark_models_interleaved([model], BenchConfig(reference="teacher", progress=False))
