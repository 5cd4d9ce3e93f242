"""report.md and plots/*.png: what a deployer reads, generated from the manifest and the stage
records only (so the report can never disagree with the files it describes)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxship.core.artifact import atomic_output, atomic_write_text
from onnxship.runtime_bench.providers import CPU_EP, short_name

log = logging.getLogger(__name__)


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


def timing_note(manifest: Mapping[str, Any]) -> str:
    """How the bench stage timed the artifacts, from the run's own config: block-interleaved
    rounds (each artifact called `interleave_block` times in a row, the first call untimed)."""
    bench = {**dict(dict(manifest.get("config") or {}).get("bench") or {}),
             **dict(manifest.get("bench") or {})}  # fmt: skip
    block, warmup = bench.get("interleave_block"), bench.get("warmup")
    iterations, threads = bench.get("iterations"), bench.get("threads")
    if block is None:
        how = "interleaved in one process"
    elif int(block) > 1:
        how = (
            f"block-interleaved in one process: rounds of {block} calls per artifact, the first "
            "untimed"
        )
    else:
        how = "interleaved call by call in one process (every call timed)"
    return (
        f"timed {how}; {iterations} timed calls each after {warmup} warm-up rounds, "
        f"{threads} intra-op thread(s)"
    )


def headline(
    manifest: Mapping[str, Any], batch: str = "64", teacher: str = "teacher-fp32"
) -> list[dict[str, Any]]:
    """Per EP in `recommended`: the recommended artifact against `teacher` (p50 latency ratio
    at `batch`, else the batch the recommendation was made at), accuracy change, MACs ratio."""
    arts = manifest["artifacts"]
    if teacher not in arts:
        return []
    base = arts[teacher]
    rows = []
    for ep, name in dict(manifest.get("recommended") or {}).items():
        entry = arts.get(name)
        if entry is None:
            continue
        detail = dict(dict(manifest.get("recommended_detail") or {}).get(ep) or {})
        at = batch if _p50(entry, ep, batch) else str(detail.get("batch_size", batch))
        t, s = _p50(base, ep, at), _p50(entry, ep, at)
        rows.append(
            {
                "provider": ep,
                "artifact": name,
                "batch": at,
                "speedup": (t / s) if t and s else None,
                "accuracy_delta_pp": 100
                * (entry["accuracy"]["test_top1"] - base["accuracy"]["test_top1"]),
                "macs_ratio": entry["macs"] / base["macs"] if base.get("macs") else None,
            }
        )
    return rows


def headline_lines(manifest: Mapping[str, Any], teacher: str = "teacher-fp32") -> list[str]:
    """The headline as text: one line per EP, then how the numbers were timed."""
    rows = headline(manifest, teacher=teacher)
    lines = []
    for row in rows:
        speed = f"{row['speedup']:.2f}x as fast" if row["speedup"] else "latency n/a"
        macs = (
            f", MACs {100 * row['macs_ratio']:.1f} % of the teacher's" if row["macs_ratio"] else ""
        )
        lines.append(
            f"{row['provider']}: recommended `{row['artifact']}` vs `{teacher}` at batch "
            f"{row['batch']} (p50): {speed}, accuracy {row['accuracy_delta_pp']:+.2f} pp{macs}"
        )
    if lines:
        lines.append(f"Latencies {timing_note(manifest)}.")
    return lines


def artifact_table(manifest: Mapping[str, Any]) -> str:
    providers = _providers(manifest)
    cols = [(ep, b) for ep in providers for b in _batches(manifest, ep)]
    head = ["artifact", "precision", "test top-1", "bytes", "MACs", "params"]
    head += [f"{short_name(ep)} p50 ms @{b}" for ep, b in cols]
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
    head = headline_lines(manifest)
    if head:
        parts += ["**Headline** (the artifact to ship on each EP):", ""]
        parts += [f"- {line}" for line in head] + [""]
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
    search = _record(out_dir, "search")  # issue 13
    if search:
        parts += search_section(search["metrics"], manifest)
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

    search = _record(out_dir, "search")  # issue 13
    if search:
        written.append(write_pareto_plot(plots_dir, search["metrics"]))

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


# --------------------------------------------------------------------------------------------
# issue 13: the student search (stages/search.json)


def _search_point(cand: Mapping[str, Any], batch: str) -> tuple[float, str] | None:
    """(latency ms, precision) of a candidate's best precision at `batch` (screen, min)."""
    options = [
        (lat[batch]["min_ms"], label)
        for label, lat in (cand.get("latency") or {}).items()
        if batch in lat
    ]
    return min(options) if options else None


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, accuracy) points no other point beats on both (lower latency, higher
    accuracy), sorted by latency."""
    front: list[tuple[float, float]] = []
    for lat, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((lat, acc))
    return front


def write_pareto_plot(plots_dir: Path, metrics: Mapping[str, Any]) -> Path:
    """Validation top-1 vs screened latency (best precision, rank batch) of every candidate:
    trained ones at their accuracy (with their Pareto front, the teacher and the budget line),
    screened-out ones (latency only) in a strip below on the same latency axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = str(metrics.get("rank_batch", 64))
    teacher_val = 100 * float(metrics.get("teacher_val_top1", 0.0))
    budget = 100 * float(metrics.get("max_drop", 0.0))
    teacher_ms = (metrics.get("teacher_latency_ms") or {}).get(batch, {}).get("min_ms")
    trained: list[tuple[float, float, str, str]] = []
    screened: list[tuple[float, str]] = []
    for cand in metrics.get("candidates") or []:
        point = _search_point(cand, batch)
        if point is None:
            continue
        if cand.get("val_top1") is not None:
            trained.append((point[0], 100 * cand["val_top1"], cand["name"], cand["status"]))
        else:
            screened.append((point[0], cand["name"]))
    fig, (ax, rug) = plt.subplots(
        2, 1, figsize=(7.5, 5.4), sharex=True, gridspec_kw={"height_ratios": [4, 1]}
    )
    colours = {"kept": "#228833", "rejected": "#cc3311"}
    for lat, acc, name, status in trained:
        ax.scatter(lat, acc, color=colours.get(status, "#4477aa"), s=40, zorder=3)
        ax.annotate(name, (lat, acc), fontsize=7, xytext=(4, 4), textcoords="offset points")
    front = pareto_front(
        [(lat, acc) for lat, acc, _, _ in trained]
        + ([(float(teacher_ms), teacher_val)] if teacher_ms else [])
    )
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), color="#228833", alpha=0.5, label="Pareto front")
    if teacher_ms:
        ax.scatter(teacher_ms, teacher_val, marker="*", s=120, color="#0077bb", zorder=3,
                   label="teacher-fp32")  # fmt: skip
    ax.axhline(teacher_val - budget, color="#ee7733", ls="--", lw=1,
               label=f"budget: teacher - {budget:.2f} pp")  # fmt: skip
    ax.scatter([], [], color="#cc3311", label="trained, outside budget")
    ax.scatter([], [], color="#228833", label="trained, within budget")
    ax.scatter([], [], color="#4477aa", label="trained earlier (pruned teacher)")
    for i, (lat, name) in enumerate(sorted(screened)):
        y = i % 4
        rug.scatter(lat, y, marker="x", color="#777777", s=25)
        rug.annotate(name, (lat, y), fontsize=6, xytext=(3, -2), textcoords="offset points",
                     color="#555555")  # fmt: skip
    rug.set_yticks([])
    rug.set_ylim(-0.8, 3.8)
    rug.set_ylabel("screened\nonly", fontsize=8)
    ax.set_xscale("log")
    rug.set_xlabel(f"min latency at batch {batch}, best precision (ms, log; screen, interleaved)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("Student search: accuracy vs latency on the target")
    ax.grid(True, alpha=0.3)
    rug.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = _save(fig, plots_dir / "search_pareto.png")
    plt.close(fig)
    return path


def search_section(metrics: Mapping[str, Any], manifest: Mapping[str, Any]) -> list[str]:
    batches = sorted({b for c in metrics.get("candidates") or []
                      for lat in (c.get("latency") or {}).values() for b in lat}, key=int)  # fmt: skip
    head = ["candidate", "MACs", "status", "val top-1", "best"]
    head += [f"{p} ×teacher @{b}" for p in ("FP32", "INT8") for b in batches]
    rows = ["| " + " | ".join(head) + " | reason |", "|" + "---|" * (len(head) + 1)]
    for cand in metrics.get("candidates") or []:
        ratios = cand.get("ratios_vs_teacher_fp32") or {}
        int8 = {b: max((r.get(b, 0.0) for k, r in ratios.items() if k.startswith("int8")),
                       default=None) for b in batches}  # fmt: skip
        cells = [f"`{cand['name']}`", f"{cand.get('macs', 0):,}", cand.get("status", ""),
                 "—" if cand.get("val_top1") is None else f"{100 * cand['val_top1']:.2f} %",
                 str(cand.get("best_precision", "—"))]  # fmt: skip
        cells += [_fmt_ratio((ratios.get("fp32") or {}).get(b)) for b in batches]
        cells += [_fmt_ratio(int8[b]) for b in batches]
        rows.append("| " + " | ".join(cells) + f" | {cand.get('reason', '')} |")
    rec = manifest.get("recommended") or {}
    detail = manifest.get("recommended_detail") or {}
    rec_lines = [
        f"- **{ep}**: `{name}` ({detail.get(ep, {}).get('speedup_vs_teacher_fp32')}× teacher-fp32 "
        f"at batch {detail.get(ep, {}).get('batch_size')}, test top-1 "
        f"{100 * float(detail.get(ep, {}).get('test_top1', 0)):.2f} %)"
        for ep, name in rec.items()
    ]
    return [
        "## Student search (latency measured on the target)",
        "",
        f"Winner: `{metrics.get('winner')}` ({metrics.get('winner_arch')} "
        f"{metrics.get('winner_widths')}), validation top-1 "
        f"{100 * float(metrics.get('winner_val_top1') or 0):.2f} % vs the teacher's "
        f"{100 * float(metrics.get('teacher_val_top1', 0)):.2f} % (budget "
        f"{100 * float(metrics.get('max_drop', 0)):.2f} pp, decided on validation). Screen "
        f"ratios are teacher-fp32 / candidate min latency, untrained weights, interleaved with "
        f"the teacher in one run on {metrics.get('provider')} ({metrics.get('threads')} thread).",
        "",
        *rows,
        "",
        "Recommended artifact per EP (fastest in the bench stage within the accuracy budget on "
        "test):",
        "",
        *(rec_lines or ["- none"]),
        "",
    ]


def _fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}×"
