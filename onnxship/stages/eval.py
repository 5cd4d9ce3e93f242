"""eval: every `.onnx` artifact's test top-1, measured in ONNX Runtime on the run's
`data/test.npz` -> results/eval.json and every argmax in results/predictions.npz.
The machine is part of its config: a bundle re-run elsewhere is re-measured there."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from onnxship.core.artifact import Artifact
from onnxship.measure import PREDICTIONS_FILE, eval_key, eval_results
from onnxship.stages.base import Run, Stage, Work
from onnxship.stages.config import PipelineConfig
from onnxship.stages.data import TEST_NPZ


def stage(cfg: PipelineConfig, made: Sequence[Stage]) -> Stage:
    """Evaluate the `.onnx` artifacts of the stages `made`."""
    return Stage(
        name="eval",
        kind="eval",
        config=cfg.eval,
        inputs=(*onnx_inputs(made), TEST_NPZ),
        outputs=("results/eval.json", f"results/{PREDICTIONS_FILE}"),
        produce=produce,
        resolve=on_this_machine,
    )


def onnx_inputs(made: Sequence[Stage]) -> tuple[str, ...]:
    return tuple(s.onnx.path for s in made if s.onnx is not None)


def on_this_machine(run: Run, work: Work) -> Work:
    """The machine in the config."""
    return replace(work, config=eval_key(run.cfg.eval))


def produce(run: Run, work: Work) -> Artifact:
    onnx_paths = {p.stem: p for p in work.inputs if p.suffix == ".onnx"}
    (test_npz,) = [p for p in work.inputs if p.suffix == ".npz"]
    out, predictions = work.outputs
    return eval_results(onnx_paths, run.cfg.eval, out, predictions, data_npz=test_npz)
