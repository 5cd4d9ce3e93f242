"""runtime_bench.env.capture_environment: the facts every result carries."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from onnxship.core.env import capture_environment, isa_summary, usable_cores


def test_capture_environment_cpu_keys():
    env = capture_environment(("CPUExecutionProvider",))
    for key in ("cpu", "isa", "os", "python", "onnxruntime", "available_providers",
                "usable_cores", "logical_cores", "onnxruntime_build"):  # fmt: skip
        assert key in env, key
    assert env["onnxruntime"] == ort.__version__
    assert env["available_providers"] == list(ort.get_available_providers())
    assert env["isa"] == isa_summary() and env["usable_cores"] == usable_cores() >= 1
    assert env["providers_used"] == ["CPUExecutionProvider"]
    assert "gpu" not in env  # nvidia-smi is asked only when a GPU EP was used


def test_capture_environment_gpu_facts_tolerate_missing_nvidia_smi(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    env = capture_environment(("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert env["gpu"] == {"error": "nvidia-smi not found on PATH"}


def _cgroup(tmp_path, files: dict[str, str], own: str = "0::/\n"):
    root = tmp_path / "cg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(own)
    return root, proc


def test_cgroup_cpu_quota_reads_v2_and_v1(tmp_path):
    from onnxship.core.env import cgroup_cpu_quota

    root, proc = _cgroup(tmp_path / "a", {"cpu.max": "150000 100000\n"})
    assert cgroup_cpu_quota(root, proc) == 1.5
    root, proc = _cgroup(tmp_path / "b", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root, proc) is None
    # the process's own v2 group wins over the root
    root, proc = _cgroup(tmp_path / "c", {"cpu.max": "max 100000\n",
                                          "job/cpu.max": "200000 100000\n"}, own="0::/job\n")  # fmt: skip
    assert cgroup_cpu_quota(root, proc) == 2.0
    v1 = {"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    root, proc = _cgroup(tmp_path / "d", v1, own="1:cpu:/\n")
    assert cgroup_cpu_quota(root, proc) == 3.0
    v1["cpu/cpu.cfs_quota_us"] = "-1\n"
    root, proc = _cgroup(tmp_path / "e", v1, own="1:cpu:/\n")
    assert cgroup_cpu_quota(root, proc) is None
    assert cgroup_cpu_quota(tmp_path / "nothing", tmp_path / "none") is None


def test_usable_cores_is_capped_by_the_cgroup_quota(monkeypatch):
    from onnxship.core import env

    monkeypatch.setattr(env, "affinity_cores", lambda: 8)
    monkeypatch.setattr(env, "cgroup_cpu_quota", lambda: 1.5)
    assert env.usable_cores() == 2  # rounded up, as the JVM and .NET do
    monkeypatch.setattr(env, "cgroup_cpu_quota", lambda: 0.2)
    assert env.usable_cores() == 1
    monkeypatch.setattr(env, "cgroup_cpu_quota", lambda: None)
    assert env.usable_cores() == 8


def test_machine_fingerprint_records_machine_and_session_and_hashes_them():
    from onnxship.core.env import (
        FINGERPRINT_MACHINE_KEYS,
        FINGERPRINT_SESSION_KEYS,
        fingerprint_diff,
        integer_class,
        machine_fingerprint,
    )

    a = machine_fingerprint("CPUExecutionProvider", intra_op_threads=1, allow_spinning=True)
    for key in FINGERPRINT_MACHINE_KEYS + FINGERPRINT_SESSION_KEYS + ("id",):
        assert key in a, key
    assert a["integer_class"] == integer_class() and a["onnxruntime"] == ort.__version__
    assert a["usable_cores"] == usable_cores() and len(a["id"]) == 12
    same = machine_fingerprint("CPUExecutionProvider", intra_op_threads=1, allow_spinning=True)
    assert same["id"] == a["id"] and fingerprint_diff(a, same) == {}
    b = machine_fingerprint("CPUExecutionProvider", intra_op_threads=2, allow_spinning=True)
    assert b["id"] != a["id"] and fingerprint_diff(a, b) == {"intra_op_threads": [1, 2]}
    env = capture_environment(("CPUExecutionProvider",))
    assert env["fingerprint"]["provider"] == "CPUExecutionProvider"
    assert env["fingerprint"]["cpu"] == env["cpu"]


@pytest.mark.parametrize(
    ("machine", "flags", "expected"),
    [
        ("x86_64", "sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8", "amx"),
        ("x86_64", "avx2 avx512f avx512bw avx512_vnni", "avx512_vnni"),
        ("x86_64", "avx2 avx_vnni", "avx_vnni"),
        ("x86_64", "avx2 avx512f avx512bw", "avx512"),
        ("x86_64", "fma avx f16c avx2", "avx2"),  # the AMD EPYC these tests were written on
        ("x86_64", "sse4_1 sse4_2", "sse"),
        ("aarch64", "fp asimd asimddp i8mm", "arm64_i8mm"),
        ("aarch64", "fp asimd asimddp", "arm64_dotprod"),
        ("aarch64", "fp asimd", "arm64"),
        ("riscv64", "", "unknown"),
    ],
)
def test_integer_class_from_flags(machine: str, flags: str, expected: str) -> None:
    from onnxship.core.env import INTEGER_CLASSES, integer_class_from_flags

    assert integer_class_from_flags(machine, frozenset(flags.split())) == expected
    assert expected in INTEGER_CLASSES


def test_integer_class_is_detected_and_an_override_is_recorded_as_forced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from onnxship.core import env
    from onnxship.core.errors import CoreError

    monkeypatch.delenv(env.INTEGER_CLASS_ENV, raising=False)
    detected = env.detected_integer_class()
    assert env.integer_class() == detected and detected in env.INTEGER_CLASSES
    assert env.integer_class_record() == {"integer_class": detected}
    assert env.capture_environment()["integer_class"] == detected
    other = "avx512_vnni" if detected != "avx512_vnni" else "avx2"
    monkeypatch.setenv(env.INTEGER_CLASS_ENV, other)
    assert env.integer_class() == other
    record = env.capture_environment()
    assert record["integer_class"] == other
    assert record["integer_class_forced"] == {"by": env.INTEGER_CLASS_ENV, "detected": detected}
    monkeypatch.setenv(env.INTEGER_CLASS_ENV, "avx1024")
    with pytest.raises(CoreError, match=r"'avx1024' is not an integer class; known classes: amx"):
        env.integer_class()
