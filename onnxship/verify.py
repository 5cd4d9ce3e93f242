"""`onnxship verify DIR`: is this bundle what its manifest says? (torch-free, onnx-free)

The bundle: its manifest lists artifacts, and every artifact the contract requires
(`teacher-fp32`, `student-fp32`, `student-int8`, `student-fp16`).

For every artifact:
- checksum: the file exists, its bytes and sha256 match the manifest;
- self-contained: the model's own external-data references (`core.onnx_file`) are empty;
- precision: the content matches the `precision` label - `int8` has quantized operators
  (QuantizeLinear/DequantizeLinear, QLinear*, ConvInteger, MatMulInteger, ...), `fp16` has
  float16 initializers and no quantized operators, `fp32` has neither. An `int8` file must
  also have a share of MACs in integer kernels above 0 (unless nodes whose shapes cannot be
  inferred leave it uncounted, as the detail then says), recorded in the manifest
  (`integer_macs.share`) and, where the `onnx` package is installed, re-measured equal
  (`calibrate.coverage`; without onnx the detail says it was not re-measured);
- loads in ONNX Runtime (CPU);
- accuracy: test top-1 re-measured with the recorded settings on the data the manifest's
  `dataset` block names: the test `.npz` at `dataset.test_path` (relative to the bundle;
  every bundle `onnxship run` writes, MNIST included), whose sha256 must equal
  `dataset.test_sha256`, or, for older MNIST bundles without it, MNIST's test split. When this machine's
  environment matches the manifest's (CPU model, ISA extensions, onnxruntime version), the
  same file on the same data and runtime must give exactly the recorded top-1 (and the
  recorded predictions). Otherwise ORT's float kernels may legitimately flip a borderline
  argmax, so verify counts the predictions that differ from the recorded ones and passes when
  at most `max_differing` (default 0.1 % of the test set, 10 of 10,000) do; the detail says
  how many differed and why exactness was not required. The detail names the CPU integer
  class measured on, and the manifest's when it differs; an INT8 artifact whose recipe is not
  exact on this class says so. `record_class_accuracy` (`verify --record-class`) keeps the
  measurement in the manifest's `accuracy_by_class` under this class, for
  `gate --require-class`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxship.core.artifact import sha256_file
from onnxship.core.errors import OnnxshipError
from onnxship.manifest import REQUIRED_ARTIFACTS, read_manifest

BUNDLE = "(bundle)"
# Allowed share of differing test predictions when the environment differs from the one the
# manifest was measured in (another CPU / ISA / onnxruntime): 0.1 % = 10 of MNIST's 10,000.
DIFFERING_TOLERANCE = 0.001
ENVIRONMENT_KEYS = ("cpu", "isa", "integer_class", "onnxruntime")
QUANT_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
     "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm"}
)  # fmt: skip


@dataclass(frozen=True)
class Check:
    artifact: str
    check: str
    ok: bool
    detail: str
    measured: dict[str, Any] | None = None  # accuracy checks: what was measured, on which class


@dataclass
class VerifyReport:
    bundle: Path
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed_artifacts(self) -> list[str]:
        return sorted({c.artifact for c in self.checks if not c.ok})

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": os.fspath(self.bundle),
            "ok": self.ok,
            "failed_artifacts": self.failed_artifacts,
            "checks": [asdict(c) for c in self.checks],
        }

    def markdown(self) -> str:
        lines = ["| artifact | check | result | detail |", "|---|---|---|---|"]
        for c in self.checks:
            lines.append(
                f"| `{c.artifact}` | {c.check} | {'ok' if c.ok else 'FAIL'} | {c.detail} |"
            )
        return "\n".join(lines)


def current_environment() -> dict[str, Any]:
    """This machine's values of the keys that decide whether float results can be exact."""
    import onnxruntime as ort

    from onnxship.core.env import cpu_model_name, integer_class_record, isa_summary

    return {"cpu": cpu_model_name(), "isa": isa_summary(), **integer_class_record(),
            "onnxruntime": ort.__version__}  # fmt: skip


def environment_differences(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    """'key: recorded -> here' for each of ENVIRONMENT_KEYS that differs (ISA as sets); the
    integer class is compared when the manifest records one, and names both classes."""
    out = []
    for key in ENVIRONMENT_KEYS:
        a, b = recorded.get(key), here.get(key)
        if key == "integer_class":
            if a is not None and a != b:
                how = "forced by ONNXSHIP_INTEGER_CLASS" if here.get("integer_class_forced") else ""
                out.append(
                    f"integer class: {a} (bundle) -> {b} (this CPU{', ' + how if how else ''})"
                )
            continue
        same = sorted(a or []) == sorted(b or []) if key == "isa" else a == b
        if not same:
            out.append(f"{key}: {a} -> {b}")
    return out


def is_quantized_op(op: str) -> bool:
    name = op.split("::")[-1]
    return name in QUANT_OPS or name.startswith("QLinear")


def precision_check(name: str, path: Path, entry: Mapping[str, Any]) -> Check:
    """Does the file's content match its `precision` label?"""
    from onnxship.core.onnx_file import graph_content

    label = entry.get("precision")
    content = graph_content(path)
    quant = sorted(op for op in content.op_types if is_quantized_op(op))
    fp16 = content.initializer_dtypes.get("float16", 0)
    found = (
        f"found {'quantized ops ' + ', '.join(quant) if quant else 'no quantized ops'} and "
        f"{fp16} float16 initializer(s)"
    )
    if label == "int8":
        share_ok, macs = integer_share_check(path, entry)
        ok = bool(quant) and share_ok
        detail = f"int8: {found}{macs}" if quant else f"labelled int8 but {found}"
    elif label == "fp16":
        ok = fp16 > 0 and not quant
        detail = f"fp16: {found}" if ok else f"labelled fp16 but {found}"
    elif label == "fp32":
        ok = fp16 == 0 and not quant
        detail = f"fp32: {found}" if ok else f"labelled fp32 but {found}"
    else:
        ok, detail = False, f"unknown precision label {label!r}; expected fp32, fp16 or int8"
    return Check(name, "precision", ok, detail)


INTEGER_SHARE_TOLERANCE = 1e-6  # the manifest rounds the share to 6 decimals


def integer_share_check(path: Path, entry: Mapping[str, Any]) -> tuple[bool, str]:
    """(ok, detail) for an int8 file's share of MACs in integer kernels: the manifest must
    record one above 0, and where the `onnx` package is installed (it infers the shapes the
    count needs; `calibrate.coverage`) the file's share is re-measured and must equal it."""
    recorded = (entry.get("integer_macs") or {}).get("share")
    if not isinstance(recorded, (int, float)) or isinstance(recorded, bool):
        return False, (
            "; the manifest records no integer MAC share (integer_macs.share): an int8 label "
            "must say how much of the model runs in integer kernels"
        )
    text = f"; {100 * recorded:.1f} % of MACs in integer kernels (manifest)"
    try:
        import onnx  # noqa: F401
    except ImportError:
        uncounted = (entry.get("integer_macs") or {}).get("nodes_without_shapes") or []
        ok = recorded > 0 or bool(uncounted)
        return ok, text + ", not re-measured here (needs the onnx package)"
    from onnxship.calibrate.coverage import integer_mac_share

    coverage = integer_mac_share(path)
    measured, uncounted = coverage["share"], coverage.get("nodes_without_shapes") or []
    if measured is None or abs(measured - recorded) > INTEGER_SHARE_TOLERANCE:
        shown = "no Conv/MatMul/Gemm" if measured is None else f"{100 * measured:.1f} %"
        return False, f"{text}, but the file has {shown} (re-measured)"
    if uncounted:  # e.g. a QGemm after a com.microsoft op: ONNX infers no shape there
        return True, (
            f"{text}, re-measured equal, without {len(uncounted)} node(s) whose shapes ONNX "
            f"shape inference could not give ({', '.join(uncounted[:3])})"
        )
    if measured <= 0:
        return False, f"{text}: no multiply-accumulate runs in integer kernels"
    return True, f"{text}, re-measured equal"


def self_contained_check(name: str, path: Path) -> Check:
    from onnxship.core.onnx_file import external_data_refs

    try:
        refs = external_data_refs(path)
    except OnnxshipError as exc:
        return Check(name, "self-contained", False, str(exc))
    if refs:
        where = sorted({r.location for r in refs})
        return Check(name, "self-contained", False,
                     f"{len(refs)} tensor(s) stored outside the file, in {where}")  # fmt: skip
    return Check(name, "self-contained", True, "no external-data references")


def _recorded_predictions(root: Path, recorded: Mapping[str, Any]) -> tuple[Any, str | None]:
    """(the recorded argmax array or None, an error message or None)."""
    info = recorded.get("predictions")
    if not isinstance(info, Mapping):
        return None, None
    from onnxship.core.dataset import read_npz_arrays

    path = root / str(info.get("path"))
    if not path.is_file():
        return None, f"recorded predictions {info.get('path')} are missing"
    if info.get("sha256") and sha256_file(path) != info["sha256"]:
        return None, f"recorded predictions {info.get('path')} were changed after the run"
    data = read_npz_arrays(path, what="recorded predictions", fix="re-run the bundle")
    key = str(info.get("key"))
    if key not in data:
        return None, f"recorded predictions {info.get('path')} have no array {key!r}"
    return data[key], None


def accuracy_check(
    name: str,
    path: Path,
    root: Path,
    recorded: Mapping[str, Any],
    *,
    measure: Callable[[Path, Mapping[str, Any]], dict[str, Any]],
    differences: list[str],
    max_differing: int | None,
    classes: tuple[str | None, str] = (None, "unknown"),
) -> Check:
    """`classes`: (the integer class the manifest's accuracy was measured on, this CPU's)."""
    import numpy as np

    measured = measure(path, recorded)
    expected, problem = _recorded_predictions(root, recorded)
    if problem:
        return Check(name, "accuracy", False, problem)
    bundle_cls, here_cls = classes
    where = (
        f"on {here_cls}"
        if bundle_cls in (None, here_cls)
        else f"on {here_cls}, this CPU (the manifest's on {bundle_cls})"
    )
    top1 = f"test top-1 {measured['top1']:.4f} {where} (manifest {recorded['test_top1']:.4f})"
    result = {"integer_class": here_cls, "test_top1": measured["top1"],
              "correct": measured.get("correct"), "n": measured.get("n")}  # fmt: skip
    preds = measured["predictions"]
    if expected is not None and expected.shape != preds.shape:
        return Check(name, "accuracy", False, f"{top1}; the recorded predictions cover "
                     f"{expected.shape[0]} samples, this data {preds.shape[0]}")  # fmt: skip
    differing = int(np.sum(preds != expected)) if expected is not None else None
    if not differences:
        ok = measured["top1"] == recorded["test_top1"] and differing in (None, 0)
        same = f"{differing} differing predictions, " if differing is not None else ""
        return Check(name, "accuracy", ok, f"{top1}; {same}exact match required (same CPU, "
                     "ISA and onnxruntime as the manifest)", result)  # fmt: skip
    n = int(measured["n"])
    tolerance = max_differing if max_differing is not None else math.floor(DIFFERING_TOLERANCE * n)
    if differing is None:  # a manifest without predictions: |change in correct| is a floor
        differing = abs(int(measured["correct"]) - int(recorded.get("correct") or 0))
        counted = f"at least {differing} of {n} predictions differ (no recorded predictions)"
    else:
        counted = f"{differing} of {n} predictions differ"
    return Check(
        name,
        "accuracy",
        differing <= tolerance,
        f"{top1}; {counted}, tolerance {tolerance} because the environment differs from the "
        f"manifest's ({'; '.join(differences)})",
        result,
    )


def verify_bundle(
    bundle: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    check_accuracy: bool = True,
    max_differing: int | None = None,
) -> VerifyReport:
    """Every check of the module docstring; `report.ok` is False when any fails or when
    there is nothing to check."""
    from onnxship.runtime_bench.session import create_session

    root = Path(bundle)
    manifest = read_manifest(root / "manifest.json")
    report = VerifyReport(bundle=root)
    add = report.checks.append
    artifacts = manifest["artifacts"]
    if not artifacts:
        add(Check(BUNDLE, "artifacts", False, "the manifest lists no artifacts; expected at "
                  f"least {', '.join(REQUIRED_ARTIFACTS)}; regenerate the bundle"))  # fmt: skip
    for name in REQUIRED_ARTIFACTS:
        if artifacts and name not in artifacts:
            add(Check(name, "present", False, "a contract artifact, missing from the manifest"))
    differences: list[str] = []
    here_cls = str(current_environment()["integer_class"]) if check_accuracy else "unknown"
    if check_accuracy:
        differences = environment_differences(
            manifest.get("environment") or {}, current_environment()
        )
    measure = accuracy_source(root, manifest, data_dir, add) if check_accuracy else None
    for name, entry in artifacts.items():
        path = root / entry["path"]
        if not path.is_file():
            add(Check(name, "exists", False, f"{entry['path']} is missing"))
            continue
        size = path.stat().st_size
        digest = sha256_file(path)
        ok = digest == entry["sha256"] and size == entry["bytes"]
        detail = (
            f"sha256 {digest[:12]}…, {size} bytes"
            if ok
            else f"expected sha256 {entry['sha256'][:12]}… ({entry['bytes']} bytes), found "
            f"{digest[:12]}… ({size} bytes): the file was changed after the run"
        )
        add(Check(name, "checksum", ok, detail))
        add(self_contained_check(name, path))
        if not ok:
            continue  # a changed file's content and accuracy say nothing about the artifact
        try:
            add(precision_check(name, path, entry))
            create_session(path, "cpu")
        except OnnxshipError as exc:
            add(Check(name, "loads in ORT", False, str(exc)))
            continue
        add(Check(name, "loads in ORT", True, "CPUExecutionProvider"))
        if measure is not None:
            check = accuracy_check(
                name, path, root, entry["accuracy"], measure=measure, differences=differences,
                max_differing=max_differing, classes=(_bundle_class(manifest, entry), here_cls),
            )  # fmt: skip
            add(_with_class_risk(check, entry, here_cls))
    for tid in manifest.get("targets") or {}:
        report.checks.extend(target_checks(root, manifest, tid, measure))
    return report


def target_checks(
    root: Path, manifest: Mapping[str, Any], tid: str, measure: Callable[..., Any] | None
) -> list[Check]:
    """One `onnxship tune` record: present and unchanged (sha256), its own INT8 files present
    and unchanged, and - on a machine of the record's integer class - the recommended
    artifact's test top-1 re-measured: exact on the same fingerprint, else within
    `targets.RETEST_TOLERANCE` of the test set."""
    from onnxship.core.env import integer_class, machine_fingerprint
    from onnxship.targets import RETEST_TOLERANCE, artifact_path, read_record

    name = f"target {tid}"
    try:
        record = read_record(root, tid, manifest["targets"][tid])
    except OnnxshipError as exc:
        return [Check(name, "target record", False, str(exc))]
    checks = [Check(name, "target record", True, f"{manifest['targets'][tid]['record']} "
                    f"({record['integer_class']}, {record['scenario']}, recommended "
                    f"{record['recommended']})")]  # fmt: skip
    for own, info in (record.get("artifacts") or {}).items():
        path = root / info["path"]
        ok = path.is_file() and sha256_file(path) == info["sha256"]
        checks.append(Check(own, "checksum", ok, f"{info['path']} sha256 {info['sha256'][:12]}…"
                            if ok else f"{info['path']} is missing or changed since tune"))  # fmt: skip
    if measure is None or not all(c.ok for c in checks):
        return checks
    here = integer_class()
    if record["integer_class"] != here:
        checks.append(Check(name, "accuracy on target", True, f"not re-measured: recorded on "
                            f"{record['integer_class']}, this machine is {here}"))  # fmt: skip
        return checks
    rec = str(record["recommended"])
    got = measure(artifact_path(root, record, rec, manifest), {"split": "test"})
    want = record["accuracy"][rec]
    same = machine_fingerprint(record.get("provider"))["id"] == record["fingerprint"].get("id")
    tolerance = 0 if same else math.floor(RETEST_TOLERANCE * int(got["n"]))
    diff = abs(int(got["correct"]) - int(want["correct"]))
    checks.append(Check(name, "accuracy on target", diff <= tolerance,
                        f"{rec}: test top-1 {got['top1']:.4f} here, {want['test_top1']:.4f} in the "
                        f"record ({here}); {diff} correct answers apart, tolerance "
                        f"{tolerance} ({'same fingerprint' if same else 'same class, other machine'})"))  # fmt: skip
    return checks


def accuracy_source(
    root: Path,
    manifest: dict[str, Any],
    data_dir: str | os.PathLike[str] | None,
    add: Any,
) -> Any:
    """How to re-measure an artifact's accuracy, from the manifest's `dataset` block; None
    (with a failed check) when the recorded test data is missing or changed."""
    from onnxship.runtime_bench.accuracy import evaluate_npz, evaluate_onnx

    dataset = manifest.get("dataset") or {}
    if dataset.get("kind", "mnist") == "mnist" and not dataset.get("test_path"):  # older bundle
        return lambda path, recorded: evaluate_onnx(
            path,
            data_dir=data_dir,
            split=recorded.get("split", "test"),
            batch_size=int(recorded.get("batch_size") or 1000),
            provider=recorded.get("provider") or "cpu",
            return_predictions=True,
        )
    if not dataset.get("test_path"):  # npz, or an image folder's test split saved as npz
        add(Check("dataset", "test data", False,
                  f"the manifest's dataset block (kind {dataset.get('kind')!r}) names no test "
                  "file (test_path) to re-measure accuracy on"))  # fmt: skip
        return None
    test = Path(dataset["test_path"])
    test = test if test.is_absolute() else root / test
    if not test.is_file():
        add(Check("dataset", "test data", False, f"{test} is missing; ship the bundle whole "
                  "(its data/ folder)"))  # fmt: skip
        return None
    digest = sha256_file(test)
    if dataset.get("test_sha256") and digest != dataset["test_sha256"]:
        add(Check("dataset", "test data", False,
                  f"{test}: expected sha256 {dataset['test_sha256'][:12]}…, found "
                  f"{digest[:12]}…: the test data changed after the run; restore it from the "
                  "build host's bundle"))  # fmt: skip
        return None
    add(Check("dataset", "test data", True, f"{dataset['test_path']} sha256 {digest[:12]}…"))
    return lambda path, recorded: evaluate_npz(
        path,
        test,
        batch_size=int(recorded.get("batch_size") or 1000),
        provider=recorded.get("provider") or "cpu",
        return_predictions=True,
    )


def _bundle_class(manifest: Mapping[str, Any], entry: Mapping[str, Any]) -> str | None:
    """The integer class the manifest's accuracy of `entry` was measured on (None: older bundle)."""
    return entry.get("integer_class") or (manifest.get("environment") or {}).get("integer_class")


def _with_class_risk(check: Check, entry: Mapping[str, Any], here_cls: str) -> Check:
    """An INT8 artifact whose recipe is not exact on this CPU's class says so in the detail."""
    safe = entry.get("safe_integer_classes")
    if entry.get("precision") != "int8" or not isinstance(safe, list) or here_cls in safe:
        return check
    note = (
        f"; its recipe is not exact on {here_cls} ({entry.get('quant_risk') or 'see the manifest'}"
        f"; exact on {', '.join(safe) or 'no listed class'})"
    )
    return Check(check.artifact, check.check, check.ok, check.detail + note, check.measured)


def record_class_accuracy(bundle: str | os.PathLike[str], report: VerifyReport) -> list[str]:
    """Write the accuracies `report` measured into the bundle's manifest, under this CPU's
    integer class (`artifacts.<name>.accuracy_by_class[class]`, `measured_by: verify`), so
    `gate --require-class` can hold that class to the baseline. Returns the artifacts updated."""
    from onnxship.core.artifact import atomic_write_json, utc_now
    from onnxship.core.env import integer_class_record

    # A class forced by ONNXSHIP_INTEGER_CLASS is recorded as such (gate does not count it).
    forced = {k: v for k, v in integer_class_record().items() if k == "integer_class_forced"}
    path = Path(bundle) / "manifest.json"
    manifest = read_manifest(path)
    updated = []
    for check in report.checks:
        if check.check != "accuracy" or not check.measured:
            continue
        entry = manifest["artifacts"].get(check.artifact)
        if entry is None:
            continue
        cls = str(check.measured["integer_class"])
        by_class = entry.setdefault("accuracy_by_class", {})
        by_class[cls] = {
            "test_top1": check.measured["test_top1"], "correct": check.measured.get("correct"),
            "n": check.measured.get("n"), "measured_by": "verify", "verify_ok": check.ok,
            "measured": utc_now(), **forced,
        }  # fmt: skip
        updated.append(check.artifact)
    if updated:
        atomic_write_json(path, manifest, what="the bundle's manifest")
    return updated
