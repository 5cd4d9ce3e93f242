"""train: the teacher, from scratch (a registry model on MNIST, or a user's factory model on
their data) -> checkpoints/teacher.pt (+ .json). Data-parallel under torchrun."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from onnxship.core.artifact import Artifact
from onnxship.stage_run import mnist_inputs
from onnxship.stages.base import Run, Stage, Work, checkpoint_stage_outputs, with_complexity
from onnxship.stages.config import PipelineConfig
from onnxship.stages.data import TEST_NPZ, VAL_NPZ, uses_own_data


def stage(cfg: PipelineConfig) -> Stage:
    config: Any = cfg.train
    inputs: tuple[str | Path, ...] = ()
    if uses_own_data(cfg):
        config = {"train": cfg.train, "model": cfg.model, "data": cfg.data}
        inputs = tuple(cfg.data.files()) or (VAL_NPZ, TEST_NPZ)
        if cfg.model.state_dict:
            inputs = (*inputs, Path(cfg.model.state_dict))
    return Stage(
        name="train",
        kind="train",
        config=config,
        inputs=inputs,
        outputs=checkpoint_stage_outputs("teacher"),
        produce=produce,
        distributed=True,
        resolve=found_inputs,
    )


def found_inputs(run: Run, work: Work) -> Work:
    """MNIST's four files once checked (downloaded when missing), as `onnxship train` records
    them; with a user's factory, its module's file (editing it retrains)."""
    from onnxship.models.training_data import ensure_mnist

    if run.own is None:
        root = ensure_mnist(run.data_dir)
        return replace(work, inputs=(*work.inputs, *mnist_inputs(root)))
    if run.own.source is not None and run.own.source.is_file():
        return replace(work, inputs=(*work.inputs, run.own.source))
    return work


def produce(run: Run, work: Work) -> Artifact:
    cfg = run.cfg
    return trained_checkpoint(
        cfg.train,
        work.outputs[0],
        data_dir=cfg.data_dir,
        data=run.data,
        factory=cfg.model.to_factory(),
        initial_state=cfg.model.state_dict,
        ranks=run.ctx.ranks,
    )


def trained_checkpoint(
    train_cfg: Any,
    out: Path,
    *,
    data_dir: str | os.PathLike[str] | None,
    data: Any = None,
    factory: Any = None,
    initial_state: str | None = None,
    ranks: Any = None,
) -> Artifact:
    """`models.train.trained_from_data`, and the model's MACs and parameters in its metrics
    (counted by the writing rank only)."""
    from onnxship.models.train import trained_from_data

    artifact = trained_from_data(
        train_cfg, out, data_dir=data_dir, data=data, factory=factory, initial_state=initial_state
    )
    if ranks is not None and not ranks.is_main:
        return artifact
    return with_complexity(artifact)
