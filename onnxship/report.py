"""report.md and plots/*.png: what a deployer reads, generated from the manifest and the stage
records only (so the report can never disagree with the files it describes)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxship.core.artifact import atomic_output, atomic_write_text

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _p50(entry: Mapping[str, Any], provider: str, batch: str) -> float | None:
    return entry.get("latency", {}).get(provider, {}).get(batch, {}).get("p50_ms")


def _fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _record(out_dir: Path, name: str) -> dict[str, Any] | None:
    path = out_dir / "stages" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _providers(manifest: Mapping[str, Any]) -> list[str]:
    seen: list[str] = []
    for entry in manifest["artifacts"].values():
        for ep in entry.get("latency", {}):
            if ep not in seen:
                seen.append(ep)
    return seen


def _batches(manifest: Mapping[str, Any], provider: str) -> list[str]:
    seen: set[str] = set()
    for entry in manifest["artifacts"].values():
        seen.update(entry.get("latency", {}).get(provider, {}))
    return sorted(seen, key=int)


def headline(manifest: Mapping[str, Any], batch: str = "64") -> dict[str, Any] | None:
    """student-int8 vs teacher-fp32: latency ratio on the CPU EP and the accuracy change."""
    arts = manifest["artifacts"]
    if "student-int8" not in arts or "teacher-fp32" not in arts:
        return None
    teacher, student = arts["teacher-fp32"], arts["student-int8"]
    t, s = _p50(teacher, CPU_EP, batch), _p50(student, CPU_EP, batch)
    return {
        "batch": batch,
        "speedup": (t / s) if t and s else None,
        "accuracy_delta_pp": 100
        * (student["accuracy"]["test_top1"] - teacher["accuracy"]["test_top1"]),
        "macs_ratio": student["macs"] / teacher["macs"] if teacher.get("macs") else None,
    }


def artifact_table(manifest: Mapping[str, Any]) -> str:
    providers = _providers(manifest)
    cols = [(ep, b) for ep in providers for b in _batches(manifest, ep)]
    short = {CPU_EP: "CPU", "CUDAExecutionProvider": "CUDA"}
    head = ["artifact", "precision", "test top-1", "bytes", "MACs", "params"]
    head += [f"{short.get(ep, ep)} p50 ms @{b}" for ep, b in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in manifest["artifacts"].items():
        row = [
            f"`{name}`",
            entry["precision"],
            f"{100 * entry['accuracy']['test_top1']:.2f} %",
            _fmt_bytes(entry["bytes"]),
            f"{entry['macs']:,}",
            f"{entry['params']:,}",
        ]
        row += [_fmt_ms(_p50(entry, ep, b)) for ep, b in cols]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "—"


def _candidate_row(cand: Mapping[str, Any]) -> str:
    """One row of the candidates table; a candidate that failed is a row with its error."""
    name = f"`{cand.get('name')}`"
    if cand.get("error"):
        error = " ".join(str(cand["error"]).split()).replace("|", "\\|")
        return f"| {name} | failed: {error} | — | — | — | — | — |"
    lat = cand.get("latency") or {}
    ratios = [lat.get(b, {}).get("p50_ratio") for b in ("1", "64")]
    top1 = _pct(cand.get("val_top1"))
    return (
        f"| {name} | {top1}{' %' if top1 != '—' else ''} | {_pct(cand.get('val_drop'))} | "
        f"{cand.get('within_budget')} | "
        + " | ".join("—" if r is None else f"{r:.2f}" for r in ratios)
        + f" | {cand.get('bytes') if cand.get('bytes') is not None else '—'} |"
    )


def _quantize_section(record: Mapping[str, Any]) -> list[str]:
    m = record["metrics"]
    recipe = m.get("recipe")
    name = recipe.get("name") if isinstance(recipe, dict) else recipe
    floats = m.get("nodes_in_float") or []
    by_reason: dict[str, list[str]] = {}
    for node in floats:
        if isinstance(node, Mapping):
            by_reason.setdefault(str(node.get("reason")), []).append(
                f"{node.get('node')} ({node.get('op_type')})"
            )
    float_text = "; ".join(f"{', '.join(nodes)}: {why}" for why, nodes in by_reason.items())
    rows = ["| candidate | val top-1 | drop (pp) | within budget | INT8/FP32 p50 @1 | INT8/FP32 p50 @64 | bytes |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    rows += [_candidate_row(cand) for cand in m.get("candidates") or []]
    why = m.get("int8_faster_than_fp32_why")
    target = m.get("target")
    target_ep = target.get("provider") if isinstance(target, Mapping) else target
    return [
        "## INT8 recipe",
        "",
        f"Chosen: `{name}` — the fastest candidate on the target EP ({target_ep}) whose "
        f"validation-accuracy drop stayed within the budget ({100 * float(m.get('max_drop', 0)):.2f} pp): "
        f"validation top-1 {100 * float(m.get('fp32_val_top1', 0)):.2f} % (FP32) → "
        f"{100 * float(m.get('int8_val_top1', 0)):.2f} % (INT8); file "
        f"{100 * float(m.get('bytes_ratio', 0)):.1f} % of FP32. INT8 faster than FP32 on this "
        f"target: **{m.get('int8_faster_than_fp32')}**" + (f" — {why}" if why else "") + ".",
        "",
        f"Nodes left in float: {float_text or 'none'}.",
        "",
        "Candidates (latency ratios measured interleaved with FP32 in one run; < 1 is faster):",
        "",
        *rows,
        "",
    ]


def _skipped_lines(bench_record: Mapping[str, Any] | None) -> list[str]:
    """EPs the bench stage skipped (e.g. CUDA listed by onnxruntime but unusable here)."""
    skipped = ((bench_record or {}).get("metrics") or {}).get("skipped_providers") or []
    return [f"- Not benchmarked: {s.get('provider')} ({s.get('reason')})" for s in skipped]


def write_report(out_dir: Path, manifest: Mapping[str, Any], plots: list[Path]) -> Path:
    env = manifest.get("environment", {})
    parts = [
        "# onnxship bundle report",
        "",
        f"Created {manifest.get('created')} by onnxship {manifest.get('onnxship_version')} "
        f"(git {str(manifest.get('git_commit'))[:12]}). Accuracy is MNIST test top-1 (10,000 "
        "images) measured by running each `.onnx` file in ONNX Runtime; latency is the p50 of "
        f"{manifest.get('bench', {}).get('iterations')} timed runs with "
        f"{manifest.get('bench', {}).get('threads')} intra-op thread(s) on this machine.",
        "",
        "## Artifacts",
        "",
        artifact_table(manifest),
        "",
    ]
    head = headline(manifest)
    if head:
        speed = f"{head['speedup']:.2f}x" if head["speedup"] else "n/a"
        parts += [
            f"**Headline:** `student-int8` vs `teacher-fp32` on the CPU EP at batch {head['batch']}: "
            f"{speed} faster, accuracy {head['accuracy_delta_pp']:+.2f} pp, "
            f"MACs {100 * (head['macs_ratio'] or 0):.1f} % of the teacher's.",
            "",
        ]
    prune = _record(out_dir, "prune")
    if prune:
        m = prune["metrics"]
        parts += [
            "## Pruning",
            "",
            f"MACs {m.get('macs_before'):,} → {m.get('macs_after'):,}; params "
            f"{m.get('params_before'):,} → {m.get('params_after'):,}. Widths "
            f"{m.get('widths_before')} → {m.get('widths_after')}.",
            "",
        ]
    distill = _record(out_dir, "distill")
    if distill:
        m = distill["metrics"]
        kd, no_kd = m.get("test_top1_kd"), m.get("test_top1_no_kd")
        verdict = ""
        if isinstance(kd, float) and isinstance(no_kd, float):
            verdict = (
                f" Distillation {'beat' if kd > no_kd else 'did not beat'} plain fine-tuning on "
                f"this run ({100 * (kd - no_kd):+.2f} pp)."
            )
        parts += [
            "## Distillation (and its ablation)",
            "",
            f"Test top-1 with the teacher (KD): {100 * kd:.2f} %; the same pruned student "
            f"fine-tuned for the same steps without the teacher: {100 * no_kd:.2f} %.{verdict}"
            if isinstance(kd, float) and isinstance(no_kd, float)
            else f"metrics: {m}",
            "",
        ]
    quant = _record(out_dir, "quantize")
    if quant:
        parts += _quantize_section(quant)
    parts += [
        "## Environment",
        "",
        f"- CPU: {env.get('cpu')} (ISA: {', '.join(env.get('isa', []))})",
        f"- Python {env.get('python')}, torch {env.get('torch')}, onnx {env.get('onnx')}, "
        f"onnxruntime {env.get('onnxruntime')}",
        f"- Available EPs: {', '.join(env.get('available_providers', []))}",
        *_skipped_lines(_record(out_dir, "bench")),
        "",
        "## Plots",
        "",
    ]
    parts += [f"![{p.stem}](plots/{p.name})" for p in plots]
    return atomic_write_text(out_dir / "report.md", "\n".join(parts) + "\n")


def write_plots(out_dir: Path, manifest: Mapping[str, Any]) -> list[Path]:
    """Accuracy vs latency (marker area = file size; one point per artifact and EP, batch 64
    where measured) and a bar chart of file sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    arts = manifest["artifacts"]
    written: list[Path] = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    max_bytes = max(e["bytes"] for e in arts.values())
    markers = {CPU_EP: "o", "CUDAExecutionProvider": "s"}
    point = 0
    for ep in _providers(manifest):
        batches = _batches(manifest, ep)
        batch = "64" if "64" in batches else (batches[-1] if batches else None)
        for name, entry in arts.items():
            p50 = _p50(entry, ep, batch) if batch else None
            if p50 is None:
                continue
            accuracy = 100 * entry["accuracy"]["test_top1"]
            area = 40 + 900 * entry["bytes"] / max_bytes
            label = f"{name} ({ep.replace('ExecutionProvider', '')} @{batch})"
            ax.scatter(p50, accuracy, s=area, alpha=0.6, marker=markers.get(ep, "^"), label=label)
            # Stagger labels: students sit close together on both axes.
            ax.annotate(name, (p50, accuracy), fontsize=8, xytext=(6, 10 - 9 * (point % 3)),
                        textcoords="offset points")  # fmt: skip
            point += 1
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per batch (ms, log scale)")
    ax.set_ylabel("MNIST test top-1 (%)")
    ax.set_title("Accuracy vs latency (marker area = file size)")
    ax.grid(True, alpha=0.3)
    legend = ax.legend(fontsize=7, loc="best")
    for handle in legend.legend_handles:
        handle.set_sizes([30])  # type: ignore[union-attr]
    fig.tight_layout()
    written.append(_save(fig, plots_dir / "accuracy_vs_latency.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(arts)
    sizes = [arts[n]["bytes"] / 1024 for n in names]
    ax.bar(names, sizes, color="#4477aa")
    for i, v in enumerate(sizes):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("file size (KiB)")
    ax.set_title("Artifact size")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    written.append(_save(fig, plots_dir / "size.png"))
    plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
