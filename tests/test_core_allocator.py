"""onnxship.core.allocator: freed tensors are reused instead of being faulted in again.

Each case runs in a fresh interpreter, since the setting is per process and the test process
has it already (conftest)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

# Two 22 MB arrays made and freed in turn, as a forward pass makes a conv output and its ReLU:
# minor page faults over 10 rounds after a warm-up round.
CHURN = """
import json, resource
import numpy as np
from onnxship.core.allocator import keep_freed_memory
state = keep_freed_memory()
n = (22 << 20) // 8
def churn():
    a = np.ones(n); b = a + 1.0; del a; del b
churn()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    churn()
print(json.dumps({"state": state, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}))
"""
PAGES_PER_ROUND = 2 * (22 << 20) // 4096  # 11,264 pages of 4 KiB are touched each round

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def _churn(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES",
                          "ONNXSHIP_KEEP_FREED_MEMORY")}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", CHURN], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return json.loads(done.stdout)


@glibc
def test_freed_arrays_are_reused_without_page_faults_and_the_opt_out_faults_again() -> None:
    kept = _churn()
    assert kept["state"]["applied"] is True, kept
    # 0 measured; a tenth of one round's pages is the tolerance for the interpreter's own
    assert kept["faults"] < PAGES_PER_ROUND // 10, kept
    default = _churn(ONNXSHIP_KEEP_FREED_MEMORY="0")
    assert default["state"] == {"applied": False, "reason": "ONNXSHIP_KEEP_FREED_MEMORY=0"}
    # glibc's default trims the freed top of the heap: ~10,000 faults measured over 10 rounds
    assert default["faults"] > PAGES_PER_ROUND // 2, default


@glibc
def test_a_users_own_glibc_setting_is_left_alone() -> None:
    out = _churn(MALLOC_TRIM_THRESHOLD_="1000000000")
    assert out["state"] == {"applied": False, "reason": "the user set MALLOC_TRIM_THRESHOLD_"}


def test_the_environment_record_says_what_the_allocator_does() -> None:
    from onnxship.core.env import capture_environment

    # conftest applied it in this process, as main() does
    assert capture_environment()["allocator"]["applied"] is (
        platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    )
