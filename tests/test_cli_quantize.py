"""`onnxship quantize` end to end: files and stage record per CONTRACT.md, exit codes 0/1/2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_calibrate_stage import build_simplecnn_onnx

from onnxship.api import default_artifact_name
from onnxship.calibrate.calibration_data import CalibrationConfig
from onnxship.calibrate.recipes import PRESET_NAMES
from onnxship.cli import main

RECIPE = "qop-u8s8-pertensor-minmax-linear"
FAST = ["--bench-seconds", "0.05", "--batch-sizes", "1,8"]


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    folder = tmp_path_factory.getbasetemp() / "calibrate_simplecnn"
    folder.mkdir(exist_ok=True)
    return build_simplecnn_onnx(folder, mnist_root)


def _cli(*argv: str) -> int:
    return main(["quantize", *argv])


def test_cli_quantize_help_lists_the_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["quantize", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in PRESET_NAMES)
    assert "--calib-npz" in text and "--max-drop" in text and "never the test split" in text


def test_cli_quantize_defaults_are_the_library_defaults() -> None:
    """The flags are read off QuantizeConfig: no flag given means QuantizeConfig()."""
    from onnxship.calibrate.quantize import QuantizeConfig
    from onnxship.cli import build_parser
    from onnxship.commands.common import config_from_args

    args = build_parser().parse_args(["quantize", "m.onnx", "--out", "x"])
    assert config_from_args(args, QuantizeConfig()) == QuantizeConfig()
    args = build_parser().parse_args(
        ["quantize", "m.onnx", "--out", "x", "--no-fallback", "--exclude-node", "n1",
         "--calib-size", "64", "--batch-sizes", "8", "--recipe", RECIPE]
    )  # fmt: skip
    cfg = config_from_args(args, QuantizeConfig())
    assert (cfg.fallback, cfg.exclude_nodes, cfg.calibration.size, cfg.latency.batch_sizes) == (
        False, ("n1",), 64, (8,),
    )  # fmt: skip
    assert cfg.recipe == RECIPE and cfg.calibration.batch_size == CalibrationConfig().batch_size
    assert default_artifact_name(Path("a/student-fp32.onnx"), "int8") == "student-int8"
    assert default_artifact_name(Path("teacher.onnx"), "int8") == "teacher-int8"


def test_cli_quantize_writes_artifact_calibration_and_stage_record(
    model: Path, tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    rc = _cli(
        str(model), "--out", str(out), "--name", "student-int8", "--recipe", RECIPE,
        "--data-dir", str(mnist_root), "--calib-size", "128", *FAST,
    )  # fmt: skip
    assert rc == 0
    artifact = out / "artifacts" / "student-int8.onnx"
    calib = out / "calibration" / "student-int8-calib.npz"
    assert artifact.is_file() and calib.is_file()
    record = json.loads((out / "stages" / "quantize.json").read_text())
    assert set(record) == {
        "stage",
        "config",
        "inputs",
        "outputs",
        "metrics",
        "started",
        "finished",
        "wall_s",
    }
    assert record["stage"] == "quantize"
    # The config is the stage's QuantizeConfig, as `onnxship run` records it; the artifact's
    # name is in the outputs, its source in the inputs.
    assert record["config"]["recipe"] == RECIPE and "name" not in record["config"]
    assert [Path(i["path"]) for i in record["inputs"]] == [model]
    assert [Path(o["path"]) for o in record["outputs"]] == [artifact, calib]
    assert all(len(o["sha256"]) == 64 and o["bytes"] > 0 for o in record["outputs"])
    metrics = record["metrics"]
    assert metrics["recipe"]["name"] == RECIPE
    assert [c["name"] for c in metrics["candidates"]] == ["fp32", RECIPE]
    assert set(metrics["candidates"][1]["latency"]) == {"1", "8"}
    assert {n["node"] for n in metrics["nodes_in_float"]} >= {"node_conv2d"}
    assert metrics["calibration"]["samples"] == 128
    assert metrics["calibration"]["sha256"] == record["outputs"][1]["sha256"]
    assert "quantize:" in capsys.readouterr().out


def test_cli_quantize_unknown_recipe_exits_2_listing_recipes(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(str(model), "--out", str(tmp_path), "--recipe", "turbo") == 2
    err = capsys.readouterr().err
    assert "onnxship quantize: error: unknown recipe 'turbo'" in err
    assert all(name in err for name in PRESET_NAMES)
    assert not (tmp_path / "artifacts").exists()


def test_cli_quantize_nan_calibration_exits_2(
    model: Path, tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.zeros((64, 1, 28, 28), np.float32)
    x[5] = np.nan
    np.savez(tmp_path / "c.npz", input=x)
    rc = _cli(
        str(model), "--out", str(tmp_path / "o"), "--calib-npz", str(tmp_path / "c.npz"),
        "--recipe", RECIPE, "--data-dir", str(mnist_root), *FAST,
    )  # fmt: skip
    assert rc == 2
    assert "contains NaN or Inf in 1 of 64 samples" in capsys.readouterr().err


def test_cli_quantize_missing_metadata_exits_2_asking_for_mean_std(
    model: Path, tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = build_simplecnn_onnx(model.parent, mnist_root, metadata=False)
    rc = _cli(str(bare), "--out", str(tmp_path), "--recipe", RECIPE, "--data-dir", str(mnist_root))
    assert rc == 2
    assert "pass --mean and --std" in capsys.readouterr().err


def test_cli_quantize_out_of_range_calibration_without_fallback_exits_1(
    model: Path, tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Calibration inputs 100x smaller than real ones: every range is too narrow, real data
    saturates, no recipe is within budget -> exit 1 naming the best found, nothing written."""
    from onnxship.core import mnist

    val = mnist.load_split(mnist_root, "val")
    x = mnist.normalize(val.images[:64]) * 0.01
    np.savez(tmp_path / "tiny.npz", input=x)
    out = tmp_path / "o"
    rc = _cli(
        str(model), "--out", str(out), "--calib-npz", str(tmp_path / "tiny.npz"),
        "--recipe", "qdq-u8s8-perchannel-minmax", "--no-fallback",
        "--data-dir", str(mnist_root), *FAST,
    )  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "no INT8 recipe" in err and "best found qdq-u8s8-perchannel-minmax" in err
    assert not list((out / "artifacts").iterdir()) and not list((out / "calibration").iterdir())
    assert not (out / "stages").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-drop", "2"], "expected a fraction in [0, 1)"),
        (["--calib-size", "0"], "expected a positive integer"),
        (["--mean", "abc"], "expected comma-separated numbers"),
    ],
)
def test_cli_quantize_bad_arguments_exit_2(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        _cli(str(model), "--out", str(tmp_path), *argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
