"""prune: the teacher cut to the student's size (`[prune]`, by default <= 10 % of its MACs)
-> checkpoints/student-pruned.pt (+ .json)."""

from __future__ import annotations

from onnxship.core.artifact import Artifact
from onnxship.stages.base import Run, Stage, Work, checkpoint_stage_outputs
from onnxship.stages.config import PipelineConfig


def stage(cfg: PipelineConfig, teacher: Stage) -> Stage:
    return Stage(
        name="prune",
        kind="prune",
        config=cfg.prune,
        inputs=(teacher.outputs[0],),
        outputs=checkpoint_stage_outputs("student-pruned"),
        produce=produce,
    )


def produce(run: Run, work: Work) -> Artifact:
    from onnxship.models.prune import pruned_from_checkpoint

    return pruned_from_checkpoint(
        work.inputs[0], run.cfg.prune, work.outputs[0], data_dir=run.data_dir, data=run.data
    )
