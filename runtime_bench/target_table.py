"""`onnxship bench merge` over `onnxship tune` records: one row per target and artifact, the
recommended artifact marked per target, and where targets disagree (numpy-free, stdlib only).

Inputs are target records (`BUNDLE/targets/<id>.json`) or bundle folders (every record their
manifest lists)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onnxship.runtime_bench.errors import BenchError


def is_target_record(doc: Any) -> bool:
    return isinstance(doc, dict) and {"fingerprint", "recommended", "ratios"} <= set(doc)


def records_from(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The target records in a bundle folder (its manifest's `targets`) or one record file."""
    p = Path(path)
    if p.is_dir():
        manifest = p / "manifest.json"
        if not manifest.is_file():
            raise BenchError(f"{p} is a folder without manifest.json; pass a bundle or files")
        targets = json.loads(manifest.read_text()).get("targets") or {}
        if not targets:
            raise BenchError(f"{p}: the manifest lists no targets; run `onnxship tune {p}` first")
        return [json.loads((p / e["record"]).read_text()) for e in targets.values()]
    doc = json.loads(p.read_text())
    if not is_target_record(doc):
        raise BenchError(f"{p} is not an `onnxship tune` record (targets/<id>.json)")
    return [doc]


def target_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        for name, acc in rec["accuracy"].items():
            per_batch = rec["ratios"].get(name) or {}
            for batch, r in sorted(per_batch.items(), key=lambda kv: int(kv[0])) or [("", {})]:
                rows.append({
                    "target": rec["id"], "integer_class": rec["integer_class"],
                    "scenario": rec["scenario"], "artifact": name, "batch_size": batch,
                    "ratio_vs_teacher_fp32": r.get("ratio"), "ratio_ci": r.get("ci"),
                    "p50_ms": r.get("p50_ms"), "test_top1": acc.get("test_top1"),
                    "recommended": name == rec["recommended"],
                })  # fmt: skip
    return rows


def disagreements(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per pair of targets whose recommended artifacts differ."""
    out = []
    for i, a in enumerate(records):
        for b in records[i + 1 :]:
            if a["recommended"].split("@")[0] != b["recommended"].split("@")[0]:
                out.append(f"- {a['id']} ({a['integer_class']}, {a['scenario']}) recommends "
                           f"{a['recommended']}; {b['id']} ({b['integer_class']}, "
                           f"{b['scenario']}) recommends {b['recommended']}")  # fmt: skip
    return out


def targets_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| target | class | scenario | artifact | batch | vs teacher-fp32 (95 % CI) | "
             "test top-1 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in target_rows(records):
        ci = r["ratio_ci"]
        speed = f"{r['ratio_vs_teacher_fp32']:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"
        speed = "1.00x (the reference)" if r["artifact"] == "teacher-fp32" else speed
        mark = " **recommended**" if r["recommended"] else ""
        lines.append(f"| {r['target']} | {r['integer_class']} | {r['scenario']} | "
                     f"`{r['artifact']}`{mark} | {r['batch_size'] or '-'} | {speed} | "
                     f"{100 * r['test_top1']:.2f} % |")  # fmt: skip
    split = disagreements(records)
    verdict = ["", "Targets disagree:", *split] if split else ["", "All targets agree."]
    return "\n".join(lines + verdict)
