"""Target records: what `onnxship tune` decided on one target machine (torch-free, onnx-free).

A bundle is built on one machine and deployed on others. `onnxship tune BUNDLE`, run on a
target, writes `BUNDLE/targets/<id>.json` (the record) and adds an entry to the manifest's
`targets` map; INT8 files re-quantized there go to `BUNDLE/targets/<id>/<artifact>.onnx` and
never replace the build host's files. This module owns the record's layout and the checks that
`verify` and `gate --require-targets` run on it.

Record (schema `TARGET_SCHEMA`):
    {"schema": 1, "id", "fingerprint": {...}, "integer_class", "provider", "scenario",
     "statistic", "batch_size", "recommended", "session_options", "ratios": {name: {ratio,
     ci, statistic, reference}}, "accuracy": {name: {test_top1, correct, n}},
     "artifacts": {name: {path, sha256, bytes, precision, parent, recipe, source_sha256,
     integer_class, made_on}}, "max_drop", "timing": {...}, "wall_s", "created",
     "onnxship_version"}
Manifest entry: `targets[<id>] = {"record": "targets/<id>.json", "sha256", "integer_class",
"recommended", "scenario", "provider", "test_top1"}`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxship.core.artifact import sha256_file
from onnxship.errors import PipelineError

TARGET_SCHEMA = 1
TARGETS_DIR = "targets"
# When the target's fingerprint differs from the record's (same integer class), float kernels
# may flip a borderline argmax: the re-measured top-1 may differ by this share of the test set.
RETEST_TOLERANCE = 0.001


def record_path(bundle: Path, target_id: str) -> Path:
    return bundle / TARGETS_DIR / f"{target_id}.json"


def read_record(bundle: Path, target_id: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The record a manifest entry names, checked against the entry's sha256."""
    rel = str(entry.get("record") or f"{TARGETS_DIR}/{target_id}.json")
    path = bundle / rel
    if not path.is_file():
        raise PipelineError(f"target {target_id}: record {rel} is missing; rerun `onnxship tune`")
    digest = sha256_file(path)
    if entry.get("sha256") and digest != entry["sha256"]:
        raise PipelineError(
            f"target {target_id}: record {rel} has sha256 {digest[:12]}…, the manifest expects "
            f"{str(entry['sha256'])[:12]}…: it was changed after tune; rerun `onnxship tune`"
        )
    try:
        record = json.loads(path.read_text())
    except ValueError as exc:
        raise PipelineError(f"target {target_id}: record {rel} is not valid JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("schema") != TARGET_SCHEMA:
        raise PipelineError(
            f"target {target_id}: record {rel} has schema {record.get('schema')!r}, expected "
            f"{TARGET_SCHEMA}; rerun `onnxship tune` with this onnxship"
        )
    return record


def manifest_entry(record: Mapping[str, Any], rel: str, sha256: str) -> dict[str, Any]:
    rec = str(record["recommended"])
    return {
        "record": rel,
        "sha256": sha256,
        "integer_class": record["integer_class"],
        "provider": record["provider"],
        "scenario": record["scenario"],
        "recommended": rec,
        "session_options": (record.get("session_options") or {}).get("session"),
        "session_config": record.get("session_config"),
        "test_top1": (record.get("accuracy", {}).get(rec) or {}).get("test_top1"),
        # every artifact's test top-1 measured there (gate --require-class reads it)
        "accuracy": {n: a.get("test_top1") for n, a in (record.get("accuracy") or {}).items()},
        "integer_class_forced": bool((record.get("fingerprint") or {}).get("integer_class_forced")),
    }


def matching_targets(manifest: Mapping[str, Any], wanted: str) -> list[str]:
    """Target ids in the manifest matched by `wanted`: a target id, or an integer class that a
    record was measured on (a record whose class was forced for simulation matches by id only)."""
    targets = manifest.get("targets") or {}
    if wanted in targets:
        return [wanted]
    # by class, only records measured on a CPU of that class (not a forced, simulated class)
    return sorted(
        t
        for t, e in targets.items()
        if e.get("integer_class") == wanted and not e.get("integer_class_forced")
    )


def artifact_path(bundle: Path, record: Mapping[str, Any], name: str, manifest: Mapping) -> Path:
    """Where artifact `name` of a target record lives: the target's own INT8 files first,
    then the bundle's artifacts."""
    own = (record.get("artifacts") or {}).get(name)
    if own:
        return bundle / own["path"]
    return bundle / manifest["artifacts"][name]["path"]


def base_name(name: str) -> str:
    """`student-int8@avx2-1a2b3c4d` -> `student-int8` (the baseline's name for it)."""
    return name.split("@", 1)[0]


def read_require_file(path: str | os.PathLike[str]) -> list[str]:
    """`{"targets": ["<target id or integer class>", ...]}` -> the list (bad file: exit 2)."""
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"--require-targets {p} does not exist; write "
                            '{"targets": ["avx2", ...]} there')  # fmt: skip
    try:
        data = json.loads(p.read_text())
    except ValueError as exc:
        raise PipelineError(f"--require-targets {p} is not valid JSON ({exc})") from exc
    wanted = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(wanted, list) or not wanted or not all(isinstance(w, str) for w in wanted):
        raise PipelineError(
            f'--require-targets {p}: expected {{"targets": ["<target id or integer class>", '
            f"...]}} with at least one string, found {data!r:.200}"
        )
    return list(wanted)


def still_valid_targets(bundle: Path, artifacts: Mapping[str, Any]) -> dict[str, Any]:
    """The `targets` of the bundle's current manifest that still describe `artifacts` (a
    rebuilt manifest keeps a target only while its record is intact and every bundle file it
    measured has the same sha256; a retrained or re-exported artifact makes it stale)."""
    path = bundle / "manifest.json"
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}
    kept = {}
    for tid, entry in (old.get("targets") or {}).items():
        try:
            record = read_record(bundle, tid, entry)
        except PipelineError:
            continue
        measured = record.get("bundle_artifacts") or {}
        if measured and all(
            (artifacts.get(n) or {}).get("sha256") == sha for n, sha in measured.items()
        ):
            kept[tid] = entry
    return kept
