"""Two `onnxship run --out B` at once: the second refuses (exit 2), nothing interleaves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnxship.cli import main
from onnxship.pipeline import RUN_LOCK, bundle_lock


def test_run_refuses_a_bundle_locked_by_another_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    with bundle_lock(out):  # another open file description: flock conflicts in-process too
        assert main(["run", "--out", str(out), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{out} is in use by another onnxship run (pid {os.getpid()}" in err
    assert "another --out" in err
    # Nothing of the refused run was written.
    assert sorted(p.name for p in out.iterdir()) == [RUN_LOCK]


def test_bundle_lock_is_released_when_the_run_ends(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with bundle_lock(out):
        pass
    with bundle_lock(out):  # would raise if the first lock were still held
        pass


@pytest.mark.slow
def test_two_concurrent_runs_on_one_bundle_the_second_exits_2(
    tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real `onnxship run` process holds the bundle; a second run (in this process: the
    refusal is the same code, without a second torch import) exits 2."""
    out = tmp_path / "bundle"
    args = ["run", "--out", str(out), "--data-dir", str(mnist_root)]
    cmd = [sys.executable, "-m", "onnxship.cli", *args]
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = out / RUN_LOCK
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if lock.is_file() and lock.read_text().startswith(f"pid {first.pid} "):
                break
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[1]
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines() == [
            f"onnxship run: error: {out} is in use by another onnxship run "
            f"({lock.read_text().strip()}); wait for it to finish, or pass another --out"
        ]
        assert first.poll() is None  # the first run was not disturbed
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
        first.wait()
    # The kernel released the killed run's lock: a third run could take the bundle.
    with bundle_lock(out):
        pass
