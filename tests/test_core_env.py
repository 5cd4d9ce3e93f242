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
