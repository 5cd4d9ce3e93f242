"""manifest.json (schema_version 1, see CONTRACT.md): what a deployer trusts months later.

Built by `onnxship run` from the stage records, the artifacts themselves and the measuring
stages; read by `verify` and `gate` (which stay torch-free: this module's torch-using part,
`build_manifest`, is only called by the pipeline).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from onnxship import __version__
from onnxship.core.artifact import atomic_write_json, utc_now
from onnxship.errors import PipelineError
from onnxship.measure import BenchSettings
from onnxship.stage_run import RunContext

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REQUIRED_ARTIFACTS = ("teacher-fp32", "student-fp32", "student-int8", "student-fp16")
LATENCY_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The commit of the onnxship source tree that ran, or None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", os.fspath(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit or None


def environment() -> dict[str, Any]:
    import onnxruntime as ort

    from onnxship.core.env import (
        capture_environment,
        cpu_model_name,
        integer_class_record,
        isa_summary,
    )

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnx": _version("onnx"),
        "onnxruntime": ort.__version__,
        "cpu": cpu_model_name(),
        "isa": isa_summary(),
        **integer_class_record(),
        "available_providers": list(ort.get_available_providers()),
    }
    details = capture_environment()
    env["details"] = {k: v for k, v in details.items() if k not in env}
    return env


def _latency_for(path: Path, bench: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    latency: dict[str, dict[str, dict[str, float]]] = {}
    for row in bench.get("results", []):
        # On CUDA the harness also reports device-resident rows; the manifest's number is the
        # end-to-end one (numpy in and out, copies included), comparable with the CPU EP's.
        if Path(row["model"]).name != path.name or row.get("io", "host") not in (
            "host",
            "end_to_end",
        ):
            continue
        per_ep = latency.setdefault(row["provider"], {})
        per_ep[str(row["batch_size"])] = {k: row[k] for k in LATENCY_KEYS}
    return latency


def integer_class_fields(
    precision: str, record: Mapping[str, Any], accuracy: Mapping[str, Any]
) -> dict[str, Any]:
    """The CPU integer class an artifact's accuracy and latency were measured on, its accuracy
    per class (`accuracy_by_class`, one entry per class measured; `verify --record-class` adds
    the target's), and for INT8 where its recipe is exact and what it risks elsewhere (from
    the quantize stage record)."""
    from onnxship.core.env import integer_class_record

    record_cls = integer_class_record()  # + integer_class_forced when ONNXSHIP_INTEGER_CLASS set it
    here = str(record_cls["integer_class"])
    forced = {k: v for k, v in record_cls.items() if k == "integer_class_forced"}
    out: dict[str, Any] = {
        **record_cls,
        "accuracy_by_class": {
            here: {"test_top1": accuracy["top1"], "correct": accuracy.get("correct"),
                   "n": accuracy.get("n"), "measured_by": "run", **forced}
        },
    }  # fmt: skip
    if precision == "int8":
        metrics = record.get("metrics") or {}
        recipe = metrics.get("recipe") or {}
        out["safe_integer_classes"] = list(recipe.get("safe_integer_classes") or [])
        out["quant_risk"] = recipe.get("risk")
        out["validated_on"] = metrics.get("integer_class")  # the quantize search's class
    return out


@dataclass(frozen=True)
class ArtifactSpec:
    """What the manifest says about one .onnx artifact besides measurements."""

    name: str
    model: str  # "teacher" | "student"
    precision: str  # "fp32" | "fp16" | "int8"
    parent: str | None
    record: str  # stage record name
    checkpoint: Path  # the PyTorch checkpoint the graph came from (MACs, params)


def build_manifest(
    ctx: RunContext,
    config: Mapping[str, Any],
    bench_settings: BenchSettings,
    specs: Sequence[ArtifactSpec],
    eval_json: dict[str, Any],
    bench_json: dict[str, Any],
    *,
    dataset: Mapping[str, Any] | None = None,
) -> Path:
    """Write ctx.out_dir/manifest.json from the artifacts, their stage records and measurements.
    `dataset`: the contract's top-level block (DatasetInfo.to_json(); for non-MNIST data
    `test_path`, the bundle's copy of the test data that `verify` re-measures on)."""
    from onnxship.core.artifact import sha256_file
    from onnxship.export.checks import describe_onnx
    from onnxship.models.checkpoint import load_checkpoint
    from onnxship.models.flops import count_macs, count_params

    out_dir: Path = ctx.out_dir
    complexity: dict[Path, tuple[int, int]] = {}
    artifacts: dict[str, Any] = {}
    for spec in specs:
        path = out_dir / "artifacts" / f"{spec.name}.onnx"
        record = json.loads((out_dir / "stages" / f"{spec.record}.json").read_text())
        if spec.checkpoint not in complexity:
            model, meta = load_checkpoint(spec.checkpoint)
            complexity[spec.checkpoint] = (
                count_macs(model, (1, *meta.input_shape)),
                count_params(model),
            )
        macs, params = complexity[spec.checkpoint]
        description = describe_onnx(path)
        accuracy = eval_json["artifacts"][spec.name]
        artifacts[spec.name] = {
            "path": f"artifacts/{path.name}",
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "model": spec.model,
            "precision": spec.precision,
            "parent": spec.parent,
            "stage": record["stage"],
            "stage_config": record.get("config", {}),
            "source_checkpoint": {
                "path": os.path.relpath(spec.checkpoint, out_dir),
                "sha256": sha256_file(spec.checkpoint),
            },
            "opset": description["opset"],
            "macs": macs,
            "params": params,
            "inputs": description["inputs"],
            "outputs": description["outputs"],
            "accuracy": {
                "test_top1": accuracy["top1"],
                "correct": accuracy.get("correct"),
                "n": accuracy.get("n"),
                "split": "test",
                "provider": eval_json.get("provider"),
                "batch_size": eval_json.get("batch_size"),
                "predictions": accuracy.get("predictions"),
            },
            "latency": _latency_for(path, bench_json),
        }
        artifacts[spec.name].update(integer_class_fields(spec.precision, record, accuracy))
        if spec.precision == "int8":
            from onnxship.calibrate.coverage import integer_mac_share

            artifacts[spec.name]["integer_macs"] = integer_mac_share(path)
    budget = float(dict(config.get("search") or {}).get("max_drop", DEFAULT_RECOMMEND_DROP))
    int8_gate = {
        spec.name: int8_shipping_verdict(
            json.loads((out_dir / "stages" / f"{spec.record}.json").read_text()).get("metrics", {})
        )
        for spec in specs
        if spec.precision == "int8"
    }
    recommended, recommended_detail = recommend(artifacts, max_drop=budget, int8_verdicts=int8_gate)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "onnxship_version": __version__,
        "created": utc_now(),
        "git_commit": git_commit(),
        "config": dict(config),
        "environment": environment(),
        "bench": {
            "threads": bench_settings.threads,
            "iterations": bench_settings.iterations,
            "warmup": bench_settings.warmup,
            "results": "results/bench.json",
        },
        "artifacts": artifacts,
        "recommended": recommended,
        "recommended_detail": recommended_detail,
    }
    if dataset is not None:
        manifest["dataset"] = dict(dataset)
    return atomic_write_json(out_dir / "manifest.json", manifest)


# --------------------------------------------------------------------------------------------
# issue 13: `recommended` - per measured EP, the fastest artifact within the accuracy budget

DEFAULT_RECOMMEND_DROP = 0.003
RECOMMEND_BATCH = "64"
MIN_INT8_SPEEDUP = 1.3  # an INT8 artifact ships only when >= 1.3x its own FP32 at batch 64


def int8_shipping_verdict(
    quantize_metrics: Mapping[str, Any], min_speedup: float = MIN_INT8_SPEEDUP
) -> tuple[bool, str]:
    """(ships, why) for an INT8 artifact from its quantize record: the re-timed INT8/FP32
    ratio at batch 64 (interleaved with its own FP32) must be <= 1 / min_speedup."""
    by_batch = dict(dict(quantize_metrics.get("latency") or {}).get("by_batch") or {})
    row = by_batch.get(RECOMMEND_BATCH)
    if not row:
        return False, f"its quantize record has no batch-{RECOMMEND_BATCH} INT8/FP32 ratio"
    stat = dict(quantize_metrics.get("latency") or {}).get("statistic", "min")
    ratio = float(row.get(f"{stat}_ratio", row.get("min_ratio", float("nan"))))
    speedup = 1.0 / ratio if ratio > 0 else float("nan")
    if speedup >= min_speedup:
        return True, (
            f"INT8 is {speedup:.2f}x its own FP32 at batch {RECOMMEND_BATCH} (>= {min_speedup}x)"
        )
    return False, (
        f"INT8 is only {speedup:.2f}x its own FP32 at batch {RECOMMEND_BATCH} (< {min_speedup}x, "
        "interleaved re-run in the quantize stage): the FP32 artifact ships instead"
    )


def recommend(
    artifacts: Mapping[str, Mapping[str, Any]],
    *,
    max_drop: float,
    teacher: str = "teacher-fp32",
    int8_verdicts: Mapping[str, tuple[bool, str]] | None = None,
    batch: str = RECOMMEND_BATCH,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Per EP with a latency at `batch` (else the largest measured batch): the artifact with
    the lowest p50 whose test top-1 >= teacher's - max_drop, among those not refused by their
    INT8 verdict. Returns ({ep: name}, {ep: detail})."""
    verdicts = dict(int8_verdicts or {})
    if teacher not in artifacts:
        return {}, {}
    floor = float(artifacts[teacher]["accuracy"]["test_top1"]) - max_drop - 1e-9
    providers: list[str] = []
    for entry in artifacts.values():
        providers += [ep for ep in entry.get("latency", {}) if ep not in providers]
    chosen: dict[str, str] = {}
    detail: dict[str, Any] = {}
    for ep in providers:
        batches = {b for e in artifacts.values() for b in e.get("latency", {}).get(ep, {})}
        if not batches:
            continue
        at = batch if batch in batches else max(batches, key=int)
        excluded: dict[str, str] = {}
        ranked = []
        for name, entry in artifacts.items():
            p50 = entry.get("latency", {}).get(ep, {}).get(at, {}).get("p50_ms")
            if p50 is None:
                continue
            top1 = float(entry["accuracy"]["test_top1"])
            if top1 < floor:
                excluded[name] = f"test top-1 {top1:.4f} < teacher - {100 * max_drop:.2f} pp"
                continue
            ships, why = verdicts.get(name, (True, ""))
            if not ships:
                excluded[name] = why
                continue
            ranked.append((float(p50), name))
        if not ranked:
            continue
        p50, name = min(ranked)
        teacher_p50 = artifacts[teacher].get("latency", {}).get(ep, {}).get(at, {}).get("p50_ms")
        chosen[ep] = name
        detail[ep] = {
            "artifact": name,
            "batch_size": int(at),
            "p50_ms": p50,
            "speedup_vs_teacher_fp32": round(teacher_p50 / p50, 3) if teacher_p50 else None,
            "test_top1": artifacts[name]["accuracy"]["test_top1"],
            "teacher_test_top1": artifacts[teacher]["accuracy"]["test_top1"],
            "max_drop": max_drop,
            "not_eligible": excluded,
            "rule": "lowest p50 at this batch size among artifacts whose test top-1 is within "
            "max_drop of teacher-fp32; INT8 only where >= 1.3x its own FP32 at batch 64",
        }
    return chosen, detail


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and sanity-check a manifest: valid JSON, known schema_version, artifacts present."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    if not p.is_file():
        raise PipelineError(f"manifest {p} does not exist; run `onnxship run --out DIR` first")
    try:
        manifest = json.loads(p.read_text())
    except ValueError as exc:
        raise PipelineError(
            f"manifest {p} is not valid JSON ({exc}); regenerate the bundle"
        ) from exc
    if not isinstance(manifest, dict):
        raise PipelineError(
            f"manifest {p}: expected a JSON object, found {type(manifest).__name__}"
        )
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise PipelineError(
            f"manifest {p} has schema_version {version!r}; this onnxship ({__version__}) reads "
            f"schema_version {SCHEMA_VERSION}; use a matching onnxship version"
        )
    if not isinstance(manifest.get("artifacts"), dict):
        raise PipelineError(f"manifest {p} has no 'artifacts' object; regenerate the bundle")
    return manifest


def write_bundle_docs(out_dir: Path, manifest_path: Path) -> None:
    """report.md and plots/*.png from the manifest and the stage records."""
    from onnxship.report import write_plots, write_report

    manifest = read_manifest(manifest_path)
    plots = write_plots(out_dir, manifest)
    write_report(out_dir, manifest, plots)
