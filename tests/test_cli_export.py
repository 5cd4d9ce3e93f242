"""`onnxship export` and `onnxship fp16` end to end (in process): files, stage records, exit
codes and one-line errors. The export uses --exporter torchscript to stay fast; the dynamo
path is covered by tests/test_export_onnx.py."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from onnxship.cli import main

RECORD_KEYS = {"stage", "config", "inputs", "outputs", "metrics", "started", "finished", "wall_s"}


@pytest.fixture(scope="module")
def cli_run(
    tmp_path_factory: pytest.TempPathFactory, trained_checkpoint: Path, mnist_root: Path
) -> Path:
    out = tmp_path_factory.mktemp("cli")
    rc = main(
        [
            "export", str(trained_checkpoint), "--out", str(out), "--name", "teacher-fp32",
            "--exporter", "torchscript", "--data-dir", str(mnist_root),
        ]
    )  # fmt: skip
    assert rc == 0
    rc = main(
        [
            "fp16",
            str(out / "artifacts" / "teacher-fp32.onnx"),
            "--out",
            str(out),
            "--data-dir",
            str(mnist_root),
        ]
    )
    assert rc == 0
    return out


def test_cli_export_writes_artifact_and_stage_record(
    cli_run: Path, trained_checkpoint: Path
) -> None:
    onnx_path = cli_run / "artifacts" / "teacher-fp32.onnx"
    record = json.loads((cli_run / "stages" / "export.json").read_text())
    assert set(record) == RECORD_KEYS and record["stage"] == "export"
    assert record["inputs"][0]["path"] == str(trained_checkpoint)
    assert record["outputs"][0]["path"] == str(onnx_path)
    assert record["outputs"][0]["bytes"] == onnx_path.stat().st_size
    metrics = record["metrics"]
    assert metrics["exporter"] == "torchscript" and metrics["exporter_requested"] == "torchscript"
    assert metrics["inputs"][0]["shape"] == ["batch", 1, 28, 28]
    assert metrics["parity"]["argmax_agreement"] == 1.0
    assert record["config"]["exporter"] == "torchscript"
    assert sorted(p.name for p in (cli_run / "artifacts").iterdir()) == [
        "teacher-fp16.onnx",
        "teacher-fp32.onnx",
    ]  # no .onnx.data, no temporary files


def test_cli_fp16_writes_artifact_and_stage_record(cli_run: Path) -> None:
    record = json.loads((cli_run / "stages" / "fp16.json").read_text())
    assert set(record) == RECORD_KEYS and record["stage"] == "fp16"
    assert record["inputs"][0]["path"].endswith("teacher-fp32.onnx")
    assert record["outputs"][0]["path"].endswith("teacher-fp16.onnx")
    assert record["metrics"]["parity"]["samples"] == 10_000
    assert record["metrics"]["bytes_ratio"] <= 0.55
    assert record["config"]["keep_io_types"] is True


def test_cli_fp16_honours_block_list_and_names(cli_run: Path, mnist_root: Path, capsys) -> None:
    src = cli_run / "artifacts" / "teacher-fp32.onnx"
    rc = main(
        [
            "fp16", str(src), "--out", str(cli_run), "--name", "teacher-fp16-gemm32",
            "--record-name", "fp16-gemm32", "--op-block-list", "Gemm", "--data-dir", str(mnist_root),
        ]
    )  # fmt: skip
    assert rc == 0
    assert "teacher-fp16-gemm32.onnx" in capsys.readouterr().out
    model = onnx.load(cli_run / "artifacts" / "teacher-fp16-gemm32.onnx")
    fc = {i.name: i.data_type for i in model.graph.initializer if i.name.startswith("fc")}
    assert fc and all(t == onnx.TensorProto.FLOAT for t in fc.values())  # Gemm kept float32
    record = json.loads((cli_run / "stages" / "fp16-gemm32.json").read_text())
    assert record["config"]["op_block_list"] == ["Gemm"]


def test_cli_export_exits_2_for_opset_ort_cannot_run(
    trained_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    rc = main(["export", str(trained_checkpoint), "--out", str(tmp_path), "--opset", "99"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("onnxship export: error: opset 99 cannot be run")
    assert "runs ai.onnx opsets 7.." in err and err.count("\n") == 1


def test_cli_export_exits_2_for_mismatched_checkpoint(
    trained_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(trained_checkpoint.read_bytes())
    sidecar = json.loads(trained_checkpoint.with_suffix(".json").read_text())
    sidecar["widths"]["hidden"] = 64
    bad.with_suffix(".json").write_text(json.dumps(sidecar))
    rc = main(["export", str(bad), "--out", str(tmp_path / "o"), "--exporter", "torchscript"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not match architecture simple_cnn" in err


def test_cli_export_exits_2_for_missing_checkpoint(tmp_path: Path, capsys) -> None:
    rc = main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_cli_fp16_exits_2_for_truncated_onnx_without_traceback(
    cli_run: Path, tmp_path: Path, capsys
) -> None:
    data = (cli_run / "artifacts" / "teacher-fp32.onnx").read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: len(data) // 3])
    rc = main(["fp16", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "corrupt or truncated" in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_fp16_rejects_bad_block_list(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(
            ["fp16", str(tmp_path / "m.onnx"), "--out", str(tmp_path), "--op-block-list", "Gemm;x"]
        )
    assert info.value.code == 2
    assert "comma-separated ONNX op types" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["export", "fp16"])
def test_cli_help_describes_command(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "exit codes" in capsys.readouterr().out
