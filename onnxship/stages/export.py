"""export: a checkpoint to a parity-checked FP32 `.onnx` -> artifacts/<model>-fp32.onnx
(the records export-teacher, export-student, export-searched)."""

from __future__ import annotations

from onnxship.core.artifact import Artifact
from onnxship.stages.base import BundleOnnx, Run, Stage, Work
from onnxship.stages.config import PipelineConfig


def stage(cfg: PipelineConfig, checkpoint: Stage, model: str) -> Stage:
    """Export the checkpoint `checkpoint` writes, as the bundle's `<model>-fp32`."""
    onnx = BundleOnnx(f"{model}-fp32", model, "fp32", None, checkpoint_stage=checkpoint.name)
    return Stage(
        name=f"export-{model}",
        kind="export",
        config=cfg.export,
        inputs=(checkpoint.outputs[0],),
        outputs=(onnx.path,),
        produce=produce,
        onnx=onnx,
    )


def produce(run: Run, work: Work) -> Artifact:
    from onnxship.export.onnx_export import onnx_from_checkpoint

    return onnx_from_checkpoint(
        work.inputs[0], run.cfg.export, work.outputs[0], data_dir=run.data_dir, data=run.data
    )
