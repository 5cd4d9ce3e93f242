"""The pipeline's eval and bench stages (run by the plan's runner): EP selection by a real
probe session, interleaved timing, re-measurement on another machine."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)

import onnxship.runtime_bench.bench as bench_module
from onnxship.measure import (
    BenchSettings,
    EvalSettings,
    bench_providers,
    probe_provider,
)
from onnxship.stage_run import RunContext
from onnxship.stages import bench as bench_stage_module
from onnxship.stages import eval as eval_stage_module
from onnxship.stages.base import BundleOnnx, Run, Stage
from onnxship.stages.config import PipelineConfig
from onnxship.stages.runner import run_plan

CPU_ONLY = "CUDAExecutionProvider" not in ort.get_available_providers()


def test_probe_provider_cpu_is_usable() -> None:
    probe = probe_provider("CPUExecutionProvider")
    assert probe.usable, probe.reason


@pytest.mark.skipif(not CPU_ONLY, reason="this machine's onnxruntime lists CUDA")
def test_probe_provider_cuda_not_usable_with_a_reason_on_a_cpu_only_machine() -> None:
    probe = probe_provider("CUDAExecutionProvider")
    assert not probe.usable
    assert "no CUDAExecutionProvider" in probe.reason and "CPUExecutionProvider" in probe.reason


def test_probe_provider_unknown_ep_is_not_usable() -> None:
    probe = probe_provider("NoSuchExecutionProvider")
    assert not probe.usable and "NoSuchExecutionProvider" in probe.reason


@pytest.mark.skipif(not CPU_ONLY, reason="this machine's onnxruntime lists CUDA")
def test_bench_providers_skips_cuda_saying_why_when_no_session_can_run_on_it() -> None:
    providers, skipped = bench_providers(())
    assert providers == ["CPUExecutionProvider"]
    assert [p.provider for p in skipped] == ["CUDAExecutionProvider"]
    assert skipped[0].reason


def test_bench_providers_keeps_an_explicitly_requested_ep_unprobed() -> None:
    # A requested EP that cannot run fails loudly at session creation (as `bench --provider`).
    assert bench_providers(("cuda", "cpu")) == (
        ["CUDAExecutionProvider", "CPUExecutionProvider"],
        [],
    )


def _made(bundle: Path, builders: dict) -> list[Stage]:  # type: ignore[type-arg]
    """Stand-ins for the stages that wrote `artifacts/<name>.onnx` (built by `builders`)."""
    for folder in ("artifacts", "results", "stages", "data"):  # what `run` prepares
        (bundle / folder).mkdir(parents=True, exist_ok=True)
    made = []
    for name, build in builders.items():
        build(bundle / "artifacts" / f"{name}.onnx")
        onnx = BundleOnnx(name, name, "fp32", None, "train")
        made.append(Stage(name=name, kind="toy", config={}, produce=None, onnx=onnx))  # type: ignore[arg-type]
    return made


def _run(stage: Stage, bundle: Path, cfg: PipelineConfig, data_dir: Path | None = None) -> Run:
    ctx = RunContext(out_dir=bundle, force=False, data_dir=str(data_dir) if data_dir else None)
    run = Run(cfg=cfg, ctx=ctx)
    run_plan([stage], run)
    return run


def test_bench_stage_times_every_artifact_interleaved_in_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "bundle"
    made = _made(
        bundle,
        {
            "a": lambda p: tiny.linear_classifier(p, seed=0),
            "b": lambda p: tiny.linear_classifier(p, seed=1),
            "c": tiny.pixel_classifier,
        },
    )
    calls: list[tuple[int, list[str]]] = []
    real = bench_module.time_blocks

    def spy(fns, cfg, *, reference=None, race=False):  # type: ignore[no-untyped-def]
        calls.append((len(next(iter(fns.values())).args[1]["input"]), list(fns)))
        assert cfg.block == BenchSettings().interleave_block == 4
        return real(fns, cfg, reference=reference, race=race)

    monkeypatch.setattr(bench_module, "time_blocks", spy)
    settings = BenchSettings(batch_sizes=(1, 4), warmup=1, iterations=3, providers=("cpu",))
    cfg = PipelineConfig(bench=settings)
    _run(bench_stage_module.stage(cfg, made), bundle, cfg)
    doc = json.loads((bundle / "results" / "bench.json").read_text())
    # One round-robin per batch size over all three artifacts.
    assert [(b, len(names)) for b, names in calls] == [(1, 3), (4, 3)]
    rows = doc["results"]
    assert len(rows) == 6 and {r["timing"] for r in rows} == {"interleaved"}
    assert {r["iterations"] for r in rows} == {3}
    assert doc["config"]["timing"] == "interleaved"
    record = json.loads((bundle / "stages" / "bench.json").read_text())
    assert record["metrics"]["skipped_providers"] == []


def test_eval_stage_is_reused_on_the_same_machine_and_re_measured_on_another(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest names the environment of the run that writes it and verify demands exact
    predictions there: a bundle re-run on another machine must re-measure, not reuse."""
    import onnxship.core.env as env
    from onnxship.core import mnist
    from onnxship.core.dataset import npz_bytes

    bundle = tmp_path / "bundle"
    made = _made(bundle, {"pixel": tiny.pixel_classifier})
    test_npz = bundle / "data" / "test.npz"
    test_npz.write_bytes(npz_bytes(mnist.split_npz_arrays(mnist_root, "test")))
    cfg = PipelineConfig(eval=EvalSettings())

    def run() -> RunContext:
        return _run(eval_stage_module.stage(cfg, made), bundle, cfg, mnist_root).ctx

    run()
    assert run().skipped == ["eval"]
    monkeypatch.setattr(env, "cpu_model_name", lambda: "another CPU")
    assert run().skipped == []
