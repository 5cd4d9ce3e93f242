"""runtime_bench.results: compare verdicts (noise vs real), merge across machines, files."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.results import (
    compare,
    compare_markdown,
    load_result,
    markdown_table,
    merge,
    merge_markdown,
    write_csv,
    write_json,
)


def _row(name: str, batch: int, p50: float, iqr: float, iterations: int = 100) -> dict:
    return {
        "model": f"/m/{name}.onnx", "model_name": name, "model_sha256": name * 4,
        "provider": "CPUExecutionProvider", "provider_options": {}, "batch_size": batch,
        "threads": 1, "spinning": True, "warmup": 10, "iterations": iterations,
        "session_create_ms": 5.0, "first_run_ms": 1.0, "p50_ms": p50,
        "p25_ms": p50 - iqr / 2, "p75_ms": p50 + iqr / 2, "p90_ms": p50 + iqr,
        "p99_ms": p50 + 2 * iqr, "mean_ms": p50, "std_ms": iqr, "min_ms": p50 - iqr,
        "max_ms": p50 + 3 * iqr, "throughput_per_s": batch / (p50 / 1e3),
        "nodes_per_provider": {"CPUExecutionProvider": 3}, "io": "host",
    }  # fmt: skip


def _doc(rows: list[dict], host: str = "boxA", cpu: str = "CPU A") -> dict:
    return {
        "schema_version": 1, "tool": "onnxship bench", "created": "2026-11-28T00:00:00Z",
        "environment": {"hostname": host, "cpu": cpu, "isa": ["avx2"], "usable_cores": 2,
                        "onnxruntime": "1.32.0", "os": "Linux"},
        "config": {}, "results": rows,
    }  # fmt: skip


def test_compare_ratios_and_noise_verdicts():
    a = _doc([_row("m", 1, 1.00, 0.02), _row("m", 64, 10.0, 0.1), _row("n", 1, 2.0, 0.5)])
    b = _doc([_row("m", 1, 0.50, 0.02), _row("m", 64, 12.0, 0.1), _row("n", 1, 2.3, 0.5)])
    result = compare(a, b)
    by = {(r["model_name"], r["batch_size"]): r for r in result["rows"]}
    assert by["m", 1]["ratio_p50"] == pytest.approx(0.5) and by["m", 1]["verdict"] == "faster"
    assert by["m", 64]["ratio_p50"] == pytest.approx(1.2) and by["m", 64]["verdict"] == "slower"
    # 0.3 ms apart with an IQR of 0.5 ms: within the spread.
    assert by["n", 1]["verdict"] == "noise" and by["n", 1]["noise_ms"] == pytest.approx(0.5)
    assert by["m", 1]["ratio_throughput"] == pytest.approx(2.0)
    assert result["environment_diff"] == {}
    text = compare_markdown(result)
    assert "| m | CPU | host | 1 | 1 | 0.5 | 0.500 |" in text and "noise" in text


def test_compare_reports_unpaired_rows_few_runs_and_environment():
    a = _doc([_row("m", 1, 1.0, 0.01, iterations=3), _row("only_a", 1, 1.0, 0.01)])
    b = _doc([_row("m", 1, 2.0, 0.01), _row("only_b", 8, 1.0, 0.01)], host="boxB", cpu="CPU B")
    result = compare(a, b)
    assert [r["verdict"] for r in result["rows"]] == ["too few runs"]
    assert result["only_in_a"] == [["only_a", 1, "CPUExecutionProvider", "host"]]
    assert result["only_in_b"] == [["only_b", 8, "CPUExecutionProvider", "host"]]
    assert result["environment_diff"]["cpu"] == ["CPU A", "CPU B"]
    assert "Measured on different environments" in compare_markdown(result)


def test_compare_rejects_duplicate_keys_and_merged_tables():
    dup = _doc([_row("m", 1, 1.0, 0.1), _row("m", 1, 1.1, 0.1)])
    with pytest.raises(BenchError, match="two rows for model 'm'"):
        compare(dup, _doc([_row("m", 1, 1.0, 0.1)]))
    merged = merge([_doc([_row("m", 1, 1.0, 0.1)])])
    with pytest.raises(BenchError, match="merged table"):
        compare(merged, merged)


def test_merge_labels_machines_and_writes_csv(tmp_path: Path):
    a = _doc([_row("m", 1, 1.0, 0.1)], host="edge1", cpu="Cortex")
    b = _doc([_row("m", 1, 0.2, 0.01), _row("m", 64, 3.0, 0.1)], host="srv", cpu="EPYC")
    c = copy.deepcopy(b)  # the same machine twice stays distinguishable
    merged = merge([a, b, c], ["a.json", "b.json", "c.json"])
    assert merged["tool"] == "onnxship bench merge" and len(merged["results"]) == 5
    machines = {r["machine"] for r in merged["results"]}
    assert machines == {"edge1 / Cortex", "srv / EPYC [b.json]", "srv / EPYC [c.json]"}
    text = merge_markdown(merged)
    assert "edge1 / Cortex" in text and "Machines:" in text
    out = write_csv(merged, tmp_path / "m.csv")
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and rows[0]["machine"] and rows[0]["isa"] == "avx2"
    write_json(merged, tmp_path / "m.json")
    assert load_result(tmp_path / "m.json")["results"][0]["machine"]


def test_markdown_table_and_csv_of_a_result(tmp_path: Path):
    doc = _doc([_row("m", 1, 1.0, 0.1), _row("m", 64, 10.0, 1.0)])
    doc["results"][1]["threads_exceed_cores"] = True
    text = markdown_table(doc)
    assert text.count("\n| m |") == 2 and "64,000" not in text and "6,400" in text
    assert "threads exceed the usable cores" in text
    write_csv(doc, tmp_path / "r.csv")
    header = (tmp_path / "r.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["model_name", "provider", "io", "batch_size"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("not json", "is not JSON"),
        (json.dumps([1, 2]), "expected a JSON object"),
        (json.dumps({"schema_version": 2}), "schema_version 2, expected 1"),
        (json.dumps({"schema_version": 1, "tool": "x"}), "tool 'x'"),
        (
            json.dumps(
                {
                    "schema_version": 1,
                    "tool": "onnxship bench",
                    "results": [{"model": "m"}],
                    "environment": {},
                }
            ),
            r"results\[0\] lacks keys",
        ),  # fmt: skip
    ],
)
def test_load_result_rejects_bad_files(tmp_path: Path, content: str, match: str):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(BenchError, match=match) as info:
        load_result(path)
    assert info.value.exit_code == 2


def test_load_result_missing_file(tmp_path: Path):
    with pytest.raises(BenchError, match="does not exist"):
        load_result(tmp_path / "none.json")


def test_compare_noise_floor_covers_run_to_run_drift():
    a = _doc([_row("m", 1, 1.00, 0.001)])
    b = _doc([_row("m", 1, 1.03, 0.001)])
    assert compare(a, b)["rows"][0]["verdict"] == "noise"  # 3 % < the 5 % default floor
    assert compare(a, b, noise_floor=0.0)["rows"][0]["verdict"] == "slower"
    with pytest.raises(BenchError, match="noise floor"):
        compare(a, b, noise_floor=1.5)


def test_mann_whitney_u_matches_scipy_with_ties():
    import numpy as np
    from scipy.stats import mannwhitneyu

    from onnxship.runtime_bench.results import mann_whitney_u

    rng = np.random.default_rng(1)
    a = np.round(rng.normal(10, 1, 40), 1)  # rounded: ties on purpose
    b = np.round(rng.normal(10.6, 1, 35), 1)
    u, p = mann_whitney_u(a, b)
    want = mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
    assert u == pytest.approx(float(want.statistic)) and p == pytest.approx(want.pvalue)
    assert mann_whitney_u(a, a)[1] == pytest.approx(1.0)


def _doc_with_rounds(rounds, *, threads=1, cpu="AMD EPYC"):
    import statistics

    from onnxship.core.env import machine_fingerprint

    fp = dict(machine_fingerprint("CPUExecutionProvider"), cpu=cpu)
    p50 = statistics.median(rounds)
    row = {
        "model": "m.onnx", "model_name": "m", "model_sha256": "x",
        "provider": "CPUExecutionProvider", "provider_options": {}, "batch_size": 1,
        "threads": threads, "spinning": True, "warmup": 1, "iterations": 3 * len(rounds),
        "session_create_ms": 1.0, "first_run_ms": 1.0, "p50_ms": p50, "p90_ms": p50 * 1.2,
        "p99_ms": p50 * 1.5, "mean_ms": p50, "std_ms": 0.1, "min_ms": min(rounds),
        "throughput_per_s": 1e3 / p50, "nodes_per_provider": None, "round_stats_ms": rounds,
    }  # fmt: skip
    return {"schema_version": 1, "tool": "onnxship bench", "results": [row],
            "environment": {"cpu": cpu, "fingerprint": fp}}  # fmt: skip


def test_compare_judges_with_a_rank_test_over_rounds_and_marks_fingerprints():
    import numpy as np

    from onnxship.runtime_bench.results import compare, compare_markdown

    rng = np.random.default_rng(0)
    base = list(1.0 + 0.05 * rng.standard_normal(30))
    slower = list(1.2 + 0.05 * rng.standard_normal(30))
    same = list(1.0 + 0.05 * rng.standard_normal(30))
    cmp = compare(_doc_with_rounds(base), _doc_with_rounds(slower))
    row = cmp["rows"][0]
    assert row["verdict"] == "slower" and row["significance"]["method"] == "mann-whitney-u"
    assert row["significance"]["p_value"] < 0.05 and row["across_fingerprints"] is False
    row = compare(_doc_with_rounds(base), _doc_with_rounds(same))["rows"][0]
    assert row["verdict"] == "noise" and row["significance"]["significant"] is False
    # with wide rounds, a different median is called a difference only when significant
    wide = list(1.1 + 0.6 * rng.standard_normal(10))
    row = compare(_doc_with_rounds(base), _doc_with_rounds(wide))["rows"][0]
    assert row["significance"]["method"] == "mann-whitney-u"
    assert row["verdict"] == "noise" or row["significance"]["significant"] is True
    # different machine and threads: marked in the rows and in the table
    cross = compare(_doc_with_rounds(base), _doc_with_rounds(slower, threads=2, cpu="Xeon"))
    row = cross["rows"][0]
    assert row["across_fingerprints"] is True and cross["across_fingerprints"] is True
    assert set(row["fingerprint_diff"]) == {"cpu", "intra_op_threads"}
    assert "ACROSS FINGERPRINTS" in compare_markdown(cross)
    few = compare(_doc_with_rounds(base[:5]), _doc_with_rounds(slower[:5]))["rows"][0]
    assert few["verdict"] == "too few runs"


def test_compare_without_rounds_uses_disjoint_p50_cis():
    from onnxship.runtime_bench.results import compare

    a, b = _doc_with_rounds([1.0] * 10), _doc_with_rounds([1.3] * 10)
    for doc, ci in ((a, [0.98, 1.02]), (b, [1.25, 1.35])):
        row = doc["results"][0]
        del row["round_stats_ms"]
        row["p50_ci_ms"] = ci
    row = compare(a, b)["rows"][0]
    assert row["significance"]["method"] == "p50-ci-overlap" and row["verdict"] == "slower"
    b["results"][0]["p50_ci_ms"] = [0.9, 1.4]  # overlapping: not significant, whatever the p50s
    row = compare(a, b)["rows"][0]
    assert row["significance"]["significant"] is False and row["verdict"] == "noise"
