"""report.md from a manifest and stage records (no pipeline run needed)."""

from __future__ import annotations

import json
from pathlib import Path

from onnxship.report import write_report


def _manifest() -> dict:
    entry = {
        "precision": "int8",
        "bytes": 40_000,
        "macs": 90_000,
        "params": 40_000,
        "accuracy": {"test_top1": 0.987},
        "latency": {"CPUExecutionProvider": {"1": {"p50_ms": 0.05}, "64": {"p50_ms": 0.9}}},
    }
    return {"created": "2026-11-30T00:00:00Z", "artifacts": {"student-int8": entry}}


def test_write_report_shows_a_failed_int8_candidate_as_a_row_with_its_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "stages").mkdir()
    metrics = {
        "recipe": {"name": "qdq-ok"},
        "candidates": [
            {
                "name": "fp32",
                "val_top1": 0.99,
                "val_drop": 0.0,
                "within_budget": True,
                "latency": {"1": {"p50_ratio": 1.0}, "64": {"p50_ratio": 1.0}},
                "bytes": 90_000,
            },
            {
                "name": "qdq-ok",
                "val_top1": 0.989,
                "val_drop": 0.001,
                "within_budget": True,
                "latency": {"1": {"p50_ratio": 0.8}, "64": {"p50_ratio": 0.7}},
                "bytes": 40_000,
            },
            {
                "name": "qop-broken",
                "val_top1": None,
                "val_drop": None,
                "within_budget": False,
                "latency": {},
                "bytes": None,
                "error": "quantize_static failed | on\nnode Conv_0",
            },
        ],  # fmt: skip
        "max_drop": 0.003,
        "fp32_val_top1": 0.99,
        "int8_val_top1": 0.989,
    }
    (tmp_path / "stages" / "quantize.json").write_text(json.dumps({"metrics": metrics}))
    text = write_report(tmp_path, _manifest(), []).read_text()
    row = next(line for line in text.splitlines() if "`qop-broken`" in line)
    assert "failed: quantize_static failed \\| on node Conv_0" in row
    assert row.count(" | ") == 6  # still a 7-column row
    assert "| `qdq-ok` | 98.90 % | 0.10 | True | 0.80 | 0.70 | 40000 |" in text


def test_write_report_says_which_ep_the_bench_skipped_and_why(tmp_path: Path) -> None:
    (tmp_path / "stages").mkdir()
    reason = "this onnxruntime build has no CUDAExecutionProvider"
    record = {"metrics": {"skipped_providers": [{"provider": "CUDAExecutionProvider",
                                                 "reason": reason}]}}  # fmt: skip
    (tmp_path / "stages" / "bench.json").write_text(json.dumps(record))
    text = write_report(tmp_path, _manifest(), []).read_text()
    assert f"- Not benchmarked: CUDAExecutionProvider ({reason})" in text


def _server_result(name: str, value: float | None, p99s: list[tuple[float, float]]) -> dict:
    steps = [{"target_qps": q, "p99_ms": p, "met": p <= 5.0} for q, p in p99s]
    return {"scenario": "server", "model_name": name, "value": value, "slo_ms": 5.0,
            "concurrency": 1, "steps": steps}  # fmt: skip


def test_server_plot_draws_qps_vs_p99_when_server_results_exist(tmp_path: Path) -> None:
    from onnxship.report import server_results, write_server_plot

    results = [
        _server_result("teacher-fp32", 400.0, [(100, 1.0), (400, 3.0), (800, 9.0)]),
        _server_result("student", None, [(100, 7.0)]),
        {"scenario": "server", "model_name": "empty", "value": None, "slo_ms": 5, "steps": []},
    ]
    out = write_server_plot(tmp_path / "server.png", results)
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_server_plot(tmp_path / "none.png", results[2:]) is None
    assert not (tmp_path / "none.png").exists()
    # a bundle: results/scenario-server.json is found; without it there is nothing to draw
    assert server_results(tmp_path, {}) == []
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "scenario-server.json").write_text(json.dumps({"results": results}))
    assert [r["model_name"] for r in server_results(tmp_path, {})] == ["teacher-fp32", "student"]


def _searched_manifest() -> dict:
    """teacher, student-int8 and searched-fp32, the last recommended on the CPU EP."""

    def art(precision: str, top1: float, macs: int, p50_64: float) -> dict:
        return {"precision": precision, "bytes": 10_000, "macs": macs, "params": 1_000,
                "accuracy": {"test_top1": top1},
                "latency": {"CPUExecutionProvider": {"1": {"p50_ms": 0.1},
                                                     "64": {"p50_ms": p50_64}}}}  # fmt: skip

    return {
        "created": "2026-12-01T00:00:00Z",
        "config": {"bench": {"interleave_block": 4, "iterations": 200, "warmup": 20}},
        "bench": {"threads": 1, "iterations": 200, "warmup": 20},
        "artifacts": {
            "teacher-fp32": art("fp32", 0.9910, 2_000_000, 12.1),
            "student-int8": art("int8", 0.9890, 90_000, 3.63),
            "searched-fp32": art("fp32", 0.9895, 60_000, 1.0),
        },
        "recommended": {"CPUExecutionProvider": "searched-fp32"},
        "recommended_detail": {"CPUExecutionProvider": {"batch_size": 64}},
    }


def test_report_headline_is_the_recommended_artifact_and_says_how_it_was_timed(
    tmp_path: Path,
) -> None:
    (tmp_path / "stages").mkdir()
    text = write_report(tmp_path, _searched_manifest(), []).read_text()
    head = text.split("**Headline**", 1)[1].split("\n## ", 1)[0]
    assert (
        "CPUExecutionProvider: recommended `searched-fp32` vs `teacher-fp32` at batch 64 (p50): "
        "12.10x as fast, accuracy -0.15 pp, MACs 3.0 % of the teacher's" in head
    )
    assert "student-int8" not in head  # the old headline's fixed pair
    assert (
        "block-interleaved in one process: rounds of 4 calls per artifact, the first untimed"
        in head
    )
    assert (
        "at most 200 timed calls each (the budget and CI target stop it sooner) after 20 warm-up rounds, 1 intra-op thread(s)"
        in head
    )


def test_report_has_no_headline_without_a_recommendation(tmp_path: Path) -> None:
    (tmp_path / "stages").mkdir()
    manifest = _searched_manifest()
    del manifest["recommended"]
    assert "**Headline**" not in write_report(tmp_path, manifest, []).read_text()
