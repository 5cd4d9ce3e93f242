"""runtime_bench.env.capture_environment: the facts every result carries."""

from __future__ import annotations

import onnxruntime as ort

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
