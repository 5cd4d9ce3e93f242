"""Calibration rows never measure the accuracy budget: one validation `.npz` used for both (the
pipeline's data/val.npz for MNIST and own data, `quantize --calib-npz X --val-npz X`) is split
by the seeded draw - `size` rows calibrate, the budget is measured on the others - and the
record says how many rows each got and that they are disjoint. Two different files are used as
given. Too few rows to split is a one-line error with the numbers and the fix.

Real ORT sessions on `tiny_onnx.linear_classifier` (784 -> 10) with random rows whose first
pixel is the row's number, so every calibration row can be traced back to its position.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)

from onnxship.calibrate.calibration_data import (
    CalibrationConfig,
    InputSpec,
    calibration_and_evaluation_from_npz,
)
from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.quantize import LatencyConfig, QuantizeConfig, int8_from_onnx
from onnxship.calibrate.recipes import exact_recipe_on
from onnxship.cli import main
from onnxship.core.env import detected_integer_class

SPEC = InputSpec(name="input", shape=("batch", 1, 28, 28), ort_type="tensor(float)")
RECIPE = exact_recipe_on("qdq-u8s8-pertensor-minmax", detected_integer_class()).name
FAST = LatencyConfig(batch_sizes=(1,), seconds_per_batch_size=0.05, min_iterations=2)
ROWS, SIZE = 96, 32


def _val(path: Path, n: int = ROWS, *, labels: bool = True) -> Path:
    """n rows, row i's first pixel = i (traceable); labels 0..9 in turn."""
    x = np.random.default_rng(0).standard_normal((n, 1, 28, 28)).astype(np.float32)
    x[:, 0, 0, 0] = np.arange(n, dtype=np.float32)
    arrays = {"x": x, "y": np.arange(n, dtype=np.int64) % 10} if labels else {"x": x}
    np.savez(path, **arrays)
    return path


def _cfg() -> QuantizeConfig:
    return QuantizeConfig(
        recipe=RECIPE, fallback=False, max_drop=0.9, latency=FAST,
        calibration=CalibrationConfig(size=SIZE, batch_size=16),
    )  # fmt: skip


def _calibrated_rows(calib_npz: Path) -> list[int]:
    with np.load(calib_npz) as data:
        return sorted(int(v) for v in data["input"][:, 0, 0, 0])


def test_one_npz_for_calibration_and_budget_is_split_into_disjoint_rows(tmp_path: Path) -> None:
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    val = _val(tmp_path / "val.npz")
    calib_out = tmp_path / "calib.npz"
    art = int8_from_onnx(model, _cfg(), tmp_path / "m-int8.onnx", calib_npz=val, val_npz=val,
                         calib_out=calib_out)  # fmt: skip
    m = art.metrics
    overlap = m["calibration"]["samples"] + m["val_samples"] - ROWS
    assert overlap == 0, f"{overlap} rows both calibrate and measure the budget"
    assert m["calibration"]["samples"] == SIZE and m["val_samples"] == ROWS - SIZE
    split = m["calibration"]["split"]
    assert split["disjoint"] is True and "seed 0" in split["rule"]
    assert (split["calibration_rows"], split["budget_rows"]) == (SIZE, ROWS - SIZE)
    assert m["budget"]["data"] == f"npz:val.npz minus the {SIZE} calibration rows"
    rows = _calibrated_rows(calib_out)
    assert len(set(rows)) == SIZE and set(rows) <= set(range(ROWS))
    # the same seeded, class-balanced draw the MNIST path makes: every class, 3 or 4 rows each
    labels = np.bincount(np.asarray(rows) % 10, minlength=10)
    assert labels.min() >= 3 and labels.max() <= 4


def test_a_byte_identical_copy_counts_as_the_same_file_and_a_different_file_is_used_whole(
    tmp_path: Path,
) -> None:
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    val = _val(tmp_path / "val.npz")
    copy = tmp_path / "copy.npz"
    shutil.copyfile(val, copy)
    same = int8_from_onnx(model, _cfg(), tmp_path / "a.onnx", calib_npz=copy, val_npz=val)
    assert same.metrics["val_samples"] == ROWS - SIZE
    assert same.metrics["calibration"]["split"]["disjoint"] is True
    other = _val(tmp_path / "other.npz", 48)
    apart = int8_from_onnx(model, _cfg(), tmp_path / "b.onnx", calib_npz=other, val_npz=val)
    split = apart.metrics["calibration"]["split"]
    assert split["disjoint"] is None and "other.npz" in split["rule"]
    assert (split["calibration_rows"], split["budget_rows"]) == (48, ROWS)


def test_the_draw_without_labels_is_seeded_and_the_budget_is_fidelity_on_the_other_rows(
    tmp_path: Path,
) -> None:
    val = _val(tmp_path / "val.npz", labels=False)
    cfg = CalibrationConfig(size=SIZE, batch_size=16)
    calib, evalset = calibration_and_evaluation_from_npz(val, [SPEC], cfg)
    again, _ = calibration_and_evaluation_from_npz(val, [SPEC], cfg)
    assert calib.sha256() == again.sha256() and calib.labels is None
    drawn = set(calib.inputs[:, 0, 0, 0].astype(int))
    held = set(evalset.inputs["input"][:, 0, 0, 0].astype(int))
    assert len(drawn) == SIZE and not drawn & held and drawn | held == set(range(ROWS))
    other, _ = calibration_and_evaluation_from_npz(
        val, [SPEC], CalibrationConfig(size=SIZE, batch_size=16, seed=1)
    )
    assert other.sha256() != calib.sha256()
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    art = int8_from_onnx(model, _cfg(), tmp_path / "q.onnx", calib_npz=val, val_npz=val)
    assert art.metrics["budget"]["metric"] == "top1_agreement"
    assert "uniform (no labels)" in art.metrics["calibration"]["split"]["rule"]


def test_too_few_rows_to_split_is_refused_with_expected_found_and_the_fix(tmp_path: Path) -> None:
    val = _val(tmp_path / "val.npz", 2 * SIZE - 1)
    with pytest.raises(CalibrateError) as info:
        calibration_and_evaluation_from_npz(
            val, [SPEC], CalibrationConfig(size=SIZE, batch_size=16)
        )
    message = str(info.value)
    assert f"expected >= {2 * SIZE} rows, found {2 * SIZE - 1}" in message
    assert f"at most {SIZE - 1}" in message and "\n" not in message


def test_cli_quantize_same_calib_and_val_npz_records_disjoint_rows_and_refuses_too_few(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    model = tiny.linear_classifier(tmp_path / "m.onnx")
    val = _val(tmp_path / "val.npz")
    args = ["quantize", str(model), "--recipe", RECIPE, "--no-fallback", "--max-drop", "0.9",
            "--bench-seconds", "0.05", "--batch-sizes", "1", "--calib-batch", "16",
            "--calib-npz", str(val), "--val-npz", str(val)]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "ok"), "--calib-size", str(SIZE)]) == 0
    record = json.loads((tmp_path / "ok" / "stages" / "quantize.json").read_text())
    split = record["metrics"]["calibration"]["split"]
    assert split["disjoint"] is True and split["budget_rows"] == ROWS - SIZE
    assert len(_calibrated_rows(tmp_path / "ok" / "calibration" / "m-int8-calib.npz")) == SIZE
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "no"), "--calib-size", "64"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "expected >= 128 rows, found 96" in err[0], err
    assert not (tmp_path / "no" / "artifacts").exists() or not any(
        (tmp_path / "no" / "artifacts").iterdir()
    )
