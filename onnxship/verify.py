"""`onnxship verify DIR`: is this bundle what its manifest says? (torch-free)

For every artifact: the file exists, its bytes and sha256 match, it is self-contained (no
external-data sidecar), it loads in ONNX Runtime, and its test accuracy re-measured with
the recorded settings equals the manifest's value exactly (same data, same runtime, same file:
any difference means something changed). The test data is the one the manifest's `dataset`
block names: MNIST's test split (kind "mnist", or no block), or the test `.npz` at
`dataset.test_path` (kind "npz"; relative to the bundle), whose sha256 must equal
`dataset.test_sha256`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxship.core.artifact import sha256_file
from onnxship.core.errors import OnnxshipError
from onnxship.manifest import read_manifest


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
        return all(c.ok for c in self.checks)

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


def verify_bundle(
    bundle: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    check_accuracy: bool = True,
) -> VerifyReport:
    from onnxship.runtime_bench.session import create_session

    root = Path(bundle)
    manifest = read_manifest(root / "manifest.json")
    report = VerifyReport(bundle=root)
    add = report.checks.append
    measure = _accuracy_source(root, manifest, data_dir, add) if check_accuracy else None
    for name, entry in manifest["artifacts"].items():
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
        sidecars = sorted(p.name for p in path.parent.glob(f"{path.name}*.data"))
        add(Check(name, "self-contained", not sidecars,
                  "no external-data sidecar" if not sidecars else f"sidecar(s) {sidecars}"))  # fmt: skip
        if not ok:
            continue  # a changed file's load and accuracy say nothing about the artifact
        try:
            create_session(path, "cpu")
        except OnnxshipError as exc:
            add(Check(name, "loads in ORT", False, str(exc)))
            continue
        add(Check(name, "loads in ORT", True, "CPUExecutionProvider"))
        if measure is None:
            continue
        recorded = entry["accuracy"]
        measured = measure(path, recorded)
        same = measured["top1"] == recorded["test_top1"]
        add(Check(name, "accuracy", same,
                  f"test top-1 {measured['top1']:.4f} (manifest {recorded['test_top1']:.4f})"))  # fmt: skip
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
    )
