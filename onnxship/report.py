"""report.md and plots/*.png: what a deployer reads, generated from the manifest and the stage
records only (so the report can never disagree with the files it describes)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onnxship.core.artifact import atomic_output, atomic_write_text
from onnxship.report_targets import targets_section, write_targets_plot
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


def _fmt_ms_ci(cell: Mapping[str, Any]) -> str:
    """p50 with its CI, e.g. `0.123 [0.120, 0.126]`; the plain p50 where no CI was recorded."""
    ci = cell.get("p50_ci_ms")
    if not ci or cell.get("p50_ms") is None:
        return _fmt_ms(cell.get("p50_ms"))
    return f"{_fmt_ms(cell['p50_ms'])} [{_fmt_ms(ci[0])}, {_fmt_ms(ci[1])}]"


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
        f"timed {how}; at most {iterations} timed calls each (the budget and CI target stop it "
        f"sooner) after {warmup} warm-up rounds, "
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
        cell = entry.get("latency", {}).get(ep, {}).get(at, {})
        paired = cell.get(f"speedup_vs_{teacher}") or {}
        rows.append(
            {
                "provider": ep,
                "artifact": name,
                "batch": at,
                "speedup": paired.get("ratio", (t / s) if t and s else None),
                "speedup_ci": paired.get("ci"),
                "ci_level": paired.get("ci_level"),
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
        if row.get("speedup_ci"):
            lo, hi = row["speedup_ci"]
            level = round(100 * float(row.get("ci_level") or 0.95))
            speed += f" ({level} % CI {lo:.2f}-{hi:.2f}x, paired bootstrap over rounds)"
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
        row += [_fmt_ms_ci(entry.get("latency", {}).get(ep, {}).get(b, {})) for ep, b in cols]
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
        "images) measured by running each `.onnx` file in ONNX Runtime; latency is the p50 "
        f"[{round(100 * float(manifest.get('bench', {}).get('ci_level') or 0.95))} % bootstrap "
        "CI over rounds] of every artifact timed together in block-interleaved rounds (the "
        "first call of each block untimed) with "
        f"{manifest.get('bench', {}).get('threads')} intra-op thread(s) on this machine (a "
        "shared machine is noisy: compare ratios from one run, with their CIs).",
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
    search = _record(out_dir, "search")
    if search:
        parts += search_section(search["metrics"], manifest)
    parts += targets_section(out_dir, manifest)
    parts += [
        "## Environment",
        "",
        f"- CPU: {env.get('cpu')} (ISA: {', '.join(env.get('isa', []))}; integer class "
        f"{env.get('integer_class', 'not recorded')}"
        f"{', forced' if env.get('integer_class_forced') else ''})",
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
            ci = entry["latency"][ep][batch].get("p50_ci_ms")
            if ci:  # the p50's bootstrap CI as a horizontal error bar
                ax.errorbar(p50, accuracy, xerr=[[p50 - ci[0]], [ci[1] - p50]], fmt="none",
                            ecolor="black", elinewidth=1, capsize=3, alpha=0.7)  # fmt: skip
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

    ci_plot = write_latency_ci_plot(plots_dir, manifest)
    if ci_plot is not None:
        written.append(ci_plot)
    search = _record(out_dir, "search")
    if search:
        written.append(write_pareto_plot(plots_dir, search["metrics"]))

    targets_plot = write_targets_plot(plots_dir, out_dir, manifest)
    if targets_plot is not None:
        written.append(targets_plot)

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
    server = write_server_plot(plots_dir / "server_qps_p99.png", server_results(out_dir, manifest))
    if server is not None:
        written.append(server)
    return written


def write_latency_ci_plot(plots_dir: Path, manifest: Mapping[str, Any]) -> Path | None:
    """p50 latency of every artifact with its bootstrap CI as error bars, one panel per EP and
    batch size (log scale); None when no latency was measured."""
    import matplotlib.pyplot as plt

    panels = [(ep, b) for ep in _providers(manifest) for b in _batches(manifest, ep)]
    if not panels:
        return None
    names = list(manifest["artifacts"])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.35 * len(names) + 1.6),
                             sharey=True, squeeze=False)  # fmt: skip
    level = round(100 * float(manifest.get("bench", {}).get("ci_level") or 0.95))
    for ax, (ep, batch) in zip(axes[0], panels, strict=True):
        ys, values, lows, highs = [], [], [], []
        for i, name in enumerate(names):
            cell = manifest["artifacts"][name].get("latency", {}).get(ep, {}).get(batch, {})
            if cell.get("p50_ms") is None:
                continue
            ci = cell.get("p50_ci_ms") or [cell["p50_ms"], cell["p50_ms"]]
            ys.append(i)
            values.append(cell["p50_ms"])
            lows.append(cell["p50_ms"] - ci[0])
            highs.append(ci[1] - cell["p50_ms"])
        ax.errorbar(values, ys, xerr=[lows, highs], fmt="o", color="#4477aa", ecolor="black",
                    capsize=3)  # fmt: skip
        ax.set_xscale("log")
        ax.set_title(f"{ep.replace('ExecutionProvider', '')} @ batch {batch}", fontsize=9)
        ax.set_xlabel(f"p50 ms ({level} % CI)")
        ax.grid(True, axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0][0].invert_yaxis()  # the manifest's order, top down
    fig.suptitle("Latency with bootstrap CIs (block-interleaved rounds)", fontsize=10)
    fig.tight_layout()
    path = _save(fig, plots_dir / "latency_ci.png")
    plt.close(fig)
    return path


def _save(fig: Any, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


# --------------------------------------------------------------------------------------------
# The student search (stages/search.json)


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
    rec_lines = [_recommended_line(ep, name, detail.get(ep, {})) for ep, name in rec.items()]
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


def _recommended_line(ep: str, name: str, d: Mapping[str, Any]) -> str:
    """One EP's recommendation, citing the speed-up's CI and a tie within noise."""
    ci = d.get("speedup_vs_teacher_fp32_ci")
    level = round(100 * float(d.get("ci_level") or 0.95))
    speed = f"{d.get('speedup_vs_teacher_fp32')}× teacher-fp32"
    if ci:
        speed += f" ({level} % CI {ci[0]}–{ci[1]}×)"
    batches = f"at batch {d.get('batch_size')}"
    if d.get("teacher_batch_size") not in (None, d.get("batch_size")):
        batches += f" vs the teacher at its best batch {d['teacher_batch_size']}"
    line = (
        f"- **{ep}**: `{name}` ({d.get('scenario', '')}: {speed} {batches}, "
        f"test top-1 {100 * float(d.get('test_top1', 0)):.2f} %)"
    )
    if d.get("decision") == "tie within noise":
        tie = d.get("fastest_speedup_over_chosen_ci") or ["?", "?"]
        line += (
            f"; tie within noise: `{d.get('fastest')}` is {d.get('fastest_speedup_over_chosen')}× "
            f"({level} % CI {tie[0]}–{tie[1]}×), not clear of the {d.get('margin')} margin / "
            f"{d.get('tie_band')} band, so the simpler artifact ships"
        )
    others = {s: v["artifact"] for s, v in (d.get("scenarios") or {}).items()}
    if others:
        line += "; per scenario: " + ", ".join(f"{s} `{a}`" for s, a in others.items())
    return line


def _fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}×"


# --------------------------------------------------------------------------------------------
# Server scenario: QPS vs p99

SERVER_RESULTS_FILE = "results/scenario-server.json"


def server_results(out_dir: Path, manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Server-scenario results of a bundle: the manifest's `scenarios.server` entries, else
    `results/scenario-server.json` (`onnxship bench --scenario server --json ...`)."""
    found = (manifest.get("scenarios") or {}).get("server")
    if isinstance(found, Mapping):
        found = found.get("results")
    if not found:
        path = out_dir / SERVER_RESULTS_FILE
        if path.is_file():
            found = json.loads(path.read_text()).get("results")
    return [r for r in (found or []) if r.get("scenario") == "server" and r.get("steps")]


def write_server_plot(path: Path, results: Sequence[Mapping[str, Any]]) -> Path | None:
    """p99 latency vs target QPS per model (log-log), the SLO as a line, each model's highest
    QPS that meets it starred. None when there is nothing to draw."""
    curves = [(r, [s for s in r["steps"] if s.get("p99_ms") is not None]) for r in results]
    curves = [(r, sorted(st, key=lambda s: s["target_qps"])) for r, st in curves if st]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    slos = sorted({float(r["slo_ms"]) for r, _ in curves})
    for i, (r, steps) in enumerate(curves):
        qps = [s["target_qps"] for s in steps]
        p99 = [s["p99_ms"] for s in steps]
        best = r.get("value")
        label = f"{r['model_name']}: " + (f"max {best:,.0f} QPS" if best else "SLO not met")
        (line,) = ax.plot(qps, p99, marker="o", ms=4, label=label, zorder=2 + i)
        if best:
            at = next(s for s in steps if s["target_qps"] == best)
            ax.scatter([best], [at["p99_ms"]], marker="*", s=160, color=line.get_color(),
                       edgecolors="black", zorder=10)  # fmt: skip
    for slo in slos:
        ax.axhline(slo, color="#aa3333", ls="--", lw=1)
        ax.annotate(f"SLO p99 <= {slo:g} ms", (0.01, slo), xycoords=("axes fraction", "data"),
                    xytext=(0, 4), textcoords="offset points", fontsize=8, color="#aa3333")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        fmt = ScalarFormatter()
        fmt.set_scientific(False)
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(NullFormatter())
    conc = sorted({int(r.get("concurrency", 1)) for r, _ in curves})
    ax.set_xlabel("target QPS (Poisson arrivals, batch 1, log scale)")
    ax.set_ylabel("p99 latency (ms, scheduled arrival to completion, log)")
    ax.set_title(f"Server scenario: p99 vs load ({'/'.join(map(str, conc))} worker(s))")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, 0.93))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
