"""Faults a real machine throws, injected at the OS boundary of every writer, plus signals at
every stage boundary of a reduced `onnxship run`, a data root that disappears and a corrupted
checkpoint; and the single commands that write a pair of files (checkpoint weights
and sidecar, INT8 model and calibration set) failing on the second one.

Every case asserts the same five things, tallied per assertion and printed at the end of the
module (set ONNXSHIP_FAULT_SUMMARY=FILE to also get them as JSON):

  exit_code   the documented code: 3 environment fault, 130 SIGINT, 143 SIGTERM, 2 bad input
  one_line    exactly one `onnxship <cmd>: ...` line on stderr, the last one, no traceback
  vouched     every file under a final name in the bundle is described by a stage record
              (sha256 equal) or the manifest; report/plots only next to a manifest
  no_temp     no `.tmp` file in the bundle and nothing left in $TMPDIR (scratch folders)
  rerun       the next clean run exits 0 and `onnxship verify` (checksums, ORT load, accuracy
              re-measured) accepts the bundle (a single command: the same command exits 0
              and writes what it should)

How faults are injected: `open` (builtins and io, which pathlib uses) and `os.replace` are
wrapped so that the *temporary* file of one chosen final name fails like the OS would: ENOSPC
after half the bytes were written, EACCES/EROFS at open, ENOENT because the temporary file was
deleted before the rename, or a signal raised mid-write. Library writers (onnx.save_model,
torch.save into bytes, matplotlib/PIL savefig, zipfile for .npz) all end in these calls. One
case takes a real kernel fault instead: EFBIG from `ulimit -f`.

Cost (the module is part of `make test`; about 30 s on a quiet 2-core machine): one reduced
bundle (tiny teacher, tiny epochs, on a 6,000 + 1,000-image subset of MNIST, no student
search; torch on one thread) is built once per module *through* the signal chain: each
invocation is interrupted at the next stage boundary (SIGINT, then SIGTERM), the next one
resumes, so every boundary is hit with both signals for the compute of one run. Writer faults
copy that bundle and redo only the stage they break; all stages are deterministic, so nothing
downstream reruns. Faults on the same stage share one rerun. Every `onnxship run` that gets to
the end renders the report's plots (about half a second each), the largest single cost left.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import (  # noqa: E402  (tests/ is on sys.path)
    SMALL,
    SUBSET_TEST,
    SUBSET_TRAIN,
    reduced_config,
    subset_data,
    unvouched_files,
)

from onnxship.cli import main
from onnxship.core.artifact import atomic_output

pytestmark = pytest.mark.slow

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

TINY_CONFIG = reduced_config(SMALL)

STAGES = (
    "train",
    "export-teacher",
    "prune",
    "distill",
    "export-student",
    "quantize",
    "fp16",
    "eval",
    "bench",
)
EXIT = {"SIGINT": 130, "SIGTERM": 143}
WORD = {"SIGINT": "interrupted", "SIGTERM": "terminated"}
ASSERTIONS = ("exit_code", "one_line", "vouched", "no_temp", "rerun")


# --------------------------------------------------------------------------------------------
# The tally: every case records each of its assertions; the module prints the counts.


@dataclass
class Tally:
    cases: dict[str, dict[str, bool]] = field(default_factory=dict)
    lines: dict[str, str] = field(default_factory=dict)  # the error line each case printed
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per test (and fixture)

    def record(self, case: str, assertion: str, ok: bool) -> None:
        self.cases.setdefault(case, {})[assertion] = bool(ok)

    def summary(self) -> dict[str, Any]:
        per = {
            a: {
                "passed": sum(1 for c in self.cases.values() if c.get(a) is True),
                "checked": sum(1 for c in self.cases.values() if a in c),
            }
            for a in ASSERTIONS
        }
        return {
            "faults_injected": len(self.cases),
            "assertions": per,
            "cases": self.cases,
            "lines": self.lines,
            "cpu_s": self.cpu_s,
        }

    def text(self) -> list[str]:
        summary = self.summary()
        out = [f"fault matrix: {summary['faults_injected']} faults injected"]
        for name, counts in summary["assertions"].items():
            out.append(f"  {name:9s} {counts['passed']}/{counts['checked']} passed")
        total = sum(self.cpu_s.values())
        out.append(
            f"  CPU time of the module's tests and fixture (this process + children): {total:.1f} s"
        )
        return out


def cpu_seconds() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.fixture(autouse=True)
def _cpu_per_test(request: pytest.FixtureRequest) -> Iterator[None]:
    start = cpu_seconds()
    yield
    TALLY.cpu_s[request.node.name] = round(cpu_seconds() - start, 2)


TALLY = Tally()


class _TallyReporter:
    """Prints the tally in pytest's terminal summary (fixture output would be captured)."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if TALLY.cases:
            terminalreporter.write_sep("-", "fault matrix")
            for line in TALLY.text():
                terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def _report_tally(request: pytest.FixtureRequest) -> Iterator[None]:
    manager = request.config.pluginmanager
    if not manager.has_plugin("onnxship-fault-tally"):
        manager.register(_TallyReporter(), "onnxship-fault-tally")
    yield
    target = os.environ.get("ONNXSHIP_FAULT_SUMMARY")
    if target:
        Path(target).write_text(json.dumps(TALLY.summary(), indent=2) + "\n")


class Checks:
    """Soft assertions for one case: all are evaluated and tallied, then the case fails with
    every failed one listed."""

    def __init__(self, case: str) -> None:
        self.case = case
        self.failed: list[str] = []

    def check(self, assertion: str, ok: bool, detail: str = "") -> None:
        if assertion == "one_line":
            TALLY.lines[self.case] = detail
        previous = TALLY.cases.get(self.case, {}).get(assertion, True)
        TALLY.record(self.case, assertion, previous and ok)
        if not ok:
            self.failed.append(f"{assertion}: {detail}")

    def done(self) -> None:
        assert not self.failed, f"{self.case}: " + " | ".join(self.failed)


# --------------------------------------------------------------------------------------------
# Running the CLI in-process, with a hook on what it prints to stderr.


class Tap(io.StringIO):
    """stderr replacement that calls `hook(text_so_far)` after every write."""

    def __init__(self, hook: Callable[[str], None] | None) -> None:
        super().__init__()
        self.hook = hook

    def write(self, s: str) -> int:
        n = super().write(s)
        if self.hook is not None:
            self.hook(self.getvalue())
        return n

    def isatty(self) -> bool:
        return False


def run_cli(*args: str, hook: Callable[[str], None] | None = None) -> tuple[int, str]:
    tap = Tap(hook)
    with contextlib.redirect_stderr(tap), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(args))
    return rc, tap.getvalue()


def error_lines(stderr: str) -> list[str]:
    """Lines of stderr as a terminal shows them (after the last carriage return)."""
    return [line.split("\r")[-1] for line in stderr.splitlines() if line.split("\r")[-1].strip()]


def one_error_line(stderr: str, command: str) -> tuple[bool, str]:
    lines = error_lines(stderr)
    ours = [line for line in lines if line.startswith(f"onnxship {command}:")]
    ok = len(ours) == 1 and lines[-1] == ours[0] and "Traceback" not in stderr
    return ok, ours[0] if len(ours) == 1 else f"{len(ours)} error lines in {stderr[-800:]!r}"


def signal_at(stage: str, signame: str) -> Callable[[str], None]:
    """A stderr hook that sends the signal to this process once the line `[run ] <stage> ...`
    is out: the stage boundary (the cached stages before it were checked, nothing of it ran)."""
    fired = False

    def hook(text: str) -> None:
        nonlocal fired
        if not fired and f"[run ] {stage} ...\n" in text:  # the whole line, then the signal
            fired = True
            signal.raise_signal(getattr(signal, signame))

    return hook


# --------------------------------------------------------------------------------------------
# Injecting faults at the OS boundary


class FailingFile:
    """A real file whose writes fail (ENOSPC) or deliver a signal after half the bytes."""

    def __init__(self, real: Any, action: Callable[[], None]) -> None:
        self._real = real
        self._action = action

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B") if not isinstance(data, str) else data
        self._real.write(view[: max(1, len(view) // 2)])
        self._real.flush()
        self._action()
        raise AssertionError("the injected action must raise")

    def __enter__(self) -> FailingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@dataclass(frozen=True)
class Fault:
    """One injected fault: `target` is the final name (`folder/file`) whose temporary file
    fails, or `scratch:` for any file written under $TMPDIR."""

    name: str
    writer: str
    target: str
    where: str  # "write" (after half the bytes), "open", "replace", "vanish"
    err: int = 0  # errno; 0 with `signame` for a signal mid-write
    signame: str | None = None

    @property
    def expected_exit(self) -> int:
        return EXIT[self.signame] if self.signame else 3


def _raise_oserror(code: int, path: str) -> Callable[[], None]:
    def action() -> None:
        raise OSError(code, os.strerror(code), path)

    return action


@contextlib.contextmanager
def inject(fault: Fault, bundle: Path, scratch: Path) -> Iterator[list[str]]:
    """Patch open/os.replace so that `fault` happens once; yields a list that receives the
    path the fault hit (empty if it never fired)."""
    hits: list[str] = []
    real_open = builtins.open
    real_replace = os.replace
    if fault.target.startswith("scratch:"):
        folder, name = scratch, None
    else:
        rel = Path(fault.target)
        folder, name = bundle / rel.parent, rel.name

    def is_target_tmp(file: Any) -> bool:
        if hits or not isinstance(file, (str, os.PathLike)):
            return False
        p = Path(os.fspath(file))
        if name is None:  # any file written under the scratch folder
            return folder in p.parents
        return p.parent == folder and re.fullmatch(rf"\.{re.escape(name)}\..+\.tmp", p.name)

    def action(path: str) -> Callable[[], None]:
        if fault.signame:
            return lambda: signal.raise_signal(getattr(signal, fault.signame))
        return _raise_oserror(fault.err, path)

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        writing = any(c in mode for c in "wax+")
        if writing and fault.where in ("open", "write") and is_target_tmp(file):
            hits.append(os.fspath(file))
            if fault.where == "open":
                action(os.fspath(file))()
            return FailingFile(real_open(file, mode, *args, **kwargs), action(os.fspath(file)))
        return real_open(file, mode, *args, **kwargs)

    def fake_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if fault.where in ("replace", "vanish") and is_target_tmp(src):
            hits.append(os.fspath(src))
            if fault.where == "vanish":
                os.unlink(src)  # a cleaner removed the temporary file: the OS says ENOENT
            else:
                action(os.fspath(dst))()
        real_replace(src, dst, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "open", fake_open)
        mp.setattr(io, "open", fake_open)
        mp.setattr(os, "replace", fake_replace)
        yield hits


# --------------------------------------------------------------------------------------------
# Bundle invariants


FOREIGN_TMP = {".ses"}


def temp_files(bundle: Path, scratch: Path) -> list[str]:
    """`.tmp` files in the bundle and anything left in $TMPDIR but what libraries keep there
    on purpose: torch's compile cache (`torchinductor_<user>`) and the session id file
    onnxruntime writes when imported (`.ses`)."""
    found = [os.fspath(p) for p in bundle.rglob("*.tmp")]
    if scratch.is_dir():
        found += [
            os.fspath(p)
            for p in scratch.iterdir()
            if p.name not in FOREIGN_TMP and not p.name.startswith("torchinductor_")
        ]
    return found


# --------------------------------------------------------------------------------------------
# The shared bundle, built through the signal chain


def _mid_write(target: str, signame: str) -> Fault:
    return Fault(f"{signame} writing {target}", "", target, "write", signame=signame)


# The chain that builds the shared bundle: at every stage boundary a SIGINT, then a SIGTERM;
# the invocation after them resumes, finishes that stage and is interrupted at the next one.
# Signals in the middle of a write: a checkpoint, the INT8 model, the manifest, a plot.
CHAIN: list[tuple[str, str, Fault | None]] = []
for _stage in STAGES:
    CHAIN += [(_stage, "SIGINT", None), (_stage, "SIGTERM", None)]
    if _stage == "prune":
        CHAIN.append((_stage, "SIGTERM", _mid_write("checkpoints/student-pruned.pt", "SIGTERM")))
    if _stage == "quantize":
        CHAIN.append((_stage, "SIGINT", _mid_write("artifacts/student-int8.onnx", "SIGINT")))
CHAIN.append(("manifest", "SIGINT", _mid_write("manifest.json", "SIGINT")))
CHAIN.append(("plots", "SIGTERM", _mid_write("plots/size.png", "SIGTERM")))
CHAIN_IDS = [f"{sig}-{stage}-{'write' if f else 'boundary'}" for stage, sig, f in CHAIN]


@dataclass
class World:
    work: Path
    config: Path
    data: Path
    bundle: Path
    chain: list[dict[str, Any]] = field(default_factory=list)
    chain_verify_rc: int | None = None


def link_data(root: Path, source: Path) -> Path:
    """A data root of symlinks to the MNIST files of `source` (cheap to create and remove)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        (raw / name).symlink_to(source / "MNIST" / "raw" / name)
    return root


@pytest.fixture(scope="module", autouse=True)
def _sigint_raises() -> Iterator[None]:
    """Python's SIGINT handler (KeyboardInterrupt) while the module runs: a process started in
    the background by a non-interactive shell inherits SIGINT ignored, and Python then installs
    no handler, so a SIGINT the matrix sends would do nothing (the CLI keeps a user's choice to
    ignore it; the matrix tests what happens when it is not ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread for torch while the module runs (restored after): the models are
    tiny, and on a shared 2-core machine a second OpenMP thread that waits for a busy core
    made the signal chain twice as slow, wall and CPU (19-25 s against 9-14 s, measured
    interleaved while another test run held one core; equal on an idle machine). The real
    process gets OMP_NUM_THREADS=1 for the same reason."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, mnist_root: Path, _one_torch_thread: None
) -> Iterator[World]:
    started = cpu_seconds()
    work = tmp_path_factory.mktemp("faults")
    config = work / "tiny.toml"
    config.write_text(TINY_CONFIG)
    data = subset_data(work / "data", mnist_root, SUBSET_TRAIN, SUBSET_TEST)
    scratch = work / "scratch"
    scratch.mkdir()
    w = World(work=work, config=config, data=data, bundle=work / "bundle")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONNXSHIP_DATA_DIR", os.fspath(data))
        mp.setenv("ONNXSHIP_NO_DOWNLOAD", "1")  # a vanished data root must not hit the network
        mp.setattr(tempfile, "tempdir", os.fspath(scratch))
        args = ("run", "--config", os.fspath(config), "--out", os.fspath(w.bundle))
        for stage, signame, mid_write in CHAIN:
            if mid_write is None:
                rc, err = run_cli(*args, hook=signal_at(stage, signame))
                hit = f"[run ] {stage} " in err
                where = "boundary"
            else:
                with inject(mid_write, w.bundle, scratch) as hits:
                    rc, err = run_cli(*args)
                hit = bool(hits)
                where = f"mid-write of {mid_write.target}"
            ok_line, line = one_error_line(err, "run")
            w.chain.append(
                {
                    "case": f"{signame} at {stage} ({where})",
                    "fired": hit,
                    "rc": rc,
                    "expected": EXIT[signame],
                    "one_line": ok_line and line.startswith(f"onnxship run: {WORD[signame]} ("),
                    "line": line,
                    "unvouched": unvouched_files(w.bundle),
                    "temp": temp_files(w.bundle, scratch),
                }
            )
        rc, err = run_cli(*args)
        assert rc == 0, err[-2000:]
        w.chain_verify_rc, _ = run_cli("verify", os.fspath(w.bundle))
        TALLY.cpu_s["world (signal chain building the shared bundle)"] = round(
            cpu_seconds() - started, 2
        )
        yield w


@pytest.fixture
def env(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Per-case environment: the module's data root and an empty $TMPDIR to check."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("ONNXSHIP_DATA_DIR", os.fspath(world.data))
    monkeypatch.setenv("ONNXSHIP_NO_DOWNLOAD", "1")
    monkeypatch.setattr(tempfile, "tempdir", os.fspath(scratch))
    return scratch


def copy_bundle(world: World, dest: Path, *, redo: tuple[str, ...] = ()) -> Path:
    """The shared bundle as a run that has not finished: no manifest/report/plots, and the
    records and outputs of the stages in `redo` removed (so a run redoes them)."""
    shutil.copytree(world.bundle, dest)
    (dest / "manifest.json").unlink()
    (dest / "report.md").unlink()
    for png in (dest / "plots").glob("*.png"):
        png.unlink()
    for stage in redo:
        record = dest / "stages" / f"{stage}.json"
        for out in json.loads(record.read_text())["outputs"]:
            p = Path(out["path"])
            (dest / p.parent.name / p.name).unlink()
        record.unlink()
    return dest


def run_args(world: World, bundle: Path) -> tuple[str, ...]:
    return ("run", "--config", os.fspath(world.config), "--out", os.fspath(bundle))


def rerun_and_verify(world: World, bundle: Path) -> tuple[bool, str]:
    rc, err = run_cli(*run_args(world, bundle))
    if rc != 0:
        return False, f"rerun exit {rc}: {err[-600:]}"
    vrc, verr = run_cli("verify", os.fspath(bundle))
    return vrc == 0, f"verify exit {vrc}: {verr[-600:]}"


# --------------------------------------------------------------------------------------------
# Signals at every stage boundary (the chain that built the shared bundle)


def test_signal_chain_resumes_to_a_bundle_verify_accepts(world: World) -> None:
    assert world.chain_verify_rc == 0
    assert len(world.chain) == len(CHAIN)


@pytest.mark.parametrize("index", range(len(CHAIN)), ids=CHAIN_IDS)
def test_signal_at_stage_boundary_exits_with_one_line_and_leaves_nothing_unvouched(
    world: World, index: int
) -> None:
    step = world.chain[index]
    checks = Checks(step["case"])
    assert step["fired"], f"{step['case']}: the signal was never sent"
    checks.check("exit_code", step["rc"] == step["expected"], f"exit {step['rc']}")
    checks.check("one_line", step["one_line"], step["line"])
    checks.check("vouched", not step["unvouched"], ", ".join(step["unvouched"]))
    checks.check("no_temp", not step["temp"], ", ".join(step["temp"]))
    # The next invocation resumed from here; the last one completed and verify accepted it.
    checks.check("rerun", world.chain_verify_rc == 0, f"verify exit {world.chain_verify_rc}")
    checks.done()


# --------------------------------------------------------------------------------------------
# Writer faults, grouped by the stage they break (one rerun per group)

GROUPS: dict[str, tuple[tuple[str, ...], tuple[Fault, ...]]] = {
    "checkpoint": (
        ("prune",),
        (
            Fault("checkpoint weights, disk full", "checkpoint", "checkpoints/student-pruned.pt", "write", errno.ENOSPC),
            Fault("checkpoint sidecar, permission denied", "checkpoint", "checkpoints/student-pruned.json", "open", errno.EACCES),
        ),
    ),
    "onnx-export": (
        ("export-student",),
        (Fault("ONNX export, disk full", "ONNX save", "artifacts/student-fp32.onnx", "write", errno.ENOSPC),),
    ),
    "int8": (
        ("quantize",),
        (
            Fault("INT8 model, disk full", "INT8", "artifacts/student-int8.onnx", "write", errno.ENOSPC),
            Fault("calibration npz, permission denied", "calibration npz", "calibration/student-int8-calib.npz", "open", errno.EACCES),
            Fault("INT8 scratch in $TMPDIR, disk full", "INT8", "scratch:", "write", errno.ENOSPC),
            Fault("INT8 temp file vanished before the rename", "INT8", "artifacts/student-int8.onnx", "vanish", errno.ENOENT),
        ),
    ),
    "fp16": (
        ("fp16",),
        (
            Fault("FP16 model, read-only filesystem", "FP16", "artifacts/student-fp16.onnx", "open", errno.EROFS),
            Fault("stage record, disk full", "stage records", "stages/fp16.json", "write", errno.ENOSPC),
        ),
    ),
    "results": (
        ("bench",),
        (Fault("bench results, disk full", "results", "results/bench.json", "write", errno.ENOSPC),),
    ),
    "docs": (
        (),
        (
            Fault("manifest, disk full", "manifest", "manifest.json", "write", errno.ENOSPC),
            Fault("report, permission denied", "report", "report.md", "open", errno.EACCES),
            Fault("plot, disk full", "plots", "plots/size.png", "write", errno.ENOSPC),
            Fault("run marker, read-only filesystem", "run marker", ".onnxship-run.json", "replace", errno.EROFS),
        ),
    ),
}  # fmt: skip

ERRNO_WORDS = {
    errno.ENOSPC: "disk full",
    errno.EACCES: "permission denied",
    errno.EROFS: "read-only filesystem",
    errno.ENOENT: "vanished",
}


@pytest.mark.parametrize("group", list(GROUPS))
def test_writer_fault_exits_3_with_one_line_and_a_rerun_verifies(
    world: World, env: Path, tmp_path: Path, group: str
) -> None:
    redo, faults = GROUPS[group]
    bundle = copy_bundle(world, tmp_path / "bundle", redo=redo)
    all_checks = []
    for fault in faults:
        checks = Checks(f"{fault.name} ({fault.target})")
        all_checks.append(checks)
        with inject(fault, bundle, env) as hits:
            rc, err = run_cli(*run_args(world, bundle))
        assert hits, f"{fault.name}: the fault never fired (rc {rc}): {err[-800:]}"
        checks.check("exit_code", rc == fault.expected_exit, f"exit {rc}: {err[-400:]}")
        ok, line = one_error_line(err, "run")
        final_name = Path(fault.target).name if fault.target != "scratch:" else ""
        names_it = final_name in line and ".tmp" not in line.replace(os.fspath(env), "")
        says_what = ERRNO_WORDS[fault.err] in line
        free = "free on the filesystem" in line if fault.err == errno.ENOSPC else True
        checks.check("one_line", ok and names_it and says_what and free, line)
        problems = unvouched_files(bundle)
        checks.check("vouched", not problems, ", ".join(problems))
        temps = temp_files(bundle, env)
        checks.check("no_temp", not temps, ", ".join(temps))
    ok, detail = rerun_and_verify(world, bundle)
    for checks in all_checks:
        checks.check("rerun", ok, detail)
    for checks in all_checks:
        checks.done()


def test_environment_fault_message_names_path_what_and_free_space() -> None:
    from onnxship.core.errors import EnvironmentFault

    exc = OSError(errno.ENOSPC, "No space left on device", "/x/.student-int8.onnx.abc.tmp")
    fault = EnvironmentFault.from_oserror(exc, path="/x/student-int8.onnx", what="ONNX model")
    text = str(fault)
    assert fault.exit_code == 3 and "\n" not in text
    assert text.startswith("disk full while writing ONNX model /x/student-int8.onnx")
    assert "ENOSPC" in text and "free on the filesystem holding /x" in text
    assert ".tmp" not in text


# --------------------------------------------------------------------------------------------
# Real processes: the exit status a scheduler sees, a signal that lands mid-compute, and a
# real kernel fault (EFBIG from `ulimit -f`) rather than an injected one.


def _popen(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "onnxship.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        **kw,
    )


class StderrWatcher(threading.Thread):
    def __init__(self, proc: subprocess.Popen[bytes], needle: str) -> None:
        super().__init__(daemon=True)
        self.proc, self.needle = proc, needle
        self.text = ""
        self.seen = threading.Event()

    def run(self) -> None:
        assert self.proc.stderr is not None
        while chunk := os.read(self.proc.stderr.fileno(), 65536):
            self.text += chunk.decode(errors="replace")
            if self.needle in self.text:
                self.seen.set()
        self.seen.set()


def test_sigterm_to_a_real_process_mid_stage_exits_143_then_resume_verifies(
    world: World, env: Path, tmp_path: Path
) -> None:
    """SIGTERM, as a scheduler sends it, to a real `onnxship run` while prune computes (not at
    a line boundary: the handler runs when torch returns); resumed in-process and verified.
    SIGINT takes the same path (a KeyboardInterrupt) and is covered in-process by the chain."""
    bundle = copy_bundle(world, tmp_path / "bundle", redo=("prune",))
    child_env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": os.fspath(env)}
    proc = _popen(list(run_args(world, bundle)), child_env)
    watcher = StderrWatcher(proc, "[run ] prune ")
    watcher.start()
    assert watcher.seen.wait(300), watcher.text[-800:]
    time.sleep(0.3)  # into the stage's compute, not just its first line
    assert proc.poll() is None, f"prune finished before the signal: {watcher.text[-800:]}"
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(120)
    watcher.join(10)
    checks = Checks("SIGTERM to a real process during prune")
    checks.check("exit_code", rc == 143, f"exit {rc}: {watcher.text[-600:]}")
    ok, line = one_error_line(watcher.text, "run")
    checks.check("one_line", ok and line.startswith("onnxship run: terminated (SIGTERM)"), line)
    problems = unvouched_files(bundle)
    checks.check("vouched", not problems, ", ".join(problems))
    temps = temp_files(bundle, env)
    checks.check("no_temp", not temps, ", ".join(temps))
    ok, detail = rerun_and_verify(world, bundle)
    checks.check("rerun", ok, detail)
    checks.done()


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """`ulimit -f` for this process, reversibly (the soft limit goes back up to the hard one),
    with SIGXFSZ ignored so that the kernel answers EFBIG instead of killing the process."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_real_file_size_limit_exits_3_with_one_line(
    world: World, env: Path, tmp_path: Path
) -> None:
    """A real kernel fault, not an injected one: under `ulimit -f` 16 KiB the write of the FP16
    teacher (about 90 KiB) fails with EFBIG inside onnx.save_model."""
    out = tmp_path / "out"
    src = world.bundle / "artifacts" / "teacher-fp32.onnx"
    checks = Checks("real EFBIG (ulimit -f) writing an FP16 model")
    with file_size_limit(16 * 1024):
        rc, err = run_cli("fp16", os.fspath(src), "--out", os.fspath(out))
    checks.check("exit_code", rc == 3, f"exit {rc}: {err[-600:]}")
    ok, line = one_error_line(err, "fp16")
    checks.check("one_line", ok and "too large" in line and "teacher-fp16.onnx" in line, line)
    leftovers = sorted(p.name for p in out.rglob("*") if p.is_file())
    checks.check("vouched", not leftovers, ", ".join(leftovers))
    temps = temp_files(out, env)
    checks.check("no_temp", not temps, ", ".join(temps))
    rc, err2 = run_cli("fp16", os.fspath(src), "--out", os.fspath(out))
    produced = out / "artifacts" / "teacher-fp16.onnx"
    checks.check("rerun", rc == 0 and produced.is_file(), err2[-600:])
    checks.done()


# Single-stage commands that write a pair of files (weights + sidecar; INT8 model + its
# calibration set): the second file fails after the first is in place (its rename), and
# neither may be left. In a run the stage cache cleans up; a single command has none.
PAIRS: dict[str, tuple[tuple[str, ...], Fault, tuple[str, ...]]] = {
    "prune": (
        ("prune", "checkpoints/teacher.pt", "--macs-budget", "0.5"),
        Fault("prune command: checkpoint sidecar, read-only filesystem at the rename", "checkpoint", "checkpoints/student-pruned.json", "replace", errno.EROFS),
        ("checkpoints/student-pruned.pt", "checkpoints/student-pruned.json"),
    ),
    "quantize": (
        ("quantize", "artifacts/student-fp32.onnx", "--recipe", "qdq-u8s8-perchannel-minmax-linear",
         "--calib-size", "64", "--bench-seconds", "0.05"),
        Fault("quantize command: calibration npz vanished before the rename", "calibration npz", "calibration/student-int8-calib.npz", "vanish", errno.ENOENT),
        ("artifacts/student-int8.onnx", "calibration/student-int8-calib.npz"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("command", list(PAIRS))
def test_single_command_pair_fault_leaves_neither_file_then_rerun_writes_both(
    world: World, env: Path, tmp_path: Path, command: str
) -> None:
    (name, source, *flags), fault, outputs = PAIRS[command]
    out = tmp_path / "out"
    args = (name, os.fspath(world.bundle / source), "--out", os.fspath(out), *flags)
    checks = Checks(f"{fault.name} ({fault.target})")
    with inject(fault, out, env) as hits:
        rc, err = run_cli(*args)
    assert hits, f"{fault.name}: the fault never fired (rc {rc}): {err[-800:]}"
    checks.check("exit_code", rc == 3, f"exit {rc}: {err[-400:]}")
    ok, line = one_error_line(err, name)
    names_it = Path(fault.target).name in line and ".tmp" not in line
    checks.check("one_line", ok and names_it and ERRNO_WORDS[fault.err] in line, line)
    leftovers = [o for o in outputs if (out / o).exists()]
    problems = unvouched_files(out) if out.exists() else []
    checks.check("vouched", not leftovers and not problems, ", ".join(leftovers + problems))
    temps = temp_files(out, env) if out.exists() else []
    checks.check("no_temp", not temps, ", ".join(temps))
    rc, err = run_cli(*args)
    both = all((out / o).is_file() for o in outputs)
    problems = unvouched_files(out)
    checks.check("rerun", rc == 0 and both and not problems, f"exit {rc}: {problems} {err[-400:]}")
    checks.done()


# --------------------------------------------------------------------------------------------
# The data root disappears; a checkpoint is corrupted between stages


def test_data_root_removed_after_train_is_one_line_then_resume_verifies(
    world: World, env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = link_data(tmp_path / "data", world.data)
    monkeypatch.setenv("ONNXSHIP_DATA_DIR", os.fspath(data))
    bundle = copy_bundle(world, tmp_path / "bundle", redo=("prune",))
    checks = Checks("data root removed after train")
    removed = []

    def hook(text: str) -> None:
        if not removed and "[run ] prune " in text:  # train (and export) finished earlier
            shutil.rmtree(data)
            removed.append(True)

    rc, err = run_cli(*run_args(world, bundle), hook=hook)
    assert removed, err[-800:]
    checks.check("exit_code", rc == 2, f"exit {rc}: {err[-400:]}")
    ok, line = one_error_line(err, "run")
    checks.check("one_line", ok and os.fspath(data) in line and MNIST_FILES[0] in line, line)
    problems = unvouched_files(bundle)
    checks.check("vouched", not problems, ", ".join(problems))
    temps = temp_files(bundle, env)
    checks.check("no_temp", not temps, ", ".join(temps))
    link_data(data, world.data)  # restored
    ok, detail = rerun_and_verify(world, bundle)
    checks.check("rerun", ok, detail)
    checks.done()


def test_corrupted_checkpoint_between_stages_is_redone_and_refused_alone(
    world: World, env: Path, tmp_path: Path
) -> None:
    """In a run, the stage whose output no longer matches its record is redone (the bytes are
    deterministic, so nothing after it reruns); a single command refuses the file in one line."""
    bundle = copy_bundle(world, tmp_path / "bundle")
    ckpt = bundle / "checkpoints" / "student-pruned.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))

    checks = Checks("checkpoint corrupted between prune and distill (run)")
    rc, err = run_cli(*run_args(world, bundle))
    checks.check("exit_code", rc == 0, f"exit {rc}: {err[-400:]}")
    lines = error_lines(err)
    redone = "[run ] prune ..." in lines and not any(
        line.startswith("[run ] distill") for line in lines
    )
    checks.check("one_line", redone and "Traceback" not in err, " / ".join(lines[:12]))
    problems = unvouched_files(bundle)
    checks.check("vouched", not problems, ", ".join(problems))
    temps = temp_files(bundle, env)
    checks.check("no_temp", not temps, ", ".join(temps))
    vrc, verr = run_cli("verify", os.fspath(bundle))
    checks.check("rerun", vrc == 0, verr[-400:])
    checks.done()

    alone = Checks("checkpoint truncated, single command (export)")
    truncated = tmp_path / "truncated.pt"
    shutil.copy(bundle / "checkpoints" / "student.pt", truncated)
    shutil.copy(bundle / "checkpoints" / "student.json", truncated.with_suffix(".json"))
    truncated.write_bytes(truncated.read_bytes()[:1000])
    out = tmp_path / "export"
    export = ("export", os.fspath(truncated), "--out", os.fspath(out), "--exporter", "torchscript")
    rc, err = run_cli(*export)
    alone.check("exit_code", rc == 2, f"exit {rc}: {err[-400:]}")
    ok, line = one_error_line(err, "export")
    alone.check("one_line", ok and "truncated.pt" in line, line)
    leftovers = sorted(p.name for p in out.rglob("*") if p.is_file()) if out.exists() else []
    alone.check("vouched", not leftovers, ", ".join(leftovers))
    alone.check("no_temp", not temp_files(out, env) if out.exists() else True, "")
    shutil.copy(bundle / "checkpoints" / "student.pt", truncated)
    rc, err = run_cli(*export)
    alone.check("rerun", rc == 0, err[-400:])
    alone.done()


# --------------------------------------------------------------------------------------------
# The pieces, alone (no bundle needed)


def test_atomic_output_turns_an_oserror_into_one_environment_fault_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxship.core.artifact import atomic_write_bytes
    from onnxship.core.errors import EnvironmentFault

    def refuse(src: Any, dst: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(dst))

    monkeypatch.setattr(os, "replace", refuse)
    target = tmp_path / "model.onnx"
    with pytest.raises(EnvironmentFault) as info:
        atomic_write_bytes(target, b"x" * 100)
    assert info.value.exit_code == 3 and info.value.path == target
    assert str(info.value).startswith(f"read-only filesystem while writing ONNX model {target}")
    assert list(tmp_path.iterdir()) == []


def test_atomic_companion_leaves_neither_file_when_either_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxship.core.artifact import atomic_companion, atomic_write_bytes
    from onnxship.core.errors import EnvironmentFault

    weights, sidecar = tmp_path / "model.pt", tmp_path / "model.json"
    with (  # the first file's write fails
        pytest.raises(EnvironmentFault, match="model.pt"),
        atomic_companion(sidecar, b"{}", primary=weights),
        atomic_output(weights) as tmp,
    ):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(tmp))
    assert list(tmp_path.iterdir()) == []

    real_replace = os.replace

    def refuse_sidecar(src: Any, dst: Any) -> None:
        if Path(dst) == sidecar:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse_sidecar)
    with (  # the second file's rename fails, after the first one's
        pytest.raises(EnvironmentFault, match="read-only filesystem while writing .*model.json"),
        atomic_companion(sidecar, b"{}", primary=weights),
    ):
        atomic_write_bytes(weights, b"w" * 100)
    assert list(tmp_path.iterdir()) == []  # the weights were in place; removed again

    monkeypatch.setattr(os, "replace", real_replace)
    with atomic_companion(sidecar, b"{}", primary=weights):
        atomic_write_bytes(weights, b"w" * 100)
    assert weights.read_bytes() == b"w" * 100 and sidecar.read_bytes() == b"{}"


def test_atomic_output_keeps_a_missing_folder_a_usage_error(tmp_path: Path) -> None:
    from onnxship.core.artifact import atomic_write_text
    from onnxship.core.errors import EnvironmentFault, OnnxshipError

    with pytest.raises(OnnxshipError, match="does not exist") as info:
        atomic_write_text(tmp_path / "missing" / "x.json", "{}")
    assert info.value.exit_code == 2 and not isinstance(info.value, EnvironmentFault)


def test_cli_turns_an_escaping_oserror_into_one_line_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxship.verify

    gone = tmp_path / "artifacts" / "student-int8.onnx"

    def vanished(*args: Any, **kwargs: Any) -> None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(gone))

    monkeypatch.setattr(onnxship.verify, "verify_bundle", vanished)
    assert main(["verify", os.fspath(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        f"onnxship verify: error: file or folder vanished mid-run while reading {gone}"
    )


def test_cli_sigterm_handler_is_installed_only_while_a_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxship.verify

    seen = []

    def terminated(*args: Any, **kwargs: Any) -> None:
        seen.append(signal.getsignal(signal.SIGTERM))
        signal.raise_signal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(onnxship.verify, "verify_bundle", terminated)
    assert main(["verify", os.fspath(tmp_path)]) == 143
    err = capsys.readouterr().err
    assert err.startswith("onnxship verify: terminated (SIGTERM); ") and err.count("\n") == 1
    assert seen and seen[0] is not before
    assert signal.getsignal(signal.SIGTERM) is before


# --------------------------------------------------------------------------------------------
# The single-stage API on the shared bundle


def _inputs(record: dict) -> list[tuple[str, str]]:
    return [(Path(i["path"]).name, i["sha256"]) for i in record["inputs"]]


def test_api_stages_write_the_records_the_pipeline_wrote(
    world: World, env: Path, tmp_path: Path
) -> None:
    """The single-stage functions (what `onnxship train|prune|distill|quantize` call) given the
    shared bundle's files, data and config record the same config and inputs as its run."""
    from onnxship import api
    from onnxship.pipeline import load_config

    bundle, mnist_root = world.bundle, world.data
    cfg = load_config(world.config)
    ckpt = bundle / "checkpoints"
    made = {
        "train": lambda out: api.train(out, cfg.train, data_dir=mnist_root),
        "prune": lambda out: api.prune(ckpt / "teacher.pt", out, cfg.prune, data_dir=mnist_root),
        "distill": lambda out: api.distill(
            ckpt / "student-pruned.pt", ckpt / "teacher.pt", out, cfg.distill, data_dir=mnist_root
        ),
        "quantize": lambda out: api.quantize(  # the run's MNIST validation npz, as the run
            bundle / "artifacts" / "student-fp32.onnx",
            out,
            cfg.quantize,
            val_npz=bundle / "data" / "val.npz",
            calib_from_val=True,
        ),  # fmt: skip
    }
    for stage, make in made.items():
        out = tmp_path / stage
        make(out)
        alone = json.loads((out / "stages" / f"{stage}.json").read_text())
        piped = json.loads((bundle / "stages" / f"{stage}.json").read_text())
        assert alone["config"] == piped["config"], stage
        assert _inputs(alone) == _inputs(piped), stage
        assert alone["stage"] == piped["stage"] and set(piped) - set(alone) == {
            "cache_key", "onnxship_version"
        }  # fmt: skip
