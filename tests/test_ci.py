"""CI walks the newcomer's path: `.ci/run` runs the README's two commands exactly as typed,
with nothing exported, and the Makefile hands tools an absolute MNIST path."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOGGER = """#!/usr/bin/env bash
echo "$(basename "$0") $* | ONNXSHIP_DATA_DIR=${ONNXSHIP_DATA_DIR-unset}" >> "$CI_LOG"
if [ "$(basename "$0") $1" = "${CI_FAIL_ON-}" ]; then exit 5; fi
"""


def _readme_two_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Two commands\n\n```sh\n(.*?)```", text, flags=re.S)
    assert block, "README lost its 'Two commands' block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def _run_ci(
    tmp_path: Path, fail_on: str = ""
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a copy of .ci/run with `make` and `.venv/bin/onnxship` replaced by loggers."""
    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", clone / ".ci" / "run")
    bin_dir, venv_bin = tmp_path / "bin", clone / ".venv" / "bin"
    for folder, name in ((bin_dir, "make"), (venv_bin, "onnxship")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(LOGGER)
        (folder / name).chmod(0o755)
    log = tmp_path / "ci.log"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CI_LOG=str(log),
               CI_FAIL_ON=fail_on, ONNXSHIP_DATA_DIR="/set/by/the/ci/machine")  # fmt: skip
    proc = subprocess.run(["bash", str(clone / ".ci" / "run")], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    return proc, log.read_text().splitlines() if log.exists() else []


def test_ci_runs_the_readme_commands_as_typed_with_nothing_exported(tmp_path: Path) -> None:
    proc, calls = _run_ci(tmp_path)
    assert proc.returncode == 0, proc.stderr
    commands = [c.split(" | ")[0] for c in calls]
    assert commands[:3] == ["make test", "make run", "make lint"]
    assert set(_readme_two_commands()) == {"make test", "make run"}
    assert commands[3] == "onnxship verify runs/mnist_simplecnn --data-dir ../shared/data"
    assert commands[4].startswith("onnxship gate --manifest runs/mnist_simplecnn/manifest.json")
    assert all(c.endswith("ONNXSHIP_DATA_DIR=unset") for c in calls), calls


def test_ci_stops_with_the_exit_status_of_a_failing_step(tmp_path: Path) -> None:
    proc, calls = _run_ci(tmp_path, fail_on="make test")
    assert proc.returncode == 5
    assert [c.split(" | ")[0] for c in calls] == ["make test"]
    assert "ci: make test FAILED (exit 5)" in proc.stderr


def _make_data_dir(*args: str, env_value: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("ONNXSHIP_DATA_DIR", "MAKEFLAGS")}
    if env_value is not None:
        env["ONNXSHIP_DATA_DIR"] = env_value
    show = 'show:\n\t@echo "$$ONNXSHIP_DATA_DIR"\n'
    proc = subprocess.run(["make", "-s", "-f", "Makefile", "-f", "-", "show", *args], cwd=REPO,
                          input=show, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    return proc.stdout.strip()


def test_makefile_exports_an_absolute_data_dir() -> None:
    assert _make_data_dir() == os.path.abspath(REPO.parent / "shared" / "data")
    assert _make_data_dir(env_value="/abs/data") == "/abs/data"
    assert _make_data_dir("ONNXSHIP_DATA_DIR=rel/data") == str(REPO / "rel" / "data")
