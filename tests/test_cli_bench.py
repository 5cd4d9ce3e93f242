"""`onnxship bench | bench compare | bench merge | eval`: exit codes, one-line errors, torch-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)
from conftest import TORCH_AND_ONNX, import_blocker  # noqa: E402  (tests/ is on sys.path)

from onnxship.cli import main
from onnxship.core.env import usable_cores

FAST = ["--warmup", "1", "--iterations", "10", "--no-progress"]

# Run the CLI with torch (and the onnx export stack) made unimportable, as on a deployment box.
TORCH_FREE = (
    import_blocker(TORCH_AND_ONNX)
    + """
import onnxship.runtime_bench.accuracy, onnxship.runtime_bench.bench, onnxship.core.env
import onnxship.runtime_bench.inputs, onnxship.runtime_bench.results, onnxship.runtime_bench.session
import onnxship.core.model_meta, onnxship.core.mnist, onnxship.core.onnx_file
from onnxship.cli import main
rc = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
sys.exit(rc)
"""
)


def _torch_free(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ONNXSHIP_DATA_DIR"}
    return subprocess.run(
        [sys.executable, "-c", TORCH_FREE, *args], capture_output=True, text=True, cwd=cwd,
        env=env, timeout=120, check=False,
    )  # fmt: skip


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_bench_help_and_run_without_torch(tmp_path: Path):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    help_run = _torch_free("bench", "--help", cwd=tmp_path)
    assert help_run.returncode == 0, help_run.stderr
    assert "--batch-sizes" in help_run.stdout and "bench compare" in help_run.stdout
    out = tmp_path / "r.json"
    done = _torch_free(
        "bench", str(model), "--batch-sizes", "1,4", *FAST, "--json", str(out), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "| m | CPU | host | 4 |" in done.stdout
    assert [r["batch_size"] for r in json.loads(out.read_text())["results"]] == [1, 4]


def test_cli_eval_without_torch(tmp_path: Path):
    images, labels = tiny.crafted_mnist(100, 61, seed=3)
    root = tiny.write_fake_mnist(tmp_path / "data", images, labels)
    model = tiny.pixel_classifier(tmp_path / "p.onnx")
    out = tmp_path / "eval.json"
    done = _torch_free(
        "eval", str(model), "--data-dir", str(root), "--json", str(out), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "test top-1 0.6100 (61/100)" in done.stdout
    assert json.loads(out.read_text())["correct"] == 61


def test_cli_bench_writes_json_csv_and_markdown(tmp_path: Path, capsys):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    rc = main(["bench", str(model), "--batch-sizes", "2", *FAST, "--json", str(tmp_path / "r.json"),
               "--csv", str(tmp_path / "r.csv"), "--no-spinning", "--threads", "2"])  # fmt: skip
    assert rc == 0
    assert "| m | CPU | host | 2 |" in capsys.readouterr().out
    row = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert row["spinning"] is False and row["threads"] == 2 and row["iterations"] == 10
    assert (tmp_path / "r.csv").read_text().count("\n") == 2


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    good = tiny.linear_classifier(tmp_path / "good.onnx")
    text = tmp_path / "text.onnx"
    text.write_text("definitely not protobuf")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[:2000])
    ext = tiny.external_data_model(tmp_path, name="ext.onnx", sidecar="ext.bin")
    (tmp_path / "ext.bin").unlink()
    seq = tiny.seq_model(tmp_path / "seq.onnx")
    return {
        "not onnx": ([str(text)], "is not an ONNX model"),
        "truncated": ([str(cut)], "is truncated"),
        "missing sidecar": ([str(ext)], "sidecar 'ext.bin', which is missing"),
        "batch 0": ([str(good), "--batch-sizes", "1,0"], "batch size must be >= 1, got 0"),
        "batch -3": ([str(good), "--batch-sizes=-3"], "batch size must be >= 1, got -3"),
        "dynamic dim": ([str(seq)], "axis 1 is 'seq'"),
        "unknown EP": ([str(good), "--provider", "FooExecutionProvider"], "available: "),
        "cuda absent": ([str(good), "--provider", "cuda"], "pip install onnxruntime-gpu"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "not onnx",
        "truncated",
        "missing sidecar",
        "batch 0",
        "batch -3",
        "dynamic dim",
        "unknown EP",
        "cuda absent",
    ],
)
def test_cli_bench_bad_input_exits_2_with_one_line(tmp_path: Path, capsys, case: str):
    import onnxruntime as ort

    if case == "cuda absent" and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this install has CUDA")
    args, expected = _bad_inputs(tmp_path)[case]
    assert main(["bench", *args, *FAST]) == 2
    line = _error_line(capsys)
    assert line.startswith("onnxship bench: error: ") and expected in line


def test_cli_bench_threads_above_cores_warns_and_records(tmp_path: Path, caplog):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    threads = usable_cores() + 2
    out = tmp_path / "r.json"
    rc = main(
        [
            "bench",
            str(model),
            "--batch-sizes",
            "1",
            "--threads",
            str(threads),
            *FAST,
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    assert any("usable CPU cores" in rec.getMessage() for rec in caplog.records)
    doc = json.loads(out.read_text())
    assert doc["config"]["threads_exceed_cores"] is True
    assert doc["results"][0]["threads"] == threads


def test_cli_bench_compare_and_merge(tmp_path: Path, capsys):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    for name in ("a", "b"):
        assert (
            main(
                [
                    "bench",
                    str(model),
                    "--batch-sizes",
                    "1,8",
                    *FAST,
                    "--json",
                    str(tmp_path / f"{name}.json"),
                ]
            )
            == 0
        )
    capsys.readouterr()
    assert main(["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                 "--json", str(tmp_path / "cmp.json")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "B/A p50" in out and "| m | CPU | host | 8 |" in out
    assert len(json.loads((tmp_path / "cmp.json").read_text())["rows"]) == 2
    assert main(["bench", "merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                 "--csv", str(tmp_path / "m.csv"), "--json", str(tmp_path / "m.json")]) == 0  # fmt: skip
    assert "[" in capsys.readouterr().out  # same machine twice: labelled by file
    assert (tmp_path / "m.csv").read_text().count("\n") == 5


def test_cli_bench_compare_fail_above_exits_1(tmp_path: Path, capsys):
    doc = {
        "schema_version": 1, "tool": "onnxship bench", "created": "x", "config": {},
        "environment": {"hostname": "h"},
        "results": [{
            "model": "m.onnx", "model_name": "m", "model_sha256": "s", "provider": "CPUExecutionProvider",
            "provider_options": {}, "batch_size": 1, "threads": 1, "spinning": True, "warmup": 1,
            "iterations": 50, "session_create_ms": 1.0, "first_run_ms": 1.0, "p50_ms": 1.0,
            "p25_ms": 0.99, "p75_ms": 1.01, "p90_ms": 1.02, "p99_ms": 1.1, "mean_ms": 1.0,
            "std_ms": 0.01, "min_ms": 0.98, "throughput_per_s": 1000.0, "nodes_per_provider": None,
        }],
    }  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(doc))
    doc["results"][0].update(p50_ms=1.5, p25_ms=1.49, p75_ms=1.51, throughput_per_s=666.7)
    (tmp_path / "b.json").write_text(json.dumps(doc))
    args = ["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    assert main([*args, "--fail-above", "1.2"]) == 1
    assert "slower than" in capsys.readouterr().err
    assert main([*args, "--fail-above", "1.6"]) == 0


def test_cli_bench_compare_bad_file_exits_2(tmp_path: Path, capsys):
    (tmp_path / "a.json").write_text("{}")
    assert main(["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 2
    assert "schema_version None, expected 1" in _error_line(capsys)


def test_cli_eval_bad_model_exits_2(tmp_path: Path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_text("nope")
    assert main(["eval", str(bad)]) == 2
    assert "is not an ONNX model" in _error_line(capsys)
