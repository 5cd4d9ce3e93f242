"""distill: the pruned student fine-tuned against the teacher, and the same steps without it
(the ablation) -> checkpoints/student.pt (+ .json). Data-parallel under torchrun."""

from __future__ import annotations

from onnxship.core.artifact import Artifact
from onnxship.stages.base import Run, Stage, Work, checkpoint_stage_outputs, with_complexity
from onnxship.stages.config import PipelineConfig


def stage(cfg: PipelineConfig, pruned: Stage, teacher: Stage) -> Stage:
    return Stage(
        name="distill",
        kind="distill",
        config=cfg.distill,
        inputs=(pruned.outputs[0], teacher.outputs[0]),
        outputs=checkpoint_stage_outputs("student"),
        produce=produce,
        distributed=True,
    )


def produce(run: Run, work: Work) -> Artifact:
    from onnxship.models.distill import distilled_from_checkpoints

    student, teacher = work.inputs
    artifact = distilled_from_checkpoints(
        student, teacher, run.cfg.distill, work.outputs[0], data_dir=run.data_dir, data=run.data
    )
    return student_complexity(artifact)


def student_complexity(artifact: Artifact) -> Artifact:
    """The distilled student's MACs and parameters as `macs` / `params` (distillation measured
    them as `student_macs` / `student_params`)."""
    m = artifact.metrics
    return with_complexity(artifact, m.get("student_macs"), m.get("student_params"))
