"""bench: every `.onnx` artifact timed on every selected EP (by default the CPU EP, plus CUDA
when a probe session runs there), block-interleaved per EP and batch size -> results/bench.json
in `onnxship bench`'s schema. The machine and the EPs are part of its config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from onnxship.core.artifact import Artifact
from onnxship.measure import bench_key, bench_providers, bench_results
from onnxship.stages.base import Run, Stage, Work
from onnxship.stages.config import PipelineConfig
from onnxship.stages.eval import onnx_inputs


def stage(cfg: PipelineConfig, made: Sequence[Stage]) -> Stage:
    """Time the `.onnx` artifacts of the stages `made`."""
    return Stage(
        name="bench",
        kind="bench",
        config=cfg.bench,
        inputs=onnx_inputs(made),
        outputs=("results/bench.json",),
        produce=produce,
        resolve=providers_here,
    )


def providers_here(run: Run, work: Work) -> Work:
    """The EPs to time on (probed here), the ones skipped with the reason."""
    providers, skipped = bench_providers(run.cfg.bench.providers)
    for probe in skipped:
        run.ctx.progress(f"[note] bench: skipping {probe.provider}: {probe.reason}")
    skipped_json = [{"provider": p.provider, "reason": p.reason} for p in skipped]
    config = bench_key(run.cfg.bench, providers)
    return replace(work, config=config, detail=(providers, skipped_json))


def produce(run: Run, work: Work) -> Artifact:
    providers, skipped = work.detail
    onnx_paths = {p.stem: p for p in work.inputs}
    return bench_results(onnx_paths, run.cfg.bench, providers, skipped, work.outputs[0])
