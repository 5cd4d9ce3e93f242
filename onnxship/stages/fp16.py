"""fp16: an FP32 `.onnx` converted to FP16, parity-checked against it on the run's data/test.npz
-> artifacts/<model>-fp16.onnx."""

from __future__ import annotations

from onnxship.core.artifact import Artifact
from onnxship.stages.base import Run, Stage, Work, onnx_conversion_stage
from onnxship.stages.config import PipelineConfig
from onnxship.stages.data import TEST_NPZ


def stage(cfg: PipelineConfig, fp32: Stage, name: str) -> Stage:
    """FP16 of the `.onnx` that `fp32` writes; `name` is the record ("fp16-teacher")."""
    return onnx_conversion_stage(
        fp32, name, kind="fp16", precision="fp16", config=cfg.fp16, data=TEST_NPZ, produce=produce
    )


def produce(run: Run, work: Work) -> Artifact:
    from onnxship.export.fp16 import fp16_from_onnx

    src, test_npz = work.inputs
    return fp16_from_onnx(src, run.cfg.fp16, work.outputs[0], data_dir=run.data_dir, data=test_npz)
