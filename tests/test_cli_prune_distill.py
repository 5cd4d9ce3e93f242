"""`onnxship prune` and `onnxship distill`: records, summaries, exit codes, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from onnxship.cli import main
from onnxship.models.checkpoint import save_checkpoint
from onnxship.models.registry import create_model


def _cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture()
def tiny_teacher(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    save_checkpoint(create_model("tiny_cnn"), path, stage="train", seed=0)
    return path


@pytest.mark.parametrize("command", ["prune", "distill"])
def test_cli_help_exits_zero(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    expected = {"prune": "--macs-budget", "distill": "test_top1_no_kd"}[command]
    assert expected in capsys.readouterr().out


def test_cli_defaults_are_the_library_defaults() -> None:
    """The flags are read off PruneConfig / DistillConfig: no flag given means their defaults
    (prune's target is resolved by the command, as the help says)."""
    from onnxship.cli import build_parser
    from onnxship.commands.common import config_from_args
    from onnxship.models import distill, prune

    parser = build_parser()
    args = parser.parse_args(["prune", "c.pt", "--out", "x"])
    assert config_from_args(args, prune.PruneConfig()) == prune.PruneConfig()
    args = parser.parse_args(["distill", "s.pt", "--out", "x"])
    assert config_from_args(args, distill.DistillConfig()) == distill.DistillConfig()


def test_cli_prune_then_distill_write_contract_records(
    tiny_teacher: Path, mnist_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    rc, stdout, _ = _cli(
        capsys, "prune", tiny_teacher, "--out", out, "--ratios", "0.5", "--data-dir", mnist_root
    )
    assert rc == 0
    assert stdout.count("\n") == 1 and "29,824 -> " in stdout
    student = out / "checkpoints" / "student-pruned.pt"
    record = json.loads((out / "stages" / "prune.json").read_text())
    assert record["stage"] == "prune"
    for key in ("macs_before", "macs_after", "params_before", "params_after"):
        assert isinstance(record["metrics"][key], int), key
    assert record["metrics"]["widths_after"] == {"conv_channels": 2, "hidden": 4}
    assert record["outputs"][0]["path"] == str(student)
    assert record["config"]["width_ratios"] == 0.5

    rc, stdout, _ = _cli(
        capsys,
        "distill",
        student,
        "--teacher",
        tiny_teacher,
        "--out",
        out,
        "--epochs",
        "0.02",
        "--data-dir",
        mnist_root,
    )
    assert rc == 0, stdout
    assert stdout.count("\n") == 1 and "no-KD" in stdout
    record = json.loads((out / "stages" / "distill.json").read_text())
    metrics = record["metrics"]
    for key in ("test_top1_kd", "test_top1_no_kd", "val_top1_kd", "val_top1_no_kd"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["steps"] == 9  # round(430 * 0.02)
    assert (out / "checkpoints" / "student.pt").is_file()
    assert {e["path"] for e in record["inputs"]} >= {str(student), str(tiny_teacher)}


def test_cli_prune_unstructured_reports_sparsity_and_gzip(
    tiny_teacher: Path, mnist_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sparse"
    rc, stdout, _ = _cli(
        capsys,
        "prune",
        tiny_teacher,
        "--out",
        out,
        "--method",
        "unstructured",
        "--sparsity",
        "0.9",
        "--name",
        "sparse",
        "--data-dir",
        mnist_root,
    )
    assert rc == 0 and "sparsity 90.0 %" in stdout
    metrics = json.loads((out / "stages" / "prune.json").read_text())["metrics"]
    assert metrics["macs_after"] == metrics["macs_before"]  # dense inference: no faster
    assert metrics["gzip_bytes_after"] < metrics["gzip_bytes_before"]
    assert set(metrics["sparsity_per_layer"]) == {"conv1", "fc1", "fc2", "total"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ratios", "1.5"], r"width ratio .*1.5 is outside \(0, 1\)"),
        (["--ratios", "0"], r"outside \(0, 1\)"),
        (["--macs-budget", "-0.1"], r"MACs budget -0.1 is outside \(0, 1\)"),
        (["--macs-budget", "0.001"], r"would remove every channel of conv1 \(conv_channels\)"),
        (["--ratios", "hidden=0.01"], r"would remove every channel of fc1 \(hidden\)"),
        (["--sparsity", "0.5"], "need --method unstructured"),
    ],
)
def test_cli_prune_bad_target_exits_2_and_says_why(
    flags: list[str],
    message: str,
    tiny_teacher: Path,
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, _, err = _cli(
        capsys, "prune", tiny_teacher, "--out", tmp_path / "o", "--data-dir", mnist_root, *flags
    )
    assert rc == 2
    assert err.startswith("onnxship prune: error: ")
    assert re.search(message, err), err


def test_cli_prune_missing_checkpoint_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _cli(capsys, "prune", tmp_path / "none.pt", "--out", tmp_path / "o")
    assert rc == 2 and "none.pt does not exist" in err


def test_cli_distill_without_teacher_exits_2(
    tiny_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _cli(capsys, "distill", tiny_teacher, "--out", tmp_path / "o")
    assert rc == 2
    assert "needs a teacher checkpoint and none was given" in err and "--teacher" in err
    assert not (tmp_path / "o").exists()


def test_cli_distill_teacher_of_other_architecture_exits_2(
    tiny_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "bn.pt"
    save_checkpoint(create_model("bn_cnn"), other, stage="train")
    rc, _, err = _cli(capsys, "distill", tiny_teacher, "--teacher", other, "--out", tmp_path / "o")
    assert rc == 2 and "is a bn_cnn but student" in err and "is a tiny_cnn" in err


def test_cli_distill_bad_alpha_exits_2(
    tiny_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _cli(
        capsys,
        "distill",
        tiny_teacher,
        "--teacher",
        tiny_teacher,
        "--out",
        tmp_path,
        "--alpha",
        "2",
    )
    assert rc == 2 and "alpha must be in [0, 1]" in err


@pytest.mark.parametrize("command", ["prune", "distill"])
def test_cli_missing_mnist_exits_2_and_names_the_folder(
    command: str,
    tiny_teacher: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ONNXSHIP_NO_DOWNLOAD", "1")
    empty = tmp_path / "empty-data"
    empty.mkdir()
    extra = ["--teacher", str(tiny_teacher)] if command == "distill" else []
    rc, _, err = _cli(
        capsys, command, tiny_teacher, "--out", tmp_path / "o", "--data-dir", empty, *extra
    )
    assert rc == 2
    assert "empty-data" in err and "train-images-idx3-ubyte" in err
