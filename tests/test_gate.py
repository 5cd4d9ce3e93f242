"""`onnxship gate`: per-artifact accuracy against a baseline, JUnit output, exit codes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from onnxship.cli import main
from onnxship.errors import PipelineError
from onnxship.gate import gate, read_baseline


def _manifest(tmp_path: Path, accuracies: dict[str, float], latency: dict | None = None) -> Path:
    artifacts = {
        name: {
            "path": f"artifacts/{name}.onnx",
            "accuracy": {"test_top1": acc},
            "latency": (latency or {}).get(name, {}),
        }
        for name, acc in accuracies.items()
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema_version": 1, "artifacts": artifacts}))
    return path


def _baseline(tmp_path: Path, obj: object, name: str = "baseline.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def _floors(tmp_path: Path, floors: dict[str, tuple[float, float]]) -> Path:
    """A baseline giving each artifact its (test_top1, max_drop)."""
    artifacts = {n: {"test_top1": top1, "max_drop": drop} for n, (top1, drop) in floors.items()}
    return _baseline(tmp_path, {"artifacts": artifacts})


def _gate_junit(manifest: Path, baseline: Path) -> tuple[int, ET.Element]:
    """`onnxship gate --junit FILE`: its exit code and the root of the JUnit XML it wrote."""
    junit = manifest.parent / "gate.xml"
    code = main(
        ["gate", "--manifest", str(manifest), "--baseline", str(baseline), "--junit", str(junit)]
    )
    return code, ET.parse(junit).getroot()


def test_gate_passes_when_every_artifact_is_within_its_allowed_drop(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, {"student-int8": 0.982, "teacher-fp32": 0.991})
    baseline = _floors(tmp_path, {"student-int8": (0.985, 0.003), "teacher-fp32": (0.99, 0.0)})
    cases = gate(manifest, baseline)
    assert [c.ok for c in cases] == [True, True]
    # 0.982 == 0.985 - 0.003 exactly: the boundary passes despite float rounding.
    assert cases[0].required == pytest.approx(0.982, abs=1e-12)


def test_gate_fails_naming_the_artifact_when_accuracy_regressed(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, {"student-int8": 0.9810, "student-fp32": 0.99})
    baseline = _floors(tmp_path, {"student-int8": (0.985, 0.003), "student-fp32": (0.985, 0.003)})
    code, junit = _gate_junit(manifest, baseline)
    assert code == 1
    suite = junit.find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    failed = [tc.get("name") for tc in suite.iter("testcase") if tc.find("failure") is not None]
    assert failed == ["student-int8"]


def test_gate_fails_when_a_baseline_artifact_is_missing_from_the_manifest(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, {"student-fp32": 0.99})
    baseline = _floors(tmp_path, {"teacher-int8": (0.9, 0.1)})
    code, junit = _gate_junit(manifest, baseline)
    assert code == 1
    failure = junit.find("testsuite/testcase/failure")
    assert failure is not None and "missing" in failure.get("message", "")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"artifacts": {}}), "names no artifacts"),
        (json.dumps({"thresholds": 1}), "names no artifacts"),
        (json.dumps({"artifacts": {"a": {"test_top1": 1.5}}}), "expected a number in [0.0, 1.0]"),
        (json.dumps({"artifacts": {"a": {"max_drop": 0.1}}}), "expected an object with test_top1"),
    ],
)
def test_gate_exits_2_on_a_bad_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    manifest = _manifest(tmp_path, {"a": 0.9})
    baseline = tmp_path / "baseline.json"
    baseline.write_text(content)
    assert main(["gate", "--manifest", str(manifest), "--baseline", str(baseline)]) == 2
    assert expected in capsys.readouterr().err


def test_gate_exits_2_on_an_unknown_manifest_schema_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"schema_version": 7, "artifacts": {}}))
    baseline = _baseline(tmp_path, {"artifacts": {"a": {"test_top1": 0.5}}})
    assert main(["gate", "--manifest", str(manifest), "--baseline", str(baseline)]) == 2
    assert "schema_version 7" in capsys.readouterr().err


def test_gate_ignores_latency_unless_opted_in(tmp_path: Path) -> None:
    lat = {
        "student-int8": {"CPUExecutionProvider": {"64": {"p50_ms": 2.0}}},
        "student-fp32": {"CPUExecutionProvider": {"64": {"p50_ms": 1.0}}},
    }
    manifest = _manifest(tmp_path, {"student-int8": 0.99, "student-fp32": 0.99}, lat)
    baseline = _baseline(
        tmp_path,
        {
            "artifacts": {"student-int8": {"test_top1": 0.98, "max_drop": 0.0}},
            "latency_ratios": [{"fast": "student-int8", "slow": "student-fp32",
                                "provider": "cpu", "batch": 64, "min_ratio": 1.0}],
        },
    )  # fmt: skip
    assert all(c.ok for c in gate(manifest, baseline))
    cases = gate(manifest, baseline, check_latency=True)
    latency = [c for c in cases if c.kind == "latency"]
    assert len(latency) == 1 and not latency[0].ok
    assert latency[0].observed == pytest.approx(0.5)


def test_read_baseline_accepts_the_committed_baseline() -> None:
    root = Path(__file__).resolve().parents[1]
    baseline = read_baseline(root / "baselines" / "mnist_simplecnn.json")
    for name in ("teacher-fp32", "student-fp32", "student-int8", "student-fp16"):
        assert name in baseline["artifacts"]


def test_read_baseline_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="does not exist"):
        read_baseline(tmp_path / "nope.json")


@pytest.mark.parametrize("observed", [1.5, -0.01, 98.7, "0.99", None])
def test_gate_exits_2_when_the_manifest_accuracy_is_not_a_fraction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], observed: object
) -> None:
    manifest = _manifest(tmp_path, {"student-int8": observed})  # type: ignore[dict-item]
    baseline = _baseline(tmp_path, {"artifacts": {"student-int8": {"test_top1": 0.98}}})
    assert main(["gate", "--manifest", str(manifest), "--baseline", str(baseline)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "artifacts.student-int8.accuracy.test_top1" in err and "[0.0, 1.0]" in err


def _class_manifest(tmp_path: Path, by_class: dict[str, float]) -> Path:
    entry = {
        "path": "artifacts/student-int8.onnx",
        "accuracy": {"test_top1": 0.99},
        "integer_class": "avx2",
        "accuracy_by_class": {cls: {"test_top1": acc} for cls, acc in by_class.items()},
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema_version": 1, "artifacts": {"student-int8": entry}}))
    return path


def test_gate_require_class_fails_for_a_class_the_bundle_never_saw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _class_manifest(tmp_path, {"avx2": 0.99})
    baseline = _baseline(tmp_path, {"artifacts": {"student-int8": {"test_top1": 0.985,
                                                                   "max_drop": 0.003}}})  # fmt: skip
    junit = tmp_path / "gate.xml"
    rc = main(["gate", "--manifest", str(manifest), "--baseline", str(baseline),
               "--require-class", "avx2,avx512_vnni", "--junit", str(junit)])  # fmt: skip
    assert rc == 1
    out = capsys.readouterr().out
    assert "no accuracy measured on integer class avx512_vnni (measured on: avx2)" in out
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {"student-int8", "student-int8 on avx2", "student-int8 on avx512_vnni"}
    assert cases["student-int8 on avx512_vnni"].find("failure") is not None
    assert cases["student-int8 on avx2"].find("failure") is None


def test_gate_require_class_fails_when_the_class_accuracy_is_below_the_baseline(
    tmp_path: Path,
) -> None:
    manifest = _class_manifest(tmp_path, {"avx2": 0.90, "avx512_vnni": 0.99})
    baseline = _baseline(tmp_path, {"artifacts": {"student-int8": {"test_top1": 0.985,
                                                                   "max_drop": 0.003}}})  # fmt: skip
    cases = {c.name: c for c in gate(manifest, baseline, require_classes="avx2,avx512_vnni")}
    assert cases["student-int8"].ok  # the headline accuracy passes ...
    assert cases["student-int8 on avx512_vnni"].ok
    bad = cases["student-int8 on avx2"]  # ... but on avx2 it regressed
    assert not bad.ok and bad.observed == 0.90 and "on avx2 0.9000 is below 0.9820" in bad.message


def test_gate_require_class_reads_a_target_record_of_that_class(tmp_path: Path) -> None:
    manifest = _class_manifest(tmp_path, {"avx2": 0.99})
    doc = json.loads(manifest.read_text())
    doc["targets"] = {"epyc-9r14": {"integer_class": "avx512_vnni",
                                    "accuracy": {"student-int8": {"test_top1": 0.987}}}}  # fmt: skip
    manifest.write_text(json.dumps(doc))
    baseline = _baseline(tmp_path, {"artifacts": {"student-int8": {"test_top1": 0.985}}})
    assert all(c.ok for c in gate(manifest, baseline, require_classes=["avx512_vnni"]))


def test_gate_require_class_unknown_name_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _class_manifest(tmp_path, {"avx2": 0.99})
    baseline = _baseline(tmp_path, {"artifacts": {"student-int8": {"test_top1": 0.985}}})
    rc = main(["gate", "--manifest", str(manifest), "--baseline", str(baseline),
               "--require-class", "avx2,avx1024"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "found avx1024" in err and "avx512_vnni" in err and "arm64_i8mm" in err


def test_gate_require_class_does_not_count_a_forced_class(tmp_path: Path) -> None:
    """ONNXSHIP_INTEGER_CLASS simulates a class in the records; it is not a measurement there."""
    manifest = _class_manifest(tmp_path, {"avx2": 0.99, "avx512_vnni": 0.99})
    doc = json.loads(manifest.read_text())
    doc["artifacts"]["student-int8"]["accuracy_by_class"]["avx512_vnni"]["integer_class_forced"] = {
        "by": "ONNXSHIP_INTEGER_CLASS", "detected": "avx2"}  # fmt: skip
    manifest.write_text(json.dumps(doc))
    baseline = _baseline(tmp_path, {"artifacts": {"student-int8": {"test_top1": 0.985}}})
    cases = {c.name: c for c in gate(manifest, baseline, require_classes="avx512_vnni")}
    assert not cases["student-int8 on avx512_vnni"].ok
    assert "(measured on: avx2)" in cases["student-int8 on avx512_vnni"].message
