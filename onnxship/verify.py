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
  `dataset` block names: MNIST's test split (kind "mnist", or no block), or the test `.npz`
  at `dataset.test_path` (kind "npz"; relative to the bundle), whose sha256 must equal
  `dataset.test_sha256`. When this machine's
  environment matches the manifest's (CPU model, ISA extensions, onnxruntime version), the
  same file on the same data and runtime must give exactly the recorded top-1 (and the
  recorded predictions). Otherwise ORT's float kernels may legitimately flip a borderline
  argmax, so verify counts the predictions that differ from the recorded ones and passes when
  at most `max_differing` (default 0.1 % of the test set, 10 of 10,000) do; the detail says
  how many differed and why exactness was not required.
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
ENVIRONMENT_KEYS = ("cpu", "isa", "onnxruntime")
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

    from onnxship.core.env import cpu_model_name, isa_summary

    return {"cpu": cpu_model_name(), "isa": isa_summary(), "onnxruntime": ort.__version__}


def environment_differences(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    """'key: recorded -> here' for each of ENVIRONMENT_KEYS that differs (ISA as sets)."""
    out = []
    for key in ENVIRONMENT_KEYS:
        a, b = recorded.get(key), here.get(key)
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
    import numpy as np

    path = root / str(info.get("path"))
    if not path.is_file():
        return None, f"recorded predictions {info.get('path')} are missing"
    if info.get("sha256") and sha256_file(path) != info["sha256"]:
        return None, f"recorded predictions {info.get('path')} were changed after the run"
    with np.load(path) as data:
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
) -> Check:
    import numpy as np

    measured = measure(path, recorded)
    expected, problem = _recorded_predictions(root, recorded)
    if problem:
        return Check(name, "accuracy", False, problem)
    top1 = f"test top-1 {measured['top1']:.4f} (manifest {recorded['test_top1']:.4f})"
    preds = measured["predictions"]
    if expected is not None and expected.shape != preds.shape:
        return Check(name, "accuracy", False, f"{top1}; the recorded predictions cover "
                     f"{expected.shape[0]} samples, this data {preds.shape[0]}")  # fmt: skip
    differing = int(np.sum(preds != expected)) if expected is not None else None
    if not differences:
        ok = measured["top1"] == recorded["test_top1"] and differing in (None, 0)
        same = f"{differing} differing predictions, " if differing is not None else ""
        return Check(name, "accuracy", ok, f"{top1}; {same}exact match required (same CPU, "
                     "ISA and onnxruntime as the manifest)")  # fmt: skip
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
    if check_accuracy:
        differences = environment_differences(
            manifest.get("environment") or {}, current_environment()
        )
    measure = _accuracy_source(root, manifest, data_dir, add) if check_accuracy else None
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
            add(accuracy_check(name, path, root, entry["accuracy"], measure=measure,
                               differences=differences, max_differing=max_differing))  # fmt: skip
    return report


def _accuracy_source(
    root: Path,
    manifest: dict[str, Any],
    data_dir: str | os.PathLike[str] | None,
    add: Any,
) -> Any:
    """How to re-measure an artifact's accuracy, from the manifest's `dataset` block; None
    (with a failed check) when the recorded test data is missing or changed."""
    from onnxship.runtime_bench.accuracy import evaluate_npz, evaluate_onnx

    dataset = manifest.get("dataset") or {}
    if dataset.get("kind", "mnist") == "mnist":
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
        add(Check("dataset", "test data", False, f"{test} is missing"))
        return None
    digest = sha256_file(test)
    if dataset.get("test_sha256") and digest != dataset["test_sha256"]:
        add(Check("dataset", "test data", False,
                  f"{test}: expected sha256 {dataset['test_sha256'][:12]}…, found "
                  f"{digest[:12]}…: the test data changed after the run"))  # fmt: skip
        return None
    add(Check("dataset", "test data", True, f"{dataset['test_path']} sha256 {digest[:12]}…"))
    return lambda path, recorded: evaluate_npz(
        path,
        test,
        batch_size=int(recorded.get("batch_size") or 1000),
        provider=recorded.get("provider") or "cpu",
        return_predictions=True,
    )
