"""quantize: an FP32 `.onnx` to static INT8 (recipe search on the CPU EP, calibrated on the
run's data/val.npz) -> artifacts/<model>-int8.onnx and its calibration set
calibration/<model>-int8-calib.npz.

MNIST and own data alike: the calibration set is drawn from data/val.npz (class-balanced,
seeded, `[quantize.calibration] size` rows) and the budget measured on its other rows, disjoint
as `onnxship quantize` draws from MNIST validation; the record's `calibration.split` gives
the rows of each."""

from __future__ import annotations

from onnxship.core.artifact import Artifact
from onnxship.stages.base import Run, Stage, Work, onnx_conversion_stage
from onnxship.stages.config import PipelineConfig
from onnxship.stages.data import VAL_NPZ


def stage(cfg: PipelineConfig, fp32: Stage, name: str) -> Stage:
    """INT8 of the `.onnx` that `fp32` writes; `name` is the record ("quantize-teacher")."""
    return onnx_conversion_stage(
        fp32, name, kind="quantize", precision="int8", config=cfg.quantize, data=VAL_NPZ,
        produce=produce, side_outputs=lambda onnx: (f"calibration/{onnx.name}-calib.npz",),
    )  # fmt: skip


def produce(run: Run, work: Work) -> Artifact:
    from onnxship.calibrate.quantize import int8_from_onnx

    src, val_npz = work.inputs
    target, calib = work.outputs
    return int8_from_onnx(
        src, run.cfg.quantize, target, data_dir=run.data_dir, calib_out=calib,
        val_npz=val_npz, calib_from_val=True,
    )  # fmt: skip
