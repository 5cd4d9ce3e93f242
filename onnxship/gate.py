"""`onnxship gate`: per-artifact accuracy against a committed baseline (torch-free, ORT-free).

Baseline (CONTRACT.md): {"artifacts": {"student-int8": {"test_top1": 0.985, "max_drop": 0.003}}}.
An artifact fails when it is missing from the manifest or its test_top1 is below
`test_top1 - max_drop`. Latency is never gated by default (shared machines are noisy); the
baseline may list opt-in ratio checks between two artifacts *of the same run*
("latency_ratios": [{"fast": "student-int8", "slow": "student-fp32", "provider":
"CPUExecutionProvider", "batch": 64, "min_ratio": 1.0}]) that run only with --check-latency.

`require_classes` (`--require-class avx2,avx512_vnni`): for every baseline artifact and named
CPU integer class, the accuracy measured on that class (`accuracy_by_class`, or a `targets`
record of that class) must exist and meet the baseline; the JUnit case is "<artifact> on
<class>". An unknown class name is a bad input listing the known ones (exit 2).
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from onnxship.core.artifact import atomic_output
from onnxship.errors import PipelineError
from onnxship.manifest import read_manifest
from onnxship.runtime_bench.providers import resolve_provider
from onnxship.targets import base_name, matching_targets, read_record, read_require_file

# Floating-point slack: a baseline written as 0.985 with max_drop 0.003 must pass at 0.982.
_EPS = 1e-9


@dataclass(frozen=True)
class GateCase:
    name: str
    ok: bool
    message: str
    observed: float | None
    required: float | None
    kind: str = "accuracy"


def _number(value: Any, where: str, *, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PipelineError(f"{where}: expected a number in [{lo}, {hi}], found {value!r}")
    if not lo <= value <= hi:
        raise PipelineError(f"{where}: expected a number in [{lo}, {hi}], found {value}")
    return float(value)


def read_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"baseline {p} does not exist; commit one (see baselines/)")
    try:
        baseline = json.loads(p.read_text())
    except ValueError as exc:
        raise PipelineError(f"baseline {p} is not valid JSON ({exc}); fix the file") from exc
    arts = baseline.get("artifacts") if isinstance(baseline, dict) else None
    if not isinstance(arts, dict) or not arts:
        raise PipelineError(
            f'baseline {p} names no artifacts; expected {{"artifacts": {{"student-int8": '
            '{"test_top1": 0.985, "max_drop": 0.003}}}}'
        )
    for name, spec in arts.items():
        where = f"baseline {p}: artifacts.{name}"
        if not isinstance(spec, dict) or "test_top1" not in spec:
            raise PipelineError(f"{where}: expected an object with test_top1 (and max_drop)")
        _number(spec["test_top1"], f"{where}.test_top1", lo=0.0, hi=1.0)
        _number(spec.get("max_drop", 0.0), f"{where}.max_drop", lo=0.0, hi=1.0)
    for i, ratio in enumerate(baseline.get("latency_ratios", [])):
        where = f"baseline {p}: latency_ratios[{i}]"
        missing = [k for k in ("fast", "slow", "min_ratio") if k not in ratio]
        if missing:
            raise PipelineError(f"{where}: missing {', '.join(missing)}")
        _number(ratio["min_ratio"], f"{where}.min_ratio", lo=0.0, hi=1e6)
    return baseline


def parse_integer_classes(text: str | Sequence[str]) -> tuple[str, ...]:
    """'avx2,avx512_vnni' -> ('avx2', 'avx512_vnni'); an unknown name is a bad input (exit 2)
    whose message lists the known classes."""
    from onnxship.core.env import INTEGER_CLASSES

    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(n.strip().lower() for n in items if n.strip()))
    unknown = [n for n in names if n not in INTEGER_CLASSES]
    if unknown or not names:
        found = ", ".join(unknown) if unknown else "nothing"
        raise PipelineError(
            f"--require-class: expected integer classes from {', '.join(INTEGER_CLASSES)}; "
            f"found {found}"
        )
    return names


def gate(
    manifest_path: str | os.PathLike[str],
    baseline_path: str | os.PathLike[str],
    *,
    check_latency: bool = False,
    require_classes: str | Sequence[str] | None = None,
    require_targets: str | os.PathLike[str] | None = None,
) -> list[GateCase]:
    """One case per baseline artifact (its `accuracy.test_top1`), one per baseline artifact and
    required integer class (its accuracy measured on that class), and opt-in latency cases."""
    classes = parse_integer_classes(require_classes) if require_classes is not None else ()
    manifest = read_manifest(manifest_path)
    wanted = read_require_file(require_targets) if require_targets is not None else None
    baseline = read_baseline(baseline_path)
    artifacts = manifest["artifacts"]
    cases: list[GateCase] = []
    for name, spec in baseline["artifacts"].items():
        required = float(spec["test_top1"]) - float(spec.get("max_drop", 0.0))
        if name not in artifacts:
            cases.append(GateCase(name, False, f"artifact {name} is missing from the manifest",
                                  None, required))  # fmt: skip
            continue
        observed = _observed_top1(artifacts[name], f"manifest {manifest_path}: artifacts.{name}")
        ok = observed + _EPS >= required
        message = (
            f"test top-1 {observed:.4f} >= {required:.4f} (baseline {spec['test_top1']} - "
            f"{spec.get('max_drop', 0.0)})"
            if ok
            else f"test top-1 {observed:.4f} is below {required:.4f} (baseline "
            f"{spec['test_top1']} - max_drop {spec.get('max_drop', 0.0)}): accuracy regressed "
            f"by {100 * (required - observed):.2f} pp beyond the allowed drop"
        )
        cases.append(GateCase(name, ok, message, observed, required))
    for cls in classes:
        cases.extend(_class_cases(manifest, baseline, cls, where=f"manifest {manifest_path}"))
    if check_latency:
        cases.extend(_latency_cases(artifacts, baseline.get("latency_ratios", [])))
    if wanted is not None:
        bundle = Path(manifest_path)
        bundle = bundle if bundle.is_dir() else bundle.parent
        cases.extend(gate_target_cases(manifest, bundle, baseline, wanted))
    return cases


def accuracy_on_class(manifest: dict[str, Any], name: str, cls: str) -> float | None:
    """Test top-1 of artifact `name` measured on integer class `cls`: the artifact's
    `accuracy_by_class[cls]`, else a `targets` record of that class (written by `onnxship tune`
    on a target) with an accuracy for it; None when the bundle never measured it there."""
    entry = manifest["artifacts"].get(name) or {}
    by_class = entry.get("accuracy_by_class") or {}
    measured = by_class.get(cls)
    # A class forced by ONNXSHIP_INTEGER_CLASS (a simulation) is not a measurement on that class.
    if (
        isinstance(measured, dict)
        and not measured.get("integer_class_forced")
        and "test_top1" in measured
    ):
        return float(measured["test_top1"])
    targets = manifest.get("targets") or {}
    for record in targets.values() if isinstance(targets, dict) else []:
        if not isinstance(record, dict) or record.get("integer_class") != cls:
            continue
        if record.get("integer_class_forced"):  # a simulated class measured nothing there
            continue
        measured = (record.get("accuracy") or {}).get(name)
        if isinstance(measured, dict):
            measured = measured.get("test_top1")
        if measured is not None:
            return measured
    return None


def _classes_measured(manifest: dict[str, Any], name: str) -> list[str]:
    entry = manifest["artifacts"].get(name) or {}
    by_class = entry.get("accuracy_by_class") or {}
    found = {c for c, m in by_class.items() if not (m or {}).get("integer_class_forced")}
    targets = manifest.get("targets") or {}
    found |= {r.get("integer_class") for r in targets.values() if isinstance(r, dict)} - {None}
    return sorted(found)


def _class_cases(
    manifest: dict[str, Any], baseline: dict[str, Any], cls: str, *, where: str
) -> list[GateCase]:
    """One case per baseline artifact on integer class `cls`: measured there and within the
    baseline, or a failure saying it was never measured on that class."""
    cases = []
    for name, spec in baseline["artifacts"].items():
        case = f"{name} on {cls}"
        required = float(spec["test_top1"]) - float(spec.get("max_drop", 0.0))
        if name not in manifest["artifacts"]:
            cases.append(GateCase(case, False, f"artifact {name} is missing from the manifest",
                                  None, required, "integer_class"))  # fmt: skip
            continue
        value = accuracy_on_class(manifest, name, cls)
        if value is None:
            seen = ", ".join(_classes_measured(manifest, name)) or "none"
            cases.append(GateCase(case, False, f"{name} has no accuracy measured on integer "
                                  f"class {cls} (measured on: {seen}); run `onnxship verify "
                                  "DIR --record-class` on a CPU of that class", None, required,
                                  "integer_class"))  # fmt: skip
            continue
        observed = _number(value, f"{where}: artifacts.{name} on {cls}", lo=0.0, hi=1.0)
        ok = observed + _EPS >= required
        verdict = ">=" if ok else "is below"
        cases.append(GateCase(case, ok, f"test top-1 on {cls} {observed:.4f} {verdict} "
                              f"{required:.4f} (baseline {spec['test_top1']} - "
                              f"{spec.get('max_drop', 0.0)})", observed, required,
                              "integer_class"))  # fmt: skip
    return cases


def _observed_top1(entry: Any, where: str) -> float:
    """The manifest's test top-1 of one artifact: a fraction in [0, 1], else a bad manifest
    (exit 2) - never a number the gate compares as if it were an accuracy."""
    accuracy = entry.get("accuracy") if isinstance(entry, dict) else None
    if not isinstance(accuracy, dict) or "test_top1" not in accuracy:
        raise PipelineError(
            f"{where}: expected accuracy.test_top1 (a fraction in [0, 1]), found none; "
            "regenerate the bundle with `onnxship run`"
        )
    try:
        return _number(accuracy["test_top1"], f"{where}.accuracy.test_top1", lo=0.0, hi=1.0)
    except PipelineError as exc:
        raise PipelineError(f"{exc}; the manifest is damaged, regenerate the bundle") from None


def _latency_cases(artifacts: dict[str, Any], ratios: list[dict[str, Any]]) -> list[GateCase]:
    cases = []
    for ratio in ratios:
        fast, slow = ratio["fast"], ratio["slow"]
        provider = resolve_provider(str(ratio.get("provider", "cpu")))
        batch = str(ratio.get("batch", 64))
        name = f"latency {fast} vs {slow} ({provider} @{batch})"
        try:
            t_fast = artifacts[fast]["latency"][provider][batch]["p50_ms"]
            t_slow = artifacts[slow]["latency"][provider][batch]["p50_ms"]
        except KeyError:
            cases.append(GateCase(name, False, f"no {provider} batch-{batch} latency for "
                                  f"{fast} and {slow} in the manifest", None,
                                  ratio["min_ratio"], "latency"))  # fmt: skip
            continue
        observed = t_slow / t_fast
        ok = observed >= float(ratio["min_ratio"])
        cases.append(GateCase(name, ok, f"{fast} is {observed:.2f}x {slow} (required >= "
                              f"{ratio['min_ratio']}x)", observed, float(ratio["min_ratio"]),
                              "latency"))  # fmt: skip
    return cases


def markdown(cases: list[GateCase]) -> str:
    lines = ["| check | result | detail |", "|---|---|---|"]
    for c in cases:
        lines.append(f"| `{c.name}` | {'pass' if c.ok else 'FAIL'} | {c.message} |")
    passed = sum(c.ok for c in cases)
    lines.append("")
    lines.append(f"gate: {passed} passed, {len(cases) - passed} failed")
    return "\n".join(lines)


def write_junit(cases: list[GateCase], path: str | os.PathLike[str]) -> Path:
    """One <testcase> per artifact (and per opted-in latency check)."""
    suite = ET.Element(
        "testsuite",
        name="onnxship-gate",
        tests=str(len(cases)),
        failures=str(sum(not c.ok for c in cases)),
        errors="0",
    )
    for c in cases:
        case = ET.SubElement(suite, "testcase", classname=f"onnxship.gate.{c.kind}", name=c.name)
        if not c.ok:
            failure = ET.SubElement(case, "failure", message=c.message)
            failure.text = json.dumps(asdict(c))
        else:
            out = ET.SubElement(case, "system-out")
            out.text = c.message
    root = ET.Element("testsuites")
    root.append(suite)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    with atomic_output(path) as tmp:
        tree.write(tmp, encoding="utf-8", xml_declaration=True)
    return Path(path)


def gate_target_cases(
    manifest: Mapping[str, Any], bundle: Path, baseline: Mapping[str, Any], wanted: list[str]
) -> list[Any]:
    """`gate --require-targets`: per required target (id or integer class), a failing case
    when no record matches; per matching record and baseline artifact, the accuracy measured
    on that target against the baseline's floor. Case names start with `target <id>`."""
    cases = []
    for want in wanted:
        found = matching_targets(manifest, want)
        if not found:
            known = ", ".join(sorted(manifest.get("targets") or {})) or "none"
            cases.append(GateCase(f"target {want}", False, f"no target record matches {want!r} "
                                  f"(records: {known}); run `onnxship tune` on such a machine",
                                  None, None, "target"))  # fmt: skip
            continue
        for tid in found:
            record = read_record(bundle, tid, manifest["targets"][tid])
            cases.extend(_target_accuracy_cases(tid, record, baseline))
    return cases


def _target_accuracy_cases(
    tid: str, record: Mapping[str, Any], baseline: Mapping[str, Any]
) -> list[Any]:
    accuracy = record.get("accuracy") or {}
    rec = str(record.get("recommended"))
    cases = []
    for name, spec in baseline["artifacts"].items():
        required = float(spec["test_top1"]) - float(spec.get("max_drop", 0.0))
        # the artifact as measured on the target, and the target's own INT8 file for it
        measured = [n for n in accuracy if base_name(n) == name]
        if not measured:
            cases.append(GateCase(f"target {tid}: {name}", False, f"the target record has no "
                                  f"accuracy for {name}", None, required, "target"))  # fmt: skip
        for n in measured:
            top1 = float(accuracy[n]["test_top1"])
            ok = top1 + _EPS >= required
            mark = " (recommended there)" if n == rec else ""
            cases.append(GateCase(
                f"target {tid}: {n}", ok,
                f"test top-1 on {record.get('integer_class')} {top1:.4f} "
                f"{'>=' if ok else 'is below'} {required:.4f}{mark}",
                top1, required, "target",
            ))  # fmt: skip
    return cases
