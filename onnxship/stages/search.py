"""search: the latency-searched student (onnxship.search): candidates screened by their ONNX
latency on this machine, the plausible ones trained with the teacher and chosen on validation
-> checkpoints/searched.pt (+ .json). The built-in MNIST task searches its own space; a
user's factory model searches width multipliers of its keyword arguments, on the user's data."""

from __future__ import annotations

from onnxship.core.artifact import Artifact
from onnxship.stages.base import Run, Stage, Work, checkpoint_stage_outputs, with_complexity
from onnxship.stages.config import PipelineConfig


def stage(cfg: PipelineConfig, teacher: Stage, student: Stage, teacher_onnx: Stage) -> Stage:
    assert teacher_onnx.onnx is not None, "the search times candidates against an .onnx teacher"
    return Stage(
        name="search",
        kind="search",
        config=cfg.search,
        inputs=(teacher.outputs[0], student.outputs[0], teacher_onnx.onnx.path),
        outputs=checkpoint_stage_outputs("searched"),
        produce=produce,
    )


def produce(run: Run, work: Work) -> Artifact:
    from onnxship.search import searched_from_checkpoints

    teacher, student, teacher_onnx = work.inputs
    artifact = searched_from_checkpoints(
        teacher, student, teacher_onnx, run.cfg.search, work.outputs[0],
        data_dir=run.data_dir, data=run.data,
    )  # fmt: skip
    return with_complexity(artifact)
