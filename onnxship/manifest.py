"""manifest.json (schema_version 1, see CONTRACT.md): what a deployer trusts months later.

Built by `onnxship run` (its manifest stage, onnxship.stages.manifest) from the artifacts the
stages returned, with the metrics their records hold, and the measuring stages; read by
`verify` and `gate` (which stay torch-free: only a bundle whose records predate the `macs`
metrics makes `build_manifest` count a checkpoint in PyTorch).
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
from onnxship.core.artifact import Artifact, atomic_write_json, utc_now
from onnxship.errors import PipelineError
from onnxship.measure import SCENARIOS, BenchSettings, RecommendPolicy
from onnxship.stage_run import RunContext

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REQUIRED_ARTIFACTS = ("teacher-fp32", "student-fp32", "student-int8", "student-fp16")
LATENCY_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s")
# with the statistic's CI and the timed calls behind it (absent from older bench results)
LATENCY_CI_KEYS = ("p50_ci_ms", "p90_ci_ms", "p99_ci_ms", "n", "n_rounds", "p90_why", "p99_why",
                   "throughput_ci_per_s")  # fmt: skip


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


def _latency_for(path: Path, bench: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    latency: dict[str, dict[str, dict[str, Any]]] = {}
    for row in bench.get("results", []):
        # On CUDA the harness also reports device-resident rows; the manifest's number is the
        # end-to-end one (numpy in and out, copies included), comparable with the CPU EP's.
        if Path(row["model"]).name != path.name or row.get("io", "host") not in (
            "host",
            "end_to_end",
        ):
            continue
        per_ep = latency.setdefault(row["provider"], {})
        entry = {k: row[k] for k in LATENCY_KEYS}
        entry.update({k: row[k] for k in LATENCY_CI_KEYS if k in row})
        per_ep[str(row["batch_size"])] = entry
    # the bench stage's speed-up over its reference (teacher-fp32), with the paired CI
    for ratio in bench.get("ratios", []):
        cell = latency.get(ratio.get("provider"), {}).get(str(ratio.get("batch_size")))
        if cell is not None and ratio.get("name") == path.stem:
            cell[f"speedup_vs_{ratio['reference']}"] = {
                k: ratio[k] for k in ("ratio", "ci", "ci_level", "statistic", "n_rounds")
            }
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
    """What the manifest says about one .onnx artifact besides measurements.

    `onnx`: the artifact its stage returned (sha256, bytes, and the stage, config and metrics
    its record holds); `source`: the artifact of the stage that wrote `checkpoint`, whose
    metrics carry the model's `macs` and `params`. Without them the record is read and the
    checkpoint counted in PyTorch (bundles whose records predate those metrics)."""

    name: str
    model: str  # "teacher" | "student" | "searched"
    precision: str  # "fp32" | "fp16" | "int8"
    parent: str | None
    record: str  # stage record name
    checkpoint: Path  # the PyTorch checkpoint the graph came from (MACs, params)
    onnx: Artifact | None = None
    source: Artifact | None = None


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
    """Write ctx.out_dir/manifest.json from the artifacts the stages returned and their
    measurements. `dataset`: the contract's top-level block (DatasetInfo.to_json(); for
    non-MNIST data `test_path`, the bundle's copy of the test data that `verify` re-measures
    on)."""
    out_dir: Path = ctx.out_dir
    made = {spec.name: stage_artifact(spec, out_dir) for spec in specs}
    complexity: dict[Path, tuple[int, int]] = {}
    artifacts = {
        spec.name: artifact_entry(
            spec, made[spec.name], _complexity(spec, complexity), out_dir, eval_json, bench_json
        )
        for spec in specs
    }
    recommended, recommended_detail, by_scenario = _recommendation(
        artifacts, specs, made, config, bench_settings, bench_json
    )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "onnxship_version": __version__,
        "created": utc_now(),
        "git_commit": git_commit(),
        "config": dict(config),
        "environment": environment(),
        "bench": _bench_block(bench_settings),
        "artifacts": artifacts,
        "recommended": recommended,
        "recommended_detail": recommended_detail,
        "recommended_by_scenario": by_scenario,
    }
    if dataset is not None:
        manifest["dataset"] = dict(dataset)
    from onnxship.targets import still_valid_targets

    targets = still_valid_targets(out_dir, artifacts)  # `onnxship tune` records, still valid
    if targets:
        manifest["targets"] = targets
    return atomic_write_json(out_dir / "manifest.json", manifest)


def stage_artifact(spec: ArtifactSpec, out_dir: Path) -> Artifact:
    """The .onnx artifact as its stage returned it, else as its record describes it."""
    if spec.onnx is not None:
        return spec.onnx
    from onnxship.core.artifact import sha256_file

    path = out_dir / "artifacts" / f"{spec.name}.onnx"
    record = json.loads((out_dir / "stages" / f"{spec.record}.json").read_text())
    return Artifact(
        path=path,
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
        stage=record["stage"],
        config=record.get("config", {}),
        metrics=record.get("metrics", {}),
    )


def _complexity(spec: ArtifactSpec, counted: dict[Path, tuple[int, int]]) -> tuple[int, int]:
    """(MACs, params) from the checkpoint stage's metrics, else counted once per checkpoint."""
    metrics = spec.source.metrics if spec.source is not None else {}
    if metrics.get("macs") is not None and metrics.get("params") is not None:
        return int(metrics["macs"]), int(metrics["params"])
    if spec.checkpoint not in counted:
        from onnxship.stages.base import count_complexity

        n = count_complexity(spec.checkpoint)
        counted[spec.checkpoint] = (n["macs"], n["params"])
    return counted[spec.checkpoint]


def artifact_entry(
    spec: ArtifactSpec,
    made: Artifact,
    complexity: tuple[int, int],
    out_dir: Path,
    eval_json: Mapping[str, Any],
    bench_json: dict[str, Any],
) -> dict[str, Any]:
    """One artifact's manifest entry: its file, lineage, graph, cost and measurements."""
    from onnxship.core.artifact import sha256_file
    from onnxship.export.checks import describe_onnx

    path = out_dir / "artifacts" / f"{spec.name}.onnx"
    description = describe_onnx(path)
    accuracy = eval_json["artifacts"][spec.name]
    source_sha = spec.source.sha256 if spec.source is not None else sha256_file(spec.checkpoint)
    entry: dict[str, Any] = {
        "path": f"artifacts/{path.name}",
        "sha256": made.sha256,
        "bytes": made.bytes,
        "model": spec.model,
        "precision": spec.precision,
        "parent": spec.parent,
        "stage": made.stage,
        "stage_config": made.config,
        "source_checkpoint": {
            "path": os.path.relpath(spec.checkpoint, out_dir),
            "sha256": source_sha,
        },
        "opset": description["opset"],
        "macs": complexity[0],
        "params": complexity[1],
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
    entry.update(integer_class_fields(spec.precision, {"metrics": made.metrics}, accuracy))
    if spec.precision == "int8":
        from onnxship.calibrate.coverage import integer_mac_share

        entry["integer_macs"] = integer_mac_share(path)
    return entry


def _recommendation(
    artifacts: Mapping[str, Mapping[str, Any]],
    specs: Sequence[ArtifactSpec],
    made: Mapping[str, Artifact],
    config: Mapping[str, Any],
    bench_settings: BenchSettings,
    bench_json: Mapping[str, Any],
) -> tuple[dict[str, str], dict[str, Any], dict[str, dict[str, str]]]:
    """`recommended`, `recommended_detail` and `recommended_by_scenario` (see `recommend`);
    an INT8 artifact's verdict comes from its quantize stage's metrics."""
    budget = float(dict(config.get("search") or {}).get("max_drop", DEFAULT_RECOMMEND_DROP))
    policy = bench_settings.recommend
    int8_gate = {
        spec.name: int8_shipping_verdict(
            made[spec.name].metrics, min_speedup=policy.int8_min_speedup, batch=policy.int8_batch
        )
        for spec in specs
        if spec.precision == "int8"
    }
    return recommend(
        artifacts, bench_json, max_drop=budget, policy=policy, int8_verdicts=int8_gate,
        ci_level=bench_settings.ci_level,
    )  # fmt: skip


def _bench_block(bench_settings: BenchSettings) -> dict[str, Any]:
    return {
        "threads": bench_settings.threads,
        "iterations": bench_settings.iterations,
        "warmup": bench_settings.warmup,
        "budget_s": bench_settings.budget_s,
        "ci_level": bench_settings.ci_level,
        "target_rel_ci": bench_settings.target_rel_ci,
        "timing": "block-interleaved rounds of "
        f"{bench_settings.interleave_block} calls per artifact, the first untimed",
        "results": "results/bench.json",
    }


# --------------------------------------------------------------------------------------------
# `recommended` - per measured EP and scenario, decided with the bench stage's CIs

DEFAULT_RECOMMEND_DROP = 0.003
PRECISION_RANK = {"fp32": 0, "fp16": 1, "int8": 2}  # simpler first


def int8_shipping_verdict(
    quantize_metrics: Mapping[str, Any],
    min_speedup: float = RecommendPolicy.int8_min_speedup,
    batch: int = RecommendPolicy.int8_batch,
) -> tuple[bool, str]:
    """(ships, why) for an INT8 artifact from its quantize record: at `batch`, its speed-up over
    its own FP32 (re-timed interleaved with it) must reach `min_speedup`; where the record gives
    the speed-up's CI (`speedup_ci`), its lower bound must."""
    by_batch = dict(dict(quantize_metrics.get("latency") or {}).get("by_batch") or {})
    row = by_batch.get(str(batch))
    if not row:
        return False, f"its quantize record has no batch-{batch} INT8/FP32 ratio"
    stat = dict(quantize_metrics.get("latency") or {}).get("statistic", "min")
    ratio = float(row.get(f"{stat}_ratio", row.get("min_ratio", float("nan"))))
    speedup = 1.0 / ratio if ratio > 0 else float("nan")
    ci = row.get("speedup_ci")
    if ci:
        lo, hi = float(ci[0]), float(ci[1])
        text = f"INT8 is {speedup:.2f}x [{lo:.2f}, {hi:.2f}] its own FP32 at batch {batch}"
        if lo >= min_speedup:
            return True, f"{text} (CI lower bound >= {min_speedup:g}x)"
        return False, (
            f"{text} (CI lower bound < {min_speedup:g}x, interleaved re-run in the quantize "
            "stage): the FP32 artifact ships instead"
        )
    if speedup >= min_speedup:
        return True, f"INT8 is {speedup:.2f}x its own FP32 at batch {batch} (>= {min_speedup:g}x)"
    return False, (
        f"INT8 is only {speedup:.2f}x its own FP32 at batch {batch} (< {min_speedup:g}x, "
        "interleaved re-run in the quantize stage): the FP32 artifact ships instead"
    )


def bench_rows(bench: Mapping[str, Any]) -> dict[tuple[str, str, int], Mapping[str, Any]]:
    """(artifact name, EP, batch size) -> the bench row (host / end_to_end io only)."""
    out: dict[tuple[str, str, int], Mapping[str, Any]] = {}
    for row in bench.get("results", []):
        if row.get("io", "host") in ("host", "end_to_end"):
            out[(Path(row["model"]).stem, row["provider"], int(row["batch_size"]))] = row
    return out


@dataclass(frozen=True)
class _Perf:
    """One artifact's number in one scenario: the batch it runs at and its per-round p50s."""

    name: str
    batch: int
    p50_ms: float
    p50_ci_ms: Any
    rounds: tuple[float, ...]

    @property
    def throughput(self) -> float:
        return self.batch / (self.p50_ms / 1e3)


def _perf(name: str, ep: str, scenario: str, rows: Mapping[tuple[str, str, int], Any]) -> Any:
    """_Perf of `name` on `ep` in `scenario`, or a string saying why there is none."""
    batches = sorted(b for (n, e, b) in rows if n == name and e == ep)
    if scenario == "single-stream":
        batches = [b for b in batches if b == 1]
        if not batches:
            return "no batch-1 latency measured (single-stream needs batch size 1)"
    usable = [b for b in batches if rows[(name, ep, b)].get("round_stats_ms")]
    if not usable:
        return "no per-round timings in the bench results (re-run the bench stage)"
    perfs = [
        _Perf(name, b, float(rows[(name, ep, b)]["p50_ms"]), rows[(name, ep, b)].get("p50_ci_ms"),
              tuple(rows[(name, ep, b)]["round_stats_ms"]))
        for b in usable
    ]  # fmt: skip
    return max(perfs, key=lambda p: p.throughput)


def _speedup(a: _Perf, b: _Perf, cfg: Any) -> Any:
    """Throughput of a over b (= latency ratio at one batch), paired when both ran in one
    interleaved run (same batch size), with its CI."""
    from onnxship.runtime_bench.timing import ratio_from_rounds

    return ratio_from_rounds(a.name, b.name, a.rounds, b.rounds, cfg, paired=a.batch == b.batch,
                             scale=a.batch / b.batch)  # fmt: skip


def _simplicity(name: str, artifacts: Mapping[str, Mapping[str, Any]]) -> tuple[int, int]:
    entry = artifacts[name]
    return PRECISION_RANK.get(str(entry.get("precision")), 3), int(entry.get("bytes") or 0)


def _ci(r: Any) -> list[float]:
    return [round(r.ci[0], 3), round(r.ci[1], 3)]


def _choose(perfs: dict[str, _Perf], artifacts: Mapping[str, Mapping[str, Any]], policy: Any,
            cfg: Any) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """The fastest artifact, unless a simpler one is within noise of it: the fastest wins over
    a simpler artifact only when the CI lower bound of its speed-up clears 1 + margin and the
    speed-up exceeds the tie band; otherwise the simplest such artifact ships."""
    from onnxship.runtime_bench.timing import decide_faster

    fastest = max(perfs.values(), key=lambda p: p.throughput)
    for name in sorted(perfs, key=lambda n: _simplicity(n, artifacts)):
        if name == fastest.name:
            return name, {"decision": "fastest", "fastest": name}
        r = _speedup(fastest, perfs[name], cfg)
        clears = decide_faster(r, 1.0 + policy.margin) and r.ratio - 1.0 >= policy.tie_band
        if not clears:
            return name, {
                "decision": "tie within noise",
                "fastest": fastest.name,
                "fastest_speedup_over_chosen": round(r.ratio, 4),
                "fastest_speedup_over_chosen_ci": _ci(r),
                "why": f"{fastest.name} is {r.ratio:.3f}x [{r.ci[0]:.3f}, {r.ci[1]:.3f}] "
                f"{name}: its CI lower bound does not clear 1 + margin ({1 + policy.margin:g}) "
                f"or the speed-up is inside the tie band ({policy.tie_band:g}); the simpler "
                f"artifact ships",
            }
    raise AssertionError("the fastest artifact is among the candidates")


def _eligible(artifacts: Mapping[str, Mapping[str, Any]], floor: float, max_drop: float,
              verdicts: Mapping[str, tuple[bool, str]]) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    names, excluded = [], {}
    for name, entry in artifacts.items():
        top1 = float(entry["accuracy"]["test_top1"])
        ships, why = verdicts.get(name, (True, ""))
        if top1 < floor:
            excluded[name] = f"test top-1 {top1:.4f} < teacher - {100 * max_drop:.2f} pp"
        elif not ships:
            excluded[name] = why
        else:
            names.append(name)
    return names, excluded


def _scenario_detail(ep: str, scenario: str, names: list[str], excluded: dict[str, str],
                     ctx: dict[str, Any]) -> dict[str, Any] | None:  # fmt: skip
    artifacts, rows, policy, cfg = ctx["artifacts"], ctx["rows"], ctx["policy"], ctx["cfg"]
    perfs: dict[str, _Perf] = {}
    not_eligible = dict(excluded)
    for name in names:
        got = _perf(name, ep, scenario, rows)
        if isinstance(got, str):
            if any(n == name and e == ep for (n, e, _) in rows):
                not_eligible[name] = got
        else:
            perfs[name] = got
    if not perfs:
        return None
    name, decision = _choose(perfs, artifacts, policy, cfg)
    chosen = perfs[name]
    teacher = ctx["teacher"]
    tperf = _perf(teacher, ep, scenario, rows)
    detail: dict[str, Any] = {
        "artifact": name, "scenario": scenario,
        "statistic": "p50 latency" if scenario == "single-stream" else "throughput at the best "
        "batch size (samples/s, from the p50)",
        "batch_size": chosen.batch, "p50_ms": chosen.p50_ms, "p50_ci_ms": chosen.p50_ci_ms,
        "throughput_per_s": round(chosen.throughput, 1),
        **decision,
        "test_top1": artifacts[name]["accuracy"]["test_top1"],
        "teacher_test_top1": artifacts[teacher]["accuracy"]["test_top1"],
        "max_drop": ctx["max_drop"], "margin": policy.margin, "tie_band": policy.tie_band,
        "ci_level": cfg.ci_level, "not_eligible": not_eligible,
        "session_options": _session_options(rows[(name, ep, chosen.batch)]),
        "rule": _rule_text(scenario, policy, cfg.ci_level),
    }  # fmt: skip
    if isinstance(tperf, _Perf):
        r = _speedup(chosen, tperf, cfg)
        detail["speedup_vs_teacher_fp32"] = round(r.ratio, 3)
        detail["speedup_vs_teacher_fp32_ci"] = _ci(r)
        detail["teacher_batch_size"] = tperf.batch  # offline: the teacher at its own best batch
    return detail


def _session_options(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "intra_op_threads": row.get("threads"),
        "allow_spinning": row.get("spinning"),
        "graph_optimization": row.get("graph_optimization"),
        "execution_mode": "sequential",
        "provider_options": row.get("provider_options") or {},
    }


def _rule_text(scenario: str, policy: Any, ci_level: float) -> str:
    what = ("batch-1 p50 latency" if scenario == "single-stream"
            else "throughput at each artifact's best batch size")  # fmt: skip
    return (
        f"{scenario}: the fastest by {what} among artifacts whose test top-1 is within max_drop "
        f"of teacher-fp32 (INT8 only where its quantize stage measured >= "
        f"{policy.int8_min_speedup:g}x its own FP32 at batch {policy.int8_batch}); a faster but "
        f"less simple artifact (simpler: FP32 > FP16 > INT8, then the smaller file) wins only "
        f"when its speed-up's {round(100 * ci_level)} % CI lower bound is >= {1 + policy.margin:g} and the speed-up "
        f'exceeds the {policy.tie_band:g} tie band, else "tie within noise"'
    )


def recommend(
    artifacts: Mapping[str, Mapping[str, Any]],
    bench: Mapping[str, Any],
    *,
    max_drop: float,
    policy: RecommendPolicy | None = None,
    teacher: str = "teacher-fp32",
    int8_verdicts: Mapping[str, tuple[bool, str]] | None = None,
    ci_level: float = 0.95,
) -> tuple[dict[str, str], dict[str, Any], dict[str, dict[str, str]]]:
    """Per EP and scenario (single-stream, offline), from the bench stage's rows (`bench`, the
    results/bench.json document, whose interleaved rows carry per-round p50s): the artifact to
    ship among those whose test top-1 >= teacher's - max_drop and not refused by their INT8
    verdict. Returns ({ep: name in policy.scenario}, {ep: detail}, {ep: {scenario: name}})."""
    from onnxship.runtime_bench.timing import TimingConfig

    policy = policy or RecommendPolicy()
    if teacher not in artifacts:
        return {}, {}, {}
    floor = float(artifacts[teacher]["accuracy"]["test_top1"]) - max_drop - 1e-9
    names, excluded = _eligible(artifacts, floor, max_drop, dict(int8_verdicts or {}))
    rows = bench_rows(bench)
    cfg = TimingConfig(ci_level=ci_level)
    ctx = {"artifacts": artifacts, "rows": rows, "policy": policy, "cfg": cfg,
           "teacher": teacher, "max_drop": max_drop}  # fmt: skip
    chosen: dict[str, str] = {}
    detail: dict[str, Any] = {}
    by_scenario: dict[str, dict[str, str]] = {}
    for ep in dict.fromkeys(e for (_, e, _) in rows):
        scenarios = {s: _scenario_detail(ep, s, names, excluded, ctx) for s in SCENARIOS}
        done = {s: d for s, d in scenarios.items() if d is not None}
        if not done:
            continue
        by_scenario[ep] = {s: d["artifact"] for s, d in done.items()}
        primary = policy.scenario if policy.scenario in done else next(iter(done))
        chosen[ep] = done[primary]["artifact"]
        detail[ep] = {**done[primary], "scenarios": done}
        if primary != policy.scenario:
            detail[ep]["scenario_note"] = (
                f"{policy.scenario} could not be decided on {ep} "
                f"({'; '.join(sorted(set(scenarios) - set(done)))} without measurements): "
                f"recommended for {primary}"
            )
    return chosen, detail, by_scenario


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
