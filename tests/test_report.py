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
