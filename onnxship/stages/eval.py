"""eval: every `.onnx` artifact's test top-1, measured in ONNX Runtime on the MNIST test set
(or the run's `data/test.npz`) -> results/eval.json and every argmax in results/predictions.npz.
The machine is part of its config: a bundle re-run elsewhere is re-measured there."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from onnxship.core.artifact import Artifact
from onnxship.measure import PREDICTIONS_FILE, eval_data_files, eval_key, eval_results
from onnxship.stages.base import Run, Stage, Work
from onnxship.stages.config import PipelineConfig
from onnxship.stages.data import test_inputs, uses_own_data


def stage(cfg: PipelineConfig, made: Sequence[Stage]) -> Stage:
    """Evaluate the `.onnx` artifacts of the stages `made`."""
    return Stage(
        name="eval",
        kind="eval",
        config=cfg.eval,
        inputs=(*onnx_inputs(made), *test_inputs(cfg)),
        outputs=("results/eval.json", f"results/{PREDICTIONS_FILE}"),
        produce=produce,
        resolve=on_this_machine,
    )


def onnx_inputs(made: Sequence[Stage]) -> tuple[str, ...]:
    return tuple(s.onnx.path for s in made if s.onnx is not None)


def on_this_machine(run: Run, work: Work) -> Work:
    """The machine in the config; MNIST's test files (checked) after the artifacts."""
    config = eval_key(run.cfg.eval)
    if uses_own_data(run.cfg):
        return replace(work, config=config)
    mnist_files = eval_data_files(run.data_dir, None)
    return replace(work, config=config, inputs=(*work.inputs, *mnist_files))


def produce(run: Run, work: Work) -> Artifact:
    onnx_paths = {p.stem: p for p in work.inputs if p.suffix == ".onnx"}
    own_test = [p for p in work.inputs if p.suffix == ".npz"]
    out, predictions = work.outputs
    return eval_results(
        onnx_paths, run.cfg.eval, out, predictions, data_dir=run.data_dir,
        data_npz=own_test[0] if own_test else None,
    )  # fmt: skip
