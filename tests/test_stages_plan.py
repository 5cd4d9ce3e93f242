"""The stage plan of `onnxship run` (onnxship.stages): what `plan(cfg)` lists, and the one
runner on a toy stage: a tiny stage that writes a file, declared the way every stage of the
plan is, run through `run_plan` with its record, cache key and reuse checked."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from onnxship.core.artifact import Artifact, atomic_write_text
from onnxship.stage_run import RunContext
from onnxship.stages.base import BundleOnnx, Run, Stage, Work
from onnxship.stages.config import PipelineConfig, load_config
from onnxship.stages.plan import plan
from onnxship.stages.runner import run_plan

RUN_STAGES = [
    "data", "train", "export-teacher", "prune", "distill", "export-student", "quantize", "fp16",
    "quantize-teacher", "fp16-teacher", "search", "export-searched", "quantize-searched",
    "fp16-searched", "eval", "bench", "manifest",
]  # fmt: skip


def test_plan_lists_the_stages_of_run_in_order() -> None:
    assert [s.name for s in plan(PipelineConfig())] == RUN_STAGES


def test_plan_leaves_out_the_extras_and_the_search_when_the_config_does() -> None:
    cfg = load_config(None)
    cfg = replace(
        cfg,
        extra=replace(cfg.extra, teacher_int8=False, teacher_fp16=False),
        search=replace(cfg.search, enabled=False),
    )
    names = [s.name for s in plan(cfg)]
    assert names == [
        "data", "train", "export-teacher", "prune", "distill", "export-student", "quantize", "fp16",
        "eval", "bench", "manifest",
    ]  # fmt: skip


@pytest.mark.parametrize("factory", [None, "pkg.nets:small"], ids=["mnist", "own"])
def test_plan_writes_the_data_files_first_and_the_onnx_side_reads_them(
    factory: str | None,
) -> None:
    """MNIST as own data: the ONNX-side stages read data/val.npz and data/test.npz."""
    cfg = load_config(None)
    cfg = replace(cfg, model=replace(cfg.model, factory=factory))
    stages = {s.name: s for s in plan(cfg)}
    assert next(iter(stages)) == "data" and not stages["data"].recorded
    assert "data/val.npz" in stages["quantize"].inputs
    assert "data/test.npz" in stages["fp16"].inputs and "data/test.npz" in stages["eval"].inputs
    assert "data/test.npz" in stages["manifest"].inputs


def test_plan_every_bundle_input_is_an_output_of_an_earlier_stage() -> None:
    written: set[str] = set()
    for stage in plan(PipelineConfig()):
        for where in stage.inputs:
            if isinstance(where, str):
                assert where in written, f"{stage.name} reads {where} before any stage writes it"
        written.update(stage.outputs)


def test_plan_every_onnx_artifact_is_evaluated_benchmarked_and_in_the_manifest() -> None:
    stages = {s.name: s for s in plan(PipelineConfig())}
    onnx = [s.onnx for s in stages.values() if s.onnx is not None]
    names = [o.name for o in onnx]
    assert names[:4] == ["teacher-fp32", "student-fp32", "student-int8", "student-fp16"]
    assert [Path(p).stem for p in stages["eval"].inputs if p.endswith(".onnx")] == names
    assert [Path(p).stem for p in stages["bench"].inputs] == names
    assert stages["manifest"].config == {"artifacts": [f"{s}" for s in _onnx_stage_names()]}
    for o in onnx:  # every artifact's MACs come from the stage that wrote its checkpoint
        assert stages[o.checkpoint_stage].outputs[0].startswith("checkpoints/")


def _onnx_stage_names() -> list[str]:
    return [s.name for s in plan(PipelineConfig()) if s.onnx is not None]


# --------------------------------------------------------------------------------------------
# A toy stage, run by the real runner


def write_greeting(run: Run, work: Work) -> Artifact:
    """The toy stage's produce: its input's text, greeted, in its one output."""
    text = work.inputs[0].read_text() if work.inputs else ""
    out = work.outputs[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, f"{work.config['greeting']}, {text.strip() or 'world'}\n")
    return Artifact.from_file(out, stage="toy", config=work.config, metrics={"chars": len(text)})


def toy_stage(greeting: str = "hello", source: Path | None = None) -> Stage:
    """A stage as a stage module declares one: record name, kind, config, inputs, outputs and
    the function that produces its artifact."""
    return Stage(
        name="toy",
        kind="toy",
        config={"greeting": greeting},
        inputs=(source,) if source is not None else (),
        outputs=("results/toy.txt",),
        produce=write_greeting,
    )


def shout_stage(toy: Stage) -> Stage:
    """A second toy stage that reads the first one's output from the bundle."""
    return Stage(
        name="shout",
        kind="toy",
        config={"greeting": "HEY"},
        inputs=(toy.outputs[0],),
        outputs=("results/shout.txt",),
        produce=write_greeting,
    )


def run_toys(out: Path, stages: list[Stage], *, force: bool = False) -> tuple[Run, list[str]]:
    lines: list[str] = []
    ctx = RunContext(out_dir=out, force=force, data_dir=None, progress=lines.append)
    run = Run(cfg=PipelineConfig(), ctx=ctx)
    run_plan(stages, run)
    return run, lines


def test_toy_stage_runs_writes_its_record_and_returns_what_the_record_holds(
    tmp_path: Path,
) -> None:
    source = tmp_path / "name.txt"
    source.write_text("onnxship")
    run, lines = run_toys(tmp_path / "bundle", [toy_stage(source=source)])
    out = tmp_path / "bundle" / "results" / "toy.txt"
    assert out.read_text() == "hello, onnxship\n"
    assert lines == ["[run ] toy ..."] and run.ctx.ran == ["toy"]
    record = json.loads((tmp_path / "bundle" / "stages" / "toy.json").read_text())
    assert record["stage"] == "toy" and record["config"] == {"greeting": "hello"}
    assert [Path(i["path"]).name for i in record["inputs"]] == ["name.txt"]
    assert [Path(o["path"]).name for o in record["outputs"]] == ["toy.txt"]
    assert record["metrics"]["chars"] == len("onnxship") and "cache_key" in record
    artifact = run.artifacts["toy"]
    assert artifact.path == out and artifact.metrics == record["metrics"]
    assert artifact.config == record["config"]


def test_toy_stage_is_reused_when_nothing_changed_and_returns_the_same_artifact(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "bundle"
    first, _ = run_toys(bundle, [toy_stage()])
    again, lines = run_toys(bundle, [toy_stage()])
    assert again.ctx.skipped == ["toy"] and again.ctx.ran == []
    assert lines[0].startswith("[skip] toy")
    made, reused = first.artifacts["toy"], again.artifacts["toy"]
    assert (reused.sha256, reused.metrics, reused.config) == (
        made.sha256,
        made.metrics,
        made.config,
    )


@pytest.mark.parametrize("change", ["config", "input", "output", "force"])
def test_toy_stage_reruns_when_its_config_input_or_output_changed_or_forced(
    tmp_path: Path, change: str
) -> None:
    source = tmp_path / "name.txt"
    source.write_text("a")
    bundle = tmp_path / "bundle"
    run_toys(bundle, [toy_stage(source=source)])
    greeting = "hi" if change == "config" else "hello"
    if change == "input":
        source.write_text("b")
    if change == "output":
        (bundle / "results" / "toy.txt").write_text("tampered\n")
    run, _ = run_toys(bundle, [toy_stage(greeting, source=source)], force=change == "force")
    assert run.ctx.ran == ["toy"]
    assert (bundle / "results" / "toy.txt").read_text().startswith(greeting)


def test_a_stage_reading_an_earlier_stages_output_reruns_only_when_that_output_changed(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "bundle"
    toy = toy_stage()
    run_toys(bundle, [toy, shout_stage(toy)])
    assert (bundle / "results" / "shout.txt").read_text() == "HEY, hello, world\n"
    same, _ = run_toys(bundle, [toy, shout_stage(toy)])
    assert same.ctx.skipped == ["toy", "shout"]
    changed = toy_stage("bye")
    run, _ = run_toys(bundle, [changed, shout_stage(changed)])
    assert run.ctx.ran == ["toy", "shout"]
    assert (bundle / "results" / "shout.txt").read_text() == "HEY, bye, world\n"


def test_a_failing_toy_stage_leaves_no_record_and_no_output(tmp_path: Path) -> None:
    def fail_after_writing(run: Run, work: Work) -> Artifact:
        write_greeting(run, work)
        raise RuntimeError("the stage broke after its output was written")

    broken = replace(toy_stage(), produce=fail_after_writing, outputs=("results/a.txt", "b.txt"))
    with pytest.raises(RuntimeError):
        run_toys(tmp_path / "bundle", [broken])
    assert not (tmp_path / "bundle" / "results" / "a.txt").exists()
    assert not (tmp_path / "bundle" / "stages" / "toy.json").exists()


def test_an_input_outside_the_bundle_is_taken_as_given_even_when_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("name.txt").write_text("relative")
    run_toys(tmp_path / "bundle", [toy_stage(source=Path("name.txt"))])
    assert (tmp_path / "bundle" / "results" / "toy.txt").read_text() == "hello, relative\n"


def test_a_plan_names_each_stage_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="repeated: toy"):
        run_toys(tmp_path / "bundle", [toy_stage(), toy_stage("hi")])


def test_an_unrecorded_step_runs_every_time_and_writes_no_record(tmp_path: Path) -> None:
    step = replace(toy_stage(), name="step", recorded=False)
    for _ in range(2):
        run, lines = run_toys(tmp_path / "bundle", [step])
        assert run.artifacts["step"].path.is_file() and lines == [] and run.ctx.ran == []
    assert not (tmp_path / "bundle" / "stages").exists()


# --------------------------------------------------------------------------------------------
# The manifest from the stages' artifacts


def test_manifest_takes_macs_and_params_from_the_checkpoint_stages_artifact(
    tmp_path: Path,
) -> None:
    from onnxship.manifest import ArtifactSpec, _complexity

    source = Artifact(
        path=tmp_path / "never-written.pt", sha256="0" * 64, bytes=1, stage="train",
        metrics={"macs": 92256, "params": 43706},
    )  # fmt: skip
    spec = ArtifactSpec("teacher-fp32", "teacher", "fp32", None, "export-teacher",
                        source.path, source=source)  # fmt: skip
    # No checkpoint on disk: the numbers can only have come from the artifact.
    assert _complexity(spec, {}) == (92256, 43706)


def test_bundle_onnx_names_its_file_in_the_bundle() -> None:
    onnx = BundleOnnx("student-int8", "student", "int8", "student-fp32", "distill")
    assert onnx.path == "artifacts/student-int8.onnx"


def test_manifest_counts_the_checkpoint_when_its_record_predates_the_macs_metrics(
    tmp_path: Path,
) -> None:
    """A bundle made before the checkpoint stages recorded `macs` and `params`: the manifest
    counts them on the checkpoint (what every manifest did before), once per checkpoint."""
    from onnxship.manifest import ArtifactSpec, _complexity
    from onnxship.models.checkpoint import save_checkpoint
    from onnxship.models.flops import count_macs, count_params
    from onnxship.models.registry import create_model
    from onnxship.stages.base import with_complexity

    model = create_model("simple_cnn")
    old = save_checkpoint(model, tmp_path / "teacher.pt", stage="train", metrics={"epochs": 1})
    spec = ArtifactSpec("teacher-fp32", "teacher", "fp32", None, "export-teacher",
                        old.path, source=old)  # fmt: skip
    expected = (count_macs(model, (1, 1, 28, 28)), count_params(model))
    counted: dict[Path, tuple[int, int]] = {}
    assert _complexity(spec, counted) == expected and counted == {old.path: expected}
    # what the train stage returns now: the same numbers, carried in its metrics
    new = with_complexity(old)
    assert (new.metrics["macs"], new.metrics["params"]) == expected
