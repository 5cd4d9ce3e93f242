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
