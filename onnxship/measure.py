"""The pipeline's measuring stages: accuracy of every artifact on the MNIST test split and
latency of every artifact on every available EP, both through ONNX Runtime (runtime_bench).

Their outputs are files like any stage's (`results/eval.json`, `results/bench.json`, the latter
in `onnxship bench`'s schema so `onnxship bench compare` works on bundles from two machines),
cached on the artifacts' sha256, the settings and (for latency) the machine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxship.core import mnist
from onnxship.core.artifact import Artifact, atomic_write_json, utc_now
from onnxship.errors import PipelineError
from onnxship.stage_run import RunContext, cached_stage

EVAL_SCHEMA = 1


@dataclass(frozen=True)
class BenchSettings:
    """How the pipeline benchmarks every artifact (see `onnxship bench` for the harness)."""

    batch_sizes: tuple[int, ...] = (1, 64)
    threads: int = 1
    warmup: int = 20
    iterations: int = 200
    # Empty = every *available* EP among CPU and CUDA; otherwise names or cpu/cuda.
    providers: tuple[str, ...] = ()

    def validate(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise PipelineError(
                f"bench.batch_sizes must be positive integers, got {self.batch_sizes}"
            )
        if self.threads < 1 or self.iterations < 1 or self.warmup < 0:
            raise PipelineError(
                f"bench: threads and iterations must be >= 1 and warmup >= 0, got threads="
                f"{self.threads}, iterations={self.iterations}, warmup={self.warmup}"
            )


@dataclass(frozen=True)
class EvalSettings:
    batch_size: int = 1000
    provider: str = "cpu"

    def validate(self) -> None:
        if self.batch_size < 1:
            raise PipelineError(f"eval.batch_size must be >= 1, got {self.batch_size}")


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def eval_stage(
    ctx: RunContext,
    settings: EvalSettings,
    onnx_paths: Mapping[str, Path],
    *,
    data_npz: Path | None = None,
) -> dict[str, Any]:
    """Test top-1 of every artifact (MNIST test, or the labelled `data_npz`); returns the
    parsed results/eval.json."""
    from onnxship.runtime_bench.accuracy import evaluate_npz, evaluate_onnx

    if data_npz is not None:
        data_files = [data_npz]
    else:
        raw = mnist.require_files(mnist.resolve_data_root(ctx.data_dir))
        data_files = [raw / mnist.TEST_IMAGES, raw / mnist.TEST_LABELS]
    out = ctx.path("results", "eval.json")

    def produce() -> Artifact:
        results: dict[str, Any] = {}
        for name, path in onnx_paths.items():
            if data_npz is not None:
                results[name] = evaluate_npz(
                    path, data_npz, batch_size=settings.batch_size, provider=settings.provider
                )
                continue
            results[name] = evaluate_onnx(
                path,
                data_dir=ctx.data_dir,
                split="test",
                batch_size=settings.batch_size,
                provider=settings.provider,
            )
        atomic_write_json(
            out,
            {
                "schema_version": EVAL_SCHEMA,
                "created": utc_now(),
                "split": "test",
                "batch_size": settings.batch_size,
                "provider": settings.provider,
                "artifacts": results,
            },
        )
        metrics = {name: {"test_top1": r["top1"]} for name, r in results.items()}
        return Artifact.from_file(out, stage="eval", config=settings, metrics=metrics)

    cached_stage(
        ctx,
        "eval",
        stage="eval",
        config=settings,
        inputs=[*onnx_paths.values(), *data_files],
        outputs=[out],
        produce=produce,
    )
    return _load_json(out)


def available_bench_providers(requested: tuple[str, ...]) -> list[str]:
    """Requested EPs resolved to ORT names; empty = every available one of CPU and CUDA."""
    import onnxruntime as ort

    from onnxship.runtime_bench.session import resolve_provider

    if requested:
        return [resolve_provider(p) for p in requested]
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def bench_stage(
    ctx: RunContext, settings: BenchSettings, onnx_paths: Mapping[str, Path]
) -> dict[str, Any]:
    """Latency of every artifact on every selected EP; returns the parsed results/bench.json."""
    from onnxship.core.env import cpu_model_name, isa_summary
    from onnxship.runtime_bench.bench import BenchConfig, benchmark_models

    providers = available_bench_providers(settings.providers)
    out = ctx.path("results", "bench.json")
    # The machine is part of the key: a bundle re-run elsewhere is re-measured there.
    key_config = {
        "settings": settings,
        "providers": providers,
        "cpu": cpu_model_name(),
        "isa": isa_summary(),
    }

    def produce() -> Artifact:
        merged: dict[str, Any] | None = None
        for provider in providers:
            cfg = BenchConfig(
                provider=provider,
                batch_sizes=tuple(settings.batch_sizes),
                threads=settings.threads,
                warmup=settings.warmup,
                iterations=settings.iterations,
            )
            result = benchmark_models(list(onnx_paths.values()), cfg)
            if merged is None:
                merged = result
                merged["config"] = {"providers": providers, **dict(result.get("config", {}))}
            else:
                merged["results"].extend(result["results"])
        assert merged is not None
        atomic_write_json(out, merged)
        return Artifact.from_file(
            out, stage="bench", config=key_config, metrics={"providers": providers}
        )

    cached_stage(
        ctx,
        "bench",
        stage="bench",
        config=key_config,
        inputs=list(onnx_paths.values()),
        outputs=[out],
        produce=produce,
    )
    return _load_json(out)
