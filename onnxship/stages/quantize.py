"""quantize: an FP32 `.onnx` to static INT8 (recipe search on the CPU EP, calibrated on the
run's data/val.npz) -> artifacts/<model>-int8.onnx and its calibration set
calibration/<model>-int8-calib.npz.

MNIST: the calibration set is drawn from data/val.npz (class-balanced, seeded) and the budget
measured on its other rows, disjoint as `onnxship quantize` draws from MNIST validation. Own
data: the whole file calibrates and measures the budget, as before."""

from __future__ import annotations

from onnxship.core.artifact import Artifact
from onnxship.stages.base import Run, Stage, Work, onnx_conversion_stage
from onnxship.stages.config import PipelineConfig
from onnxship.stages.data import VAL_NPZ, uses_own_data


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
    own = uses_own_data(run.cfg)
    return int8_from_onnx(
        src, run.cfg.quantize, target, data_dir=run.data_dir, calib_out=calib,
        calib_npz=val_npz if own else None, val_npz=val_npz, calib_from_val=not own,
    )  # fmt: skip
