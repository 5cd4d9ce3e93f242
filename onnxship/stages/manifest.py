"""manifest: manifest.json from the artifacts the stages returned and the measurements of eval
and bench, then report.md and plots/ from it. Runs every time (no record of its own): its
`created` time and the `targets` still valid change between runs."""

from __future__ import annotations

import json
from collections.abc import Sequence

from onnxship.core.artifact import Artifact, jsonable
from onnxship.manifest import ArtifactSpec, build_manifest, write_bundle_docs
from onnxship.stages.base import Run, Stage, Work
from onnxship.stages.config import PipelineConfig
from onnxship.stages.data import TEST_NPZ, dataset_block


def stage(cfg: PipelineConfig, made: Sequence[Stage], teacher: Stage) -> Stage:
    """The manifest of the `.onnx` artifacts of the stages `made`; its `dataset` block is the
    one the checkpoint `teacher` writes records."""
    return Stage(
        name="manifest",
        kind="manifest",
        config={"artifacts": [s.name for s in made if s.onnx is not None]},
        inputs=("results/eval.json", "results/bench.json", teacher.outputs[0], TEST_NPZ),
        outputs=("manifest.json",),
        produce=lambda run, work: write_manifest(run, work, made),
        recorded=False,
    )


def artifact_specs(run: Run, made: Sequence[Stage]) -> list[ArtifactSpec]:
    """What the manifest says about each `.onnx` artifact, from the artifacts its stage and
    the stage of its checkpoint returned."""
    specs = []
    for s in made:
        if s.onnx is None:
            continue
        source = run.artifacts[s.onnx.checkpoint_stage]
        specs.append(
            ArtifactSpec(
                s.onnx.name, s.onnx.model, s.onnx.precision, s.onnx.parent, s.name,
                source.path, onnx=run.artifacts[s.name], source=source,
            )
        )  # fmt: skip
    return specs


def write_manifest(run: Run, work: Work, made: Sequence[Stage]) -> Artifact:
    eval_json, bench_json = (json.loads(p.read_text()) for p in work.inputs[:2])
    teacher_ckpt, test_npz = work.inputs[2:]
    dataset = dataset_block(teacher_ckpt, test_npz, run.out_dir)
    path = build_manifest(
        run.ctx, jsonable(run.cfg), run.cfg.bench, artifact_specs(run, made), eval_json,
        bench_json, dataset=dataset,
    )  # fmt: skip
    write_bundle_docs(run.out_dir, path)
    return Artifact.from_file(path, stage="manifest")
