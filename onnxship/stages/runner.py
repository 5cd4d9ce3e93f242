"""The one runner of a stage plan: `onnxship run`, `api.run` and any test run a plan here.

For each stage, in order: resolve its declared files in the bundle folder (and what it learns
only at run time), then reuse its finished outputs when its record's cache key still matches
(`stage_run.cached_stage`), else run `produce` and write the record. What every stage returns
(run or reused, with the metrics its record holds) is kept in `Run.artifacts`.

Under torchrun rank 0 resolves and decides for every rank; a `distributed` stage runs on every
rank, any other on rank 0 alone while the others wait for its artifact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from onnxship.core.artifact import Artifact
from onnxship.stage_run import cached_stage
from onnxship.stages.base import Run, Stage, Work

T = TypeVar("T")


def run_plan(stages: Sequence[Stage], run: Run) -> dict[str, Artifact]:
    """Run (or reuse) every stage of `stages` in order; returns `run.artifacts`."""
    names = [s.name for s in stages]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"a plan names each stage once; repeated: {', '.join(repeated)}")
    for stage in stages:
        run.artifacts[stage.name] = run_stage_of_plan(stage, run)
    return run.artifacts


def run_stage_of_plan(stage: Stage, run: Run) -> Artifact:
    """One stage of a plan: resolved on rank 0, then reused or run (see the module docstring)."""
    if not stage.recorded:
        return _on_main(
            run, lambda: stage.produce(run, resolve_work(stage, run)), f"the {stage.name} step"
        )
    work = _on_main(run, lambda: resolve_work(stage, run), f"the files of {stage.name}")
    return cached_stage(
        run.ctx,
        stage.name,
        stage=stage.kind,
        config=work.config,
        inputs=list(work.inputs),
        outputs=list(work.outputs),
        produce=lambda: stage.produce(run, work),
        distributed=stage.distributed,
    )


def resolve_work(stage: Stage, run: Run) -> Work:
    """The stage's declared files as paths in the bundle folder, then its `resolve` hook."""
    work = Work(
        inputs=tuple(run.file(p) for p in stage.inputs),
        outputs=tuple(run.file(p) for p in stage.outputs),
        config=stage.config,
    )
    return stage.resolve(run, work) if stage.resolve is not None else work


def _on_main(run: Run, fn: Callable[[], T], what: str) -> T:
    ranks = run.ctx.ranks
    if ranks is None:
        return fn()
    return ranks.on_main(fn, what=what)
