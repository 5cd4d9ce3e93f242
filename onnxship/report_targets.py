"""The report's targets part: one section per `onnxship tune` record and one figure of every
artifact's speed-up over teacher-fp32 on each target, so targets that disagree show it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxship.errors import PipelineError
from onnxship.targets import read_record


def target_records(out_dir: Path, manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    records = {}
    for tid, entry in (manifest.get("targets") or {}).items():
        try:
            records[tid] = read_record(out_dir, tid, entry)
        except PipelineError:
            continue  # verify reports a damaged record; the report shows the intact ones
    return records


def _first_ratio(per_batch: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    if not per_batch:
        return None
    batch = max(per_batch, key=lambda b: per_batch[b]["ratio"])
    return batch, per_batch[batch]


def targets_section(out_dir: Path, manifest: Mapping[str, Any]) -> list[str]:
    """`## Target <id>` per record: scenario, recommended artifact and options, accuracy here,
    and every artifact's ratio vs teacher-fp32 with its CI."""
    records = target_records(out_dir, manifest)
    if not records:
        return []
    recs = {r["recommended"] for r in records.values()}
    parts = [
        "## Targets (decided on the target by `onnxship tune`)",
        "",
        "Targets agree on the recommended artifact."
        if len(recs) == 1
        else f"Targets disagree: recommended {', '.join(sorted(recs))} on different machines.",
        "",
    ]
    for tid, rec in records.items():
        fp = rec.get("fingerprint") or {}
        opts = rec.get("session_options") or {}
        forced = " (integer class forced for simulation)" if fp.get("integer_class_forced") else ""
        parts += [
            f"### Target `{tid}`",
            "",
            f"{fp.get('cpu')} ({rec['integer_class']}{forced}), {fp.get('usable_cores')} usable "
            f"cores, onnxruntime {fp.get('onnxruntime')}, {rec['provider']}; scenario "
            f"{rec['scenario']}; tuned in {rec['wall_s']:.1f} s. Recommended: "
            f"`{rec['recommended']}` with {opts.get('chosen')} ({opts.get('verdict')}).",
            "",
            "| artifact | test top-1 here | speed-up vs teacher-fp32 (95 % CI) | batch |",
            "|---|---|---|---|",
        ]
        for name, acc in rec["accuracy"].items():
            got = _first_ratio(rec["ratios"].get(name) or {})
            speed = (
                f"{got[1]['ratio']:.2f}x [{got[1]['ci'][0]:.2f}, {got[1]['ci'][1]:.2f}]"
                if got
                else "not timed (outside the accuracy budget)"
            )
            mark = " **(recommended)**" if name == rec["recommended"] else ""
            parts.append(f"| `{name}`{mark} | {100 * acc['test_top1']:.2f} % | {speed} | "
                         f"{got[0] if got else '-'} |")  # fmt: skip
        parts.append("")
    return parts


def write_targets_plot(plots_dir: Path, out_dir: Path, manifest: Mapping[str, Any]) -> Path | None:
    """Grouped bars: per artifact, its speed-up over teacher-fp32 on each target (95 % CI)."""
    records = target_records(out_dir, manifest)
    if not records:
        return None
    import matplotlib.pyplot as plt
    import numpy as np

    from onnxship.core.artifact import atomic_output

    names = sorted({n.split("@", 1)[0] for r in records.values() for n in r["ratios"]})
    width = 0.8 / len(records)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (tid, rec) in enumerate(records.items()):
        values, lo, hi = [], [], []
        for name in names:
            got = _first_ratio(rec["ratios"].get(name) or {})
            values.append(got[1]["ratio"] if got else np.nan)
            lo.append(got[1]["ratio"] - got[1]["ci"][0] if got else 0)
            hi.append(got[1]["ci"][1] - got[1]["ratio"] if got else 0)
        x = np.arange(len(names)) + i * width
        ax.bar(x, values, width, yerr=[lo, hi], capsize=3,
               label=f"{tid} ({rec['scenario']})")  # fmt: skip
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=20, fontsize=8)
    ax.set_ylabel("speed-up vs teacher-fp32 on that target (p50, 95 % CI)")
    ax.set_title("The same artifacts on each target")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = plots_dir / "targets.png"
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
