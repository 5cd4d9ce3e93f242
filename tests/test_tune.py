"""`onnxship tune`: the decision on the target, recorded in the bundle; verify and gate read it.

One tiny bundle (the fault matrix's reduced run, on a 6,000 + 1,000-image MNIST subset, with
teacher-int8) is built once per module. Two targets are simulated on this one machine: the
detected integer class, and `ONNXSHIP_INTEGER_CLASS` set to another class (a recorded simulation
knob: the class, the fingerprint and so the target id differ; the INT8 search then runs the
grid of that class, measured on this CPU). Tune measures on the bundle's own data/val.npz and
data/test.npz (checked against their recorded sha256), never MNIST: the torch-free test runs
tune, verify and gate from a wheel installed with `--no-deps` beside onnxruntime, numpy and
onnx, torch blocked and no MNIST under $ONNXSHIP_DATA_DIR.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import install_wheel, installed_cli  # noqa: E402  (tests/ is on sys.path)
from test_fault_matrix import SUBSET_TEST, SUBSET_TRAIN, TINY_CONFIG, run_cli, subset_data

from onnxship.core.artifact import sha256_file
from onnxship.core.env import integer_class

TUNE_CONFIG = TINY_CONFIG.replace("teacher_int8 = false", "teacher_int8 = true")
FAST = ("--budget-s", "4", "--no-progress")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("tune")
    config = work / "tiny.toml"
    config.write_text(TUNE_CONFIG)
    data = subset_data(work / "data", mnist_root, SUBSET_TRAIN, SUBSET_TEST)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONNXSHIP_DATA_DIR", os.fspath(data))
        rc, err = run_cli("run", "--config", os.fspath(config), "--out", os.fspath(work / "b"))
    assert rc == 0, err[-2000:]
    yield work / "b"


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the tiny bundle, with the data root its run used."""
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    monkeypatch.setenv("ONNXSHIP_DATA_DIR", os.fspath(tiny_bundle.parent / "data"))
    return copy


@pytest.fixture(scope="module")
def tuned(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the tiny bundle tuned once with the defaults on a machine without MNIST (no
    data root, downloads off), and its artifacts' bytes before the tune. Read it, do not
    change it: copy it first."""
    work = tmp_path_factory.mktemp("tuned")
    copy = work / "bundle"
    shutil.copytree(tiny_bundle, copy)
    before = {p.name: p.read_bytes() for p in (copy / "artifacts").iterdir()}
    (work / "no-mnist").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONNXSHIP_DATA_DIR", os.fspath(work / "no-mnist"))
        mp.setenv("ONNXSHIP_NO_DOWNLOAD", "1")
        rc, err = run_cli("tune", os.fspath(copy), *FAST)
    assert rc == 0, err[-2000:]
    return copy, before


def _targets(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text()).get("targets") or {}


def test_tune_records_a_target_with_its_own_int8_and_keeps_the_build_host_files(
    tuned: tuple[Path, dict],
) -> None:
    bundle, before = tuned
    (tid,) = _targets(bundle)
    assert tid.startswith(integer_class() + "-")
    record = json.loads((bundle / "targets" / f"{tid}.json").read_text())
    assert record["integer_class"] == integer_class()
    assert record["scenario"] == "single-stream"
    # the bundle's files are untouched; the target's INT8 files have their own names
    assert {p.name: p.read_bytes() for p in (bundle / "artifacts").iterdir()} == before
    own = record["artifacts"]
    assert set(own) == {f"student-int8@{tid}", f"teacher-int8@{tid}"}
    for name, info in own.items():
        assert (bundle / info["path"]).is_file()
        assert info["integer_class"] == integer_class() and info["made_on"] == tid
        assert info["recipe"]["name"] and len(info["source_sha256"]) == 64
        assert name in record["accuracy"]
    # every artifact was re-measured here, the recommended one within the budget
    rec = record["recommended"]
    teacher = record["accuracy"]["teacher-fp32"]["test_top1"]
    assert record["accuracy"][rec]["test_top1"] >= teacher - record["max_drop"] - 1e-9
    assert record["accuracy"]["teacher-fp32"]["n"] == SUBSET_TEST
    # every ratio carries its CI around the point estimate
    for per_batch in record["ratios"].values():
        for r in per_batch.values():
            assert r["ci"][0] <= r["ratio"] <= r["ci"][1]
    assert record["session_options"]["session"]["intra_op_threads"] >= 1
    # the options ship as a session-config file that `bench --session-config` runs exactly
    assert (bundle / record["session_config"]).is_file()
    rc, err = run_cli("bench", os.fspath(bundle / "artifacts" / "teacher-fp32.onnx"),
                      "--session-config", os.fspath(bundle / record["session_config"]),
                      "--batch-sizes", "1", "--iterations", "3", "--no-progress")  # fmt: skip
    assert rc == 0, err[-2000:]
    assert record["wall_s"] > 0


def test_tune_measures_on_the_bundles_own_data_without_mnist_calibration_apart_from_budget(
    tuned: tuple[Path, dict],
) -> None:
    """No MNIST and no --data-dir on the target (the `tuned` fixture): the INT8 search
    calibrates on the shipped calibration set (the seeded draw from data/val.npz) and measures
    its budget on the other rows of data/val.npz; test accuracy is measured on data/test.npz."""
    import numpy as np

    bundle = tuned[0]
    (tid,) = _targets(bundle)
    record = json.loads((bundle / "targets" / f"{tid}.json").read_text())
    with np.load(bundle / "data" / "val.npz") as val:
        rows = int(val["y"].shape[0])
    for name, own in record["artifacts"].items():
        calib = own["calibration"]
        shipped = bundle / "calibration" / f"{own['replaces']}-calib.npz"
        assert calib["sha256"] == sha256_file(shipped), name  # the build host's rows
        assert calib["disjoint"] is True, name
        assert calib["calibration_rows"] + calib["budget_rows"] == rows, name
        assert own["budget_data"] == f"npz:val.npz minus the {calib['calibration_rows']} " \
            "calibration rows"  # fmt: skip
    assert record["accuracy"]["teacher-fp32"]["n"] == SUBSET_TEST


def test_two_targets_coexist_and_a_retune_replaces_only_its_own(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = integer_class()
    sim = "avx512_vnni" if here != "avx512_vnni" else "avx2"  # another class than this CPU's
    assert run_cli("tune", os.fspath(bundle), "--no-requantize", *FAST)[0] == 0
    monkeypatch.setenv("ONNXSHIP_INTEGER_CLASS", sim)
    rc, err = run_cli("tune", os.fspath(bundle), "--no-requantize", "--scenario", "offline",
                      *FAST)  # fmt: skip
    assert rc == 0, err[-2000:]
    targets = _targets(bundle)
    assert len(targets) == 2, targets
    classes = sorted(t["integer_class"] for t in targets.values())
    assert classes == sorted({here, sim})
    vnni = next(t for t, e in targets.items() if e["integer_class"] == sim)
    record = json.loads((bundle / "targets" / f"{vnni}.json").read_text())
    assert record["fingerprint"]["integer_class_forced"]["detected"] == here
    assert record["scenario"] == "offline"
    other = {t: e for t, e in targets.items() if t != vnni}
    # a second tune on the same (simulated) machine replaces its record and no other
    rc, err = run_cli("tune", os.fspath(bundle), "--no-requantize", *FAST)
    assert rc == 0, err[-2000:]
    again = _targets(bundle)
    assert set(again) == set(targets)
    assert again[vnni]["scenario"] == "single-stream"
    assert {t: e for t, e in again.items() if t != vnni} == other


def _gate(bundle: Path, tmp_path: Path, wanted: list[str]) -> tuple[int, str]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    floor = {n: {"test_top1": a["accuracy"]["test_top1"], "max_drop": 0.01}
             for n, a in manifest["artifacts"].items()}  # fmt: skip
    base = tmp_path / "baseline.json"
    base.write_text(json.dumps({"artifacts": floor}))
    req = tmp_path / "targets.json"
    req.write_text(json.dumps({"targets": wanted}))
    junit = tmp_path / "gate.xml"
    rc, _ = run_cli("gate", "--manifest", os.fspath(bundle / "manifest.json"), "--baseline",
                    os.fspath(base), "--require-targets", os.fspath(req), "--junit",
                    os.fspath(junit))  # fmt: skip
    return rc, junit.read_text()


def test_gate_require_targets_fails_for_a_target_never_tuned(bundle: Path, tmp_path: Path) -> None:
    assert run_cli("tune", os.fspath(bundle), "--no-requantize", *FAST)[0] == 0
    rc, junit = _gate(bundle, tmp_path, [integer_class()])
    assert rc == 0, junit
    assert f'name="target {integer_class()}-' in junit
    never = "arm64_i8mm" if integer_class() != "arm64_i8mm" else "avx2"
    rc, junit = _gate(bundle, tmp_path, [integer_class(), never])
    assert rc == 1
    assert f'name="target {never}"' in junit and "no target record matches" in junit


def test_verify_checks_target_records(tuned: tuple[Path, dict], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tuned[0], bundle)
    rc, err = run_cli("verify", os.fspath(bundle))
    assert rc == 0, err[-2000:]
    (tid,) = _targets(bundle)
    own = next((bundle / "targets" / tid).glob("*.onnx"))
    own.write_bytes(own.read_bytes()[:-1] + b"\0")
    rc, _ = run_cli("verify", os.fspath(bundle), "--skip-accuracy")
    assert rc == 1


def _nothing_written(bundle: Path) -> bool:
    return not (bundle / "targets").exists() and not _targets(bundle)


@pytest.mark.parametrize(
    ("fault", "args", "expect"),
    [
        ("no-manifest", (), "manifest"),
        ("calib-altered", (), "calibration set was altered"),
        ("calib-missing", (), "calibration set of"),
        ("val-altered", (), "data/val.npz from the build host"),
        ("val-missing", (), "data/val.npz is missing"),
        ("val-unrecorded", (), "no quantize stage record names data/val.npz"),
        ("calib-not-drawn", (), "calibrated on rows its budget also measured"),
        ("test-altered", (), "test data changed after the run; restore it"),
        ("newer-schema", (), "schema_version"),
        ("provider", ("--provider", "cuda"), "CUDAExecutionProvider"),
        ("scenario", ("--scenario", "batchy"), "unknown scenario"),
    ],
)
def test_tune_bad_input_is_one_line_exit_2_nothing_written(
    bundle: Path, fault: str, args: tuple[str, ...], expect: str
) -> None:
    if fault == "no-manifest":
        (bundle / "manifest.json").unlink()
    elif fault == "calib-altered":
        npz = bundle / "calibration" / "student-int8-calib.npz"
        npz.write_bytes(npz.read_bytes() + b"\0")
    elif fault == "calib-missing":
        (bundle / "calibration" / "teacher-int8-calib.npz").unlink()
    elif fault in ("val-altered", "test-altered"):
        npz = bundle / "data" / f"{fault.split('-')[0]}.npz"
        npz.write_bytes(npz.read_bytes() + b"\0")
    elif fault == "val-missing":
        (bundle / "data" / "val.npz").unlink()
    elif fault == "val-unrecorded":
        _edit_quantize_records(bundle, lambda rec: rec["inputs"].pop())
    elif fault == "calib-not-drawn":  # a bundle that calibrated on its whole validation split
        calib = bundle / "calibration" / "student-int8-calib.npz"
        shutil.copyfile(bundle / "data" / "val.npz", calib)
        digest = sha256_file(calib)
        _edit_quantize_records(bundle, lambda rec: [
            o.update(sha256=digest) for o in rec["outputs"] if o["path"].endswith(calib.name)
        ])  # fmt: skip
    elif fault == "newer-schema":
        doc = json.loads((bundle / "manifest.json").read_text())
        doc["schema_version"] = 99
        (bundle / "manifest.json").write_text(json.dumps(doc))
    rc, err = run_cli("tune", os.fspath(bundle), *args, *FAST)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err[-2000:]
    assert lines and lines[-1].startswith("onnxship tune:") and expect in lines[-1], lines[-3:]
    if fault in ("val-altered", "test-altered", "calib-not-drawn"):
        assert "expected" in lines[-1] and "found" in lines[-1], lines[-1]
    assert not (bundle / "targets").exists()
    if fault not in ("no-manifest",):
        assert "targets" not in json.loads((bundle / "manifest.json").read_text())


def _edit_quantize_records(bundle: Path, edit: Callable[[dict], object]) -> None:
    """Apply `edit` to every quantize stage record of the bundle (faults of the records)."""
    for path in (bundle / "stages").glob("quantize*.json"):
        rec = json.loads(path.read_text())
        edit(rec)
        path.write_text(json.dumps(rec))


def test_tune_val_npz_of_the_users_measures_the_budget_on_it_whole(bundle: Path) -> None:
    """--val-npz with other rows: calibrated on the shipped set, the budget on that file."""
    import numpy as np

    other = bundle.parent / "other-val.npz"
    with np.load(bundle / "data" / "val.npz") as val:
        np.savez(other, x=val["x"][:300], y=val["y"][:300])
    rc, err = run_cli("tune", os.fspath(bundle), "--val-npz", os.fspath(other), *FAST)
    assert rc == 0, err[-2000:]
    (tid,) = _targets(bundle)
    record = json.loads((bundle / "targets" / f"{tid}.json").read_text())
    for own in record["artifacts"].values():
        assert own["budget_data"] == "npz:other-val.npz"
        assert own["calibration"]["disjoint"] is None and own["calibration"]["budget_rows"] == 300


def test_tune_a_bundle_made_before_data_npz_is_measured_on_mnist_under_data_dir(
    bundle: Path, tmp_path: Path
) -> None:
    """An MNIST bundle of onnxship 0.1.0 (no data/, no dataset.test_path, quantize records
    without data/val.npz): the one kind --data-dir is for; without MNIST there, one line."""
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["dataset"].pop("test_path")
    doc["dataset"].pop("test_sha256")
    (bundle / "manifest.json").write_text(json.dumps(doc))
    _edit_quantize_records(bundle, lambda rec: rec["inputs"].pop())
    shutil.rmtree(bundle / "data")
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, err = run_cli("tune", os.fspath(bundle), "--data-dir", os.fspath(empty), *FAST)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and "made before bundles carried data/val.npz" in lines[-1], lines[-3:]
    assert "MNIST not found" in lines[-1] and _nothing_written(bundle)
    rc, err = run_cli("tune", os.fspath(bundle), *FAST)  # $ONNXSHIP_DATA_DIR: the run's MNIST
    assert rc == 0, err[-2000:]
    (tid,) = _targets(bundle)
    record = json.loads((bundle / "targets" / f"{tid}.json").read_text())
    for own in record["artifacts"].values():
        assert own["calibration"]["disjoint"] is True
        assert own["budget_data"].startswith("train:validation minus")
    assert record["accuracy"]["teacher-fp32"]["n"] == SUBSET_TEST


def test_read_only_bundle_is_refused_without_out_and_tuned_as_a_copy_with_it(
    bundle: Path, tmp_path: Path
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the refusal cannot be observed")
    mode = bundle.stat().st_mode
    bundle.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        rc, err = run_cli("tune", os.fspath(bundle), "--no-requantize", *FAST)
        assert rc == 2 and "--out" in err
    finally:
        bundle.chmod(mode)


def test_out_tunes_a_copy_and_leaves_the_bundle_alone(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "overlay"
    rc, err = run_cli("tune", os.fspath(bundle), "--no-requantize", "--out", os.fspath(out),
                      *FAST)  # fmt: skip
    assert rc == 0, err[-2000:]
    assert _nothing_written(bundle)
    assert len(_targets(out)) == 1


TORCH_FREE = installed_cli(("torch", "torchvision"))  # the target has no torch


@pytest.mark.slow
def test_tune_verify_gate_without_torch(bundle: Path, wheel: Path, tmp_path: Path) -> None:
    """The target's path: a wheel installed with --no-deps beside onnxruntime, numpy and onnx
    (torch blocked): tune, then verify, then gate --require-targets."""
    site = install_wheel(wheel, tmp_path / "site")

    no_mnist = tmp_path / "no-mnist"  # the target has no MNIST either: the bundle's data/
    no_mnist.mkdir()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-I", "-c", TORCH_FREE, str(site), *args],
            capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
            env=os.environ | {"ONNXSHIP_DATA_DIR": os.fspath(no_mnist),
                              "ONNXSHIP_NO_DOWNLOAD": "1"},
        )  # fmt: skip

    tuned = cli("tune", os.fspath(bundle), *FAST)
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert "recommended" in tuned.stdout
    verified = cli("verify", os.fspath(bundle))
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
    assert "accuracy on target" in verified.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    floor = {n: {"test_top1": a["accuracy"]["test_top1"], "max_drop": 0.01}
             for n, a in manifest["artifacts"].items()}  # fmt: skip
    (tmp_path / "base.json").write_text(json.dumps({"artifacts": floor}))
    (tmp_path / "req.json").write_text(json.dumps({"targets": [integer_class()]}))
    gated = cli("gate", "--manifest", os.fspath(bundle / "manifest.json"), "--baseline",
                os.fspath(tmp_path / "base.json"), "--require-targets",
                os.fspath(tmp_path / "req.json"))  # fmt: skip
    assert gated.returncode == 0, gated.stdout[-2000:]


def _choice(ratios: dict[str, tuple[float, float, float]]) -> tuple[str, dict]:
    """`tune.choose` on hand-made single-stream ratios vs teacher-fp32 (ratio, CI low, high)."""
    from types import SimpleNamespace

    from onnxship.measure import RecommendPolicy
    from onnxship.runtime_bench.timing import Ratio
    from onnxship.tune import TuneConfig, _Candidate, choose

    kinds = {"teacher-fp32": ("fp32", 900, None), "student-fp32": ("fp32", 200, None),
             "student-int8": ("int8", 60, "student-fp32"),
             "student-fp16": ("fp16", 100, "student-fp32")}  # fmt: skip
    cands = [_Candidate(n, Path(n), p, b, parent=par) for n, (p, b, par) in kinds.items()]
    timing = {1: SimpleNamespace(ratios={
        n: Ratio(n, "teacher-fp32", r, (lo, hi), "p50") for n, (r, lo, hi) in ratios.items()
    })}  # fmt: skip
    chosen, why = choose(cands, timing, TuneConfig(), RecommendPolicy())
    return chosen.name, why


def test_choose_ships_int8_only_past_its_minimum_speedup_and_the_simpler_file_on_a_tie() -> None:
    # INT8 1.5x its FP32 (CI lower bound 2.9/2.05 = 1.41 >= 1.3): it ships
    name, _ = _choice({"student-fp32": (2.0, 1.95, 2.05), "student-int8": (3.0, 2.9, 3.1)})
    assert name == "student-int8"
    # INT8 only 1.1x its FP32: not eligible, and the FP32 student ships
    name, why = _choice({"student-fp32": (2.0, 1.95, 2.05), "student-int8": (2.2, 2.15, 2.25)})
    assert name == "student-fp32" and "student-int8" in why["not_eligible"]
    # FP16 a hair faster than FP32 (inside the margin): a tie within noise, FP32 ships
    name, why = _choice({"student-fp32": (2.0, 1.95, 2.05), "student-fp16": (2.04, 2.0, 2.08)})
    assert name == "student-fp32" and "tie_within_noise" in why
    # a student whose CI does not clear the margin over teacher-fp32 (exactly 1.0): a tie, and
    # teacher-fp32 (fp32, listed first among equals by simplicity, then size) ships only if it
    # is the simplest; here the student file is smaller, so the student ships
    name, why = _choice({"student-fp32": (1.02, 0.98, 1.06)})
    assert name == "student-fp32" and "tie_within_noise" not in why
