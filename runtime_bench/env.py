"""What machine a number was measured on: CPU model and ISA flags (stdlib only).

`capture_environment()` (built by the bench issue) extends this with OS, Python, onnxruntime and
GPU facts; the CPU facts are here so the PyTorch side can ask them too (AMP refusal).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# Flags that change which kernels ONNX Runtime and PyTorch pick on x86.
INTERESTING_FLAGS = (
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
    "amx_bf16", "amx_int8", "amx_tile",
)  # fmt: skip
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    path = Path("/proc/cpuinfo")
    info: dict[str, str] = {}
    if not path.is_file():
        return info
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            break  # the first processor block is enough
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def cpu_model_name() -> str:
    info = _cpuinfo()
    return info.get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def isa_summary() -> list[str]:
    """The performance-relevant ISA extensions this CPU has, e.g. ['avx', 'avx2', 'fma']."""
    flags = cpu_flags()
    return [f for f in INTERESTING_FLAGS if f in flags]


def has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); without it, bf16
    autocast is emulated and was measured 37x slower than fp32 training on this fleet."""
    return any(f in cpu_flags() for f in NATIVE_BF16_FLAGS)
