"""Shared fixtures: the real MNIST root and small, quickly trained checkpoints.

Accuracy tests use real MNIST from $ONNXSHIP_DATA_DIR (CI sets it to ../shared/data); nothing is
written outside pytest's tmp paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# What `onnxship` does before it imports torch (cli.main): OpenMP threads sleep while they
# wait instead of spinning. The tests import torch before they call main(), so the same
# setting is made here, before any test module is imported (subprocesses inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# ... and what main() does to the allocator, before any test allocates (onnxship.core.allocator).
from onnxship.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()


def _mnist_root() -> Path:
    env = os.environ.get("ONNXSHIP_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for root in candidates:
        if (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
            return root
    pytest.fail(
        "MNIST not found: set ONNXSHIP_DATA_DIR to a folder holding MNIST/raw/*-ubyte "
        f"(tried {', '.join(map(str, candidates))})"
    )


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    return _mnist_root()


# Torch and the exporters' packages: what a bench-only install does not have.
TORCH_AND_ONNX = ("torch", "torchvision", "onnx", "onnxscript", "onnx_ir")


def import_blocker(blocked: tuple[str, ...]) -> str:
    """Python source (for `python -c`) after which importing any of the top-level packages in
    `blocked` raises ImportError."""
    return f"""
import importlib.abc, sys
BLOCKED = {set(blocked)!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked in this test")
        return None
sys.meta_path.insert(0, Blocker())
"""


def installed_cli(blocked: tuple[str, ...]) -> str:
    """Python source: `python -I -c SOURCE SITE ARGS...` runs `onnxship ARGS` from the install in
    the folder SITE (asserted: not the checkout), with `blocked` unimportable."""
    return (
        "import sys\nsys.path.insert(0, sys.argv[1])\n"
        + import_blocker(blocked)
        + "import onnxship\nassert onnxship.__file__.startswith(sys.argv[1]), onnxship.__file__\n"
        "from onnxship.cli import main\nsys.exit(main(sys.argv[2:]))\n"
    )


def _pip(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args, "-q"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The onnxship wheel built from this checkout."""
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: the venv's setuptools builds it, no index needed.
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO_ROOT))
    (found,) = out.glob("onnxship-*.whl")
    return found


def install_wheel(wheel: Path, target: Path) -> Path:
    """`pip install --no-deps --target TARGET WHEEL`: onnxship alone, none of its dependencies."""
    _pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel))
    return target


def _quick_checkpoint(tmp_dir: Path, root: Path, arch: str, widths: dict, epochs: float) -> Path:
    import torch

    from onnxship.models.checkpoint import save_checkpoint
    from onnxship.models.loop import SgdConfig, train_sgd
    from onnxship.models.registry import create_model
    from onnxship.models.training_data import load_split

    torch.manual_seed(0)
    fit = load_split(root, "fit")
    model = create_model(arch, **widths)
    train_sgd(model, fit.x, fit.y, SgdConfig(epochs=epochs, lr=0.05), seed=0, progress=False)
    path = tmp_dir / f"{arch}.pt"
    save_checkpoint(model, path, stage="train", seed=0)
    return path


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """simple_cnn at the article's widths, trained for 0.3 epoch (~97 % test top-1)."""
    return _quick_checkpoint(
        tmp_path_factory.mktemp("ckpt"), mnist_root, "simple_cnn", {}, epochs=0.3
    )


@pytest.fixture(scope="session")
def trained_bn_checkpoint(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """bn_cnn at default widths, trained for 0.2 epoch."""
    return _quick_checkpoint(
        tmp_path_factory.mktemp("ckpt_bn"), mnist_root, "bn_cnn", {}, epochs=0.2
    )


# --------------------------------------------------------------------------------------------
# The reduced pipeline config: one base, overridden per test module


# An `onnxship run` small enough for tests (a few hundred optimiser steps of MNIST in all):
# every stage runs, with the budgets cut. Measured levels are in test_pipeline_e2e.py.
REDUCED: dict[str, Any] = {
    "train": {"augment": "none", "sgd": {"epochs": 0.05}},
    "prune": {"macs_budget": 0.1},
    "distill": {"sgd": {"epochs": 0.02}},
    "fp16": {"parity_samples": 1000},
    "quantize": {
        "recipe": "qdq-u8s8-perchannel-minmax-linear",
        "calibration": {"size": 64},
        "latency": {"seconds_per_batch_size": 0.2},
    },
    "bench": {"warmup": 1, "iterations": 5},
    "search": {
        "max_trained": 1,
        "screen": {"seconds_per_batch_size": 0.05, "min_iterations": 3, "max_iterations": 5},
        "train": {"epochs": 0.02},
    },
}


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def reduced_config(overrides: Mapping[str, Any] | None = None, **top: Any) -> str:
    """The reduced config as TOML, with `overrides` merged table by table (a value of None
    drops the key: the library's default applies) and top-level keys such as data_dir."""
    from onnxship.configio import to_toml

    return to_toml(_merge(_merge(REDUCED, overrides or {}), top))


# A run on a small MNIST subset, built in seconds: the first SUBSET_TRAIN training and
# SUBSET_TEST test images (the fixed validation split takes 5,000 of the training images, so
# 1,000 are left to fit on; 1,000 test images are the floor of the export's parity check),
# an 8-channel teacher, a student at half its MACs, the TorchScript exporter, one fixed INT8
# recipe, no teacher INT8/FP16 extras and no student search (their outputs go through the same
# writers as the student's; the search cost the fault matrix 15 s of its 45 s of CPU,
# measured). Epochs are fractions of the 1,000 fit images (2.7 = 21 steps of 128). For tests
# of fault handling and plumbing, not accuracy; the run's own gates (INT8 drop, FP16
# agreement, parity) and verify's accuracy re-measurement still apply to this data.
SUBSET_TRAIN = 6000
SUBSET_TEST = 1000
SMALL: dict[str, Any] = {
    "train": {"widths": [["conv_channels", 8], ["hidden", 32]], "sgd": {"epochs": 2.7}},
    "prune": {"macs_budget": 0.5},
    "export": {"exporter": "torchscript"},  # 0.25 s of CPU per export here against 2.4 s
    "distill": {"sgd": {"epochs": 1.0}},
    "quantize": {
        "latency": {"seconds_per_batch_size": 0.05, "min_iterations": 2, "max_iterations": 5}
    },
    "bench": {"iterations": 3},
    "extra": {"teacher_int8": False, "teacher_fp16": False},
    "search": {"enabled": False},
}


def subset_data(root: Path, source: Path, n_train: int, n_test: int) -> Path:
    """A data root holding the first `n_train` training and `n_test` test images (and labels)
    of the MNIST root `source`, as idx files whose headers say so."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
    ):  # fmt: skip
        n = n_train if name.startswith("train") else n_test
        with open(source / "MNIST" / "raw" / name, "rb") as handle:
            magic = handle.read(4)
            dims = [int.from_bytes(handle.read(4), "big") for _ in range(magic[3])]
            assert dims[0] >= n, f"{name}: {dims[0]} items, fewer than {n}"
            body = handle.read(n * (dims[1] * dims[2] if len(dims) == 3 else 1))
        head = magic + b"".join(d.to_bytes(4, "big") for d in (n, *dims[1:]))
        (raw / name).write_bytes(head + body)
    return root


@pytest.fixture(scope="session")
def mnist_subset(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """A data root of the first SUBSET_TRAIN training and SUBSET_TEST test images of MNIST."""
    return subset_data(tmp_path_factory.mktemp("mnist_subset"), mnist_root, SUBSET_TRAIN,
                       SUBSET_TEST)  # fmt: skip


# --------------------------------------------------------------------------------------------
# The shared bundle: one reduced `onnxship run` per pytest session


def stage_records(bundle: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in (bundle / "stages").glob("*.json")}


def unvouched_files(bundle: Path) -> list[str]:
    """Files under a final name in `bundle` that no stage record or the manifest vouches for
    (none with the same folder, name and sha256)."""
    from onnxship.core.artifact import sha256_file
    from onnxship.pipeline import RUN_LOCK, RUN_MARKER

    vouched: dict[str, set[str]] = {}
    problems: list[str] = []
    try:
        records = stage_records(bundle)
    except ValueError as exc:
        return [f"a stage record is not valid JSON: {exc}"]
    for record in records.values():
        for out in record.get("outputs", []):
            p = Path(out["path"])
            vouched.setdefault(f"{p.parent.name}/{p.name}", set()).add(out["sha256"])
    manifest = bundle / "manifest.json"
    has_manifest = manifest.is_file()
    if has_manifest:
        try:
            entries = json.loads(manifest.read_text())["artifacts"]
        except (ValueError, KeyError) as exc:
            return [f"manifest.json is not a valid manifest: {exc}"]
        for entry in entries.values():
            p = Path(entry["path"])
            vouched.setdefault(f"{p.parent.name}/{p.name}", set()).add(entry["sha256"])
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle)
        if path.name.endswith(".tmp"):
            continue  # temporary files are counted apart
        if rel.parts[0] == "stages" or path.name in (RUN_MARKER, RUN_LOCK, "manifest.json"):
            continue  # records, the marker and the manifest vouch; the lock file is bookkeeping
        if rel.parts[0] == "data":
            continue  # the unrecorded data step rewrites data/*.npz (atomically) every run
        if rel.parts[0] == "plots" or path.name == "report.md":
            if not has_manifest:
                problems.append(f"{rel} without a manifest")
            continue
        key = f"{path.parent.name}/{path.name}"
        if sha256_file(path) not in vouched.get(key, set()):
            problems.append(f"{rel} (no record or manifest entry with its sha256)")
    return problems


@pytest.fixture(scope="session")
def reduced_bundle(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """`onnxship run` of the reduced config, built once per session and shared by the tests
    that read a real bundle (contract, report, verify, gate, README commands). Read it, do
    not change it: copy it first.

    Built the hard way: run 1, a separate process, is SIGKILLed once the train stage is
    recorded; run 2 (in this process: no second torch import) resumes and completes it."""
    import contextlib
    import io
    import signal
    import subprocess
    import sys
    import time

    from onnxship.cli import main

    work = tmp_path_factory.mktemp("reduced")
    config = work / "reduced.toml"
    config.write_text(reduced_config(data_dir=os.fspath(mnist_root)))
    out = work / "bundle"
    args = ["run", "--config", os.fspath(config), "--out", os.fspath(out)]
    first = subprocess.Popen(
        [sys.executable, "-m", "onnxship.cli", *args], cwd=work, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    train_record = out / "stages" / "train.json"
    deadline = time.monotonic() + 300
    while not train_record.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert train_record.exists(), first.communicate()[0] if first.poll() is not None else "timeout"
    time.sleep(1.0)  # let it get into the next stage (export) before the kill
    if first.poll() is None:
        os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert not (out / "manifest.json").exists()
    # Nothing half-written under a final name: every file has a record with its sha256.
    assert unvouched_files(out) == []
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    assert code == 0, err.getvalue()[-3000:]
    assert "[skip] train" in err.getvalue(), err.getvalue()[-3000:]
    assert not list(out.rglob("*.tmp")), "a temporary file survived the resumed run"
    return out
