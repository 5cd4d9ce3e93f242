"""What machine a number was measured on: CPU model and ISA flags (stdlib only).

`capture_environment()` extends this with OS, Python, onnxruntime and GPU facts (nvidia-smi, only
when a GPU EP was used); the CPU facts are here so the PyTorch side can ask them too (AMP refusal).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from onnxship.core.allocator import allocator_state

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


CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cores() -> int:
    """CPU cores this process may be scheduled on (affinity / cgroup cpuset), else cpu_count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _own_cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """Controller -> this process's cgroup path, from /proc/self/cgroup ('' = the v2 tree)."""
    paths: dict[str, str] = {}
    try:
        text = proc_cgroup.read_text()
    except OSError:
        return paths
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(","):
            paths[controller] = parts[2].strip()
    return paths


def _read_quota_v2(path: Path) -> float | None:
    fields = path.read_text().split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    quota, period = int(fields[0]), int(fields[1])
    return quota / period if quota > 0 and period > 0 else None


def _read_quota_v1(folder: Path) -> float | None:
    quota = int((folder / "cpu.cfs_quota_us").read_text().strip())
    period = int((folder / "cpu.cfs_period_us").read_text().strip())
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_quota(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The cgroup CPU quota in cores (e.g. 1.5), or None when unlimited or unreadable.

    cgroup v2: `cpu.max` ("QUOTA PERIOD" or "max PERIOD"); v1: `cpu.cfs_quota_us` /
    `cpu.cfs_period_us` (-1 = unlimited). The process's own cgroup (from /proc/self/cgroup) is
    read first, then the mount's root (what a container sees). A container limited to 2 CPUs on
    a 64-core host still shows 64 cores to ONNX Runtime's default thread count (ORT#29510)."""
    own = _own_cgroup_paths(proc_cgroup)
    candidates: list[tuple[str, Path]] = []
    for rel in dict.fromkeys((own.get("", ""), "")):
        candidates.append(("v2", root / rel.lstrip("/") / "cpu.max"))
    for rel in dict.fromkeys((own.get("cpu", ""), "")):
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            candidates.append(("v1", root / mount / rel.lstrip("/")))
    for kind, path in candidates:
        try:
            if kind == "v2" and path.is_file():
                return _read_quota_v2(path)
            if kind == "v1" and (path / "cpu.cfs_quota_us").is_file():
                return _read_quota_v1(path)
        except (OSError, ValueError):
            continue
    return None


def usable_cores() -> int:
    """CPU cores this process can use: its affinity, capped by the cgroup CPU quota (rounded
    up, as the JVM and .NET do: a 1.5-core quota allows 2 threads some of the time)."""
    cores = affinity_cores()
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-9)))
    return cores


def physical_cores() -> int | None:
    """Physical cores per /proc/cpuinfo ('cpu cores' x distinct 'physical id'); None if unknown."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return None
    sockets: set[str] = set()
    per_socket = None
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            sockets.add(value.strip())
        elif key == "cpu cores" and per_socket is None:
            try:
                per_socket = int(value.strip())
            except ValueError:
                return None
    if per_socket is None:
        return None
    return per_socket * max(1, len(sockets))


# The machine part of a fingerprint: what a latency depends on besides the model and inputs.
FINGERPRINT_MACHINE_KEYS = (
    "cpu", "arch", "isa", "integer_class", "affinity_cores", "cgroup_cpu_quota", "usable_cores",
    "onnxruntime",
)  # fmt: skip
# The session part: how the number was measured on that machine.
FINGERPRINT_SESSION_KEYS = ("provider", "intra_op_threads", "allow_spinning")


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return str(ort.__version__)


def machine_fingerprint(
    provider: str | None = None,
    *,
    intra_op_threads: int | None = None,
    allow_spinning: bool | None = None,
) -> dict[str, object]:
    """The one machine fingerprint attached to every timing result.

    Machine: CPU model, architecture, ISA flags, integer (INT8) class, affinity cores, cgroup
    CPU quota (cores, None = unlimited), usable cores, onnxruntime version. Session: EP,
    intra-op threads, spinning (None where the caller has no session). `id` is a short hash of
    all of it: two results with different ids were not measured under the same conditions."""
    fp: dict[str, object] = {
        "cpu": cpu_model_name(),
        "arch": platform.machine(),
        "isa": isa_summary(),
        **integer_class_record(),  # integer_class (+ integer_class_forced when simulated)
        "affinity_cores": affinity_cores(),
        "cgroup_cpu_quota": cgroup_cpu_quota(),
        "usable_cores": usable_cores(),
        "onnxruntime": _onnxruntime_version(),
        "provider": provider,
        "intra_op_threads": intra_op_threads,
        "allow_spinning": allow_spinning,
    }
    fp["id"] = fingerprint_id(fp)
    return fp


def fingerprint_id(fp: dict[str, object]) -> str:
    body = {k: fp.get(k) for k in FINGERPRINT_MACHINE_KEYS + FINGERPRINT_SESSION_KEYS}
    text = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def fingerprint_diff(a: dict[str, object], b: dict[str, object]) -> dict[str, list[object]]:
    """Keys (machine and session) whose values differ between two fingerprints."""
    keys = FINGERPRINT_MACHINE_KEYS + FINGERPRINT_SESSION_KEYS
    return {k: [a.get(k), b.get(k)] for k in keys if a.get(k) != b.get(k)}


def gpu_info(timeout_s: float = 10.0) -> list[dict[str, str]] | dict[str, str]:
    """GPU name, driver and memory from nvidia-smi; {'error': why} when it cannot be asked."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"error": "nvidia-smi not found on PATH"}
    query = "name,driver_version,memory.total,compute_cap"
    try:
        done = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"nvidia-smi failed: {exc}"}
    if done.returncode != 0:
        first = (done.stderr or done.stdout).strip().splitlines()
        return {"error": f"nvidia-smi exited {done.returncode}: {first[0] if first else ''}"}
    keys = query.split(",")
    gpus = []
    for line in done.stdout.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        gpus.append(dict(zip(keys, values, strict=False)))
    return gpus


def capture_environment(providers_used: tuple[str, ...] | list[str] = ()) -> dict[str, object]:
    """The machine and runtime a number was measured on, for every result file.

    Keys shared with the manifest's `environment`: python, onnxruntime, cpu, isa,
    integer_class (+ integer_class_forced when ONNXSHIP_INTEGER_CLASS set it), available_providers. GPU facts (nvidia-smi) are asked only when a CUDA/TensorRT EP was used.
    """
    env: dict[str, object] = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "cpu": cpu_model_name(),
        "isa": isa_summary(),
        **integer_class_record(),
        "has_native_bf16": has_native_bf16(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "physical_cores": physical_cores(),
        "allocator": allocator_state(),
    }
    np_mod = sys.modules.get("numpy")
    if np_mod is None:
        try:
            import numpy as np_mod
        except ImportError:  # pragma: no cover - numpy is a dependency
            np_mod = None
    env["numpy"] = getattr(np_mod, "__version__", None)
    try:
        import onnxruntime as ort
    except ImportError:
        env["onnxruntime"] = None
        env["available_providers"] = []
    else:
        env["onnxruntime"] = ort.__version__
        env["onnxruntime_device"] = ort.get_device()
        env["available_providers"] = list(ort.get_available_providers())
        build = getattr(ort, "get_build_info", None)
        env["onnxruntime_build"] = build() if callable(build) else None
        cuda_version = getattr(ort, "cuda_version", None)
        if cuda_version:
            env["onnxruntime_cuda_version"] = cuda_version
    used = list(dict.fromkeys(providers_used))
    env["providers_used"] = used
    env["fingerprint"] = machine_fingerprint(used[0] if used else None)
    if any(p.startswith(("CUDA", "Tensorrt", "NvTensorRT")) for p in used):
        env["gpu"] = gpu_info()
    return env


# --------------------------------------------------------------------------------------------
# The CPU's integer class: which int8 dot-product kernels ONNX Runtime (MLAS) runs here.
# It decides whether U8S8 arithmetic can saturate (x86 without VNNI multiplies u8 x s8 pairs
# with VPMADDUBSW, whose int16 sums saturate) and how fast integer kernels are.

INTEGER_CLASS_ENV = "ONNXSHIP_INTEGER_CLASS"
INTEGER_CLASSES: dict[str, str] = {
    "amx": "x86 with AMX-INT8 tile multiply (int32 accumulation, exact)",
    "avx512_vnni": "x86 with AVX-512 VNNI (VPDPBUSD, int32 accumulation, exact)",
    "avx_vnni": "x86 with AVX-VNNI (VEX VPDPBUSD, int32 accumulation, exact)",
    "avx512": "x86 with AVX-512BW, no VNNI (VPMADDUBSW: u8 x s8 pair sums saturate at int16)",
    "avx2": "x86 with AVX2, no VNNI (VPMADDUBSW: u8 x s8 pair sums saturate at int16)",
    "sse": "x86 without AVX2 (SSE4.1 / SSSE3 integer kernels)",
    "arm64_i8mm": "arm64 with I8MM (SMMLA/UMMLA, int32 accumulation, exact)",
    "arm64_dotprod": "arm64 with DotProd (SDOT/UDOT, int32 accumulation, exact)",
    "arm64": "arm64 without DotProd (widening multiply-accumulate, exact)",
    "unknown": "an architecture onnxship does not classify",
}
X86_INTEGER_CLASSES = ("amx", "avx512_vnni", "avx_vnni", "avx512", "avx2", "sse")


def _sysctl_flag(name: str) -> bool:
    exe = shutil.which("sysctl")
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == "1"


def integer_class_from_flags(machine: str, flags: frozenset[str]) -> str:
    """The integer class for an architecture name and its CPU flags (/proc/cpuinfo spelling:
    x86 `flags`, arm64 `Features`)."""
    arch = machine.lower()
    if arch in ("x86_64", "amd64", "i386", "i686", "x86"):
        if "amx_int8" in flags:
            return "amx"
        if "avx512_vnni" in flags or "avx512vnni" in flags:
            return "avx512_vnni"
        if "avx_vnni" in flags:
            return "avx_vnni"
        if "avx512bw" in flags:
            return "avx512"
        return "avx2" if "avx2" in flags else "sse"
    if arch in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return "arm64_i8mm"
        return "arm64_dotprod" if "asimddp" in flags or "dotprod" in flags else "arm64"
    return "unknown"


@functools.cache
def detected_integer_class() -> str:
    """This CPU's integer class, detected (never the override): /proc/cpuinfo, else macOS
    sysctl (hw.optional.arm.FEAT_I8MM / FEAT_DotProd)."""
    machine = platform.machine()
    flags = set(cpu_flags())
    if not flags and sys.platform == "darwin" and machine.lower() == "arm64":
        if _sysctl_flag("hw.optional.arm.FEAT_I8MM"):
            flags.add("i8mm")
        if _sysctl_flag("hw.optional.arm.FEAT_DotProd"):
            flags.add("asimddp")
    return integer_class_from_flags(machine, frozenset(flags))


def forced_integer_class() -> str | None:
    """The class forced by ONNXSHIP_INTEGER_CLASS (a simulation knob, always recorded), or None.
    An unknown name raises CoreError listing the known ones."""
    value = os.environ.get(INTEGER_CLASS_ENV, "").strip().lower()
    if not value:
        return None
    if value not in INTEGER_CLASSES:
        from onnxship.core.errors import CoreError

        raise CoreError(
            f"{INTEGER_CLASS_ENV}={value!r} is not an integer class; known classes: "
            f"{', '.join(INTEGER_CLASSES)} (unset it to detect the CPU's class)"
        )
    return value


def integer_class() -> str:
    """The integer class results are recorded under: the detected one, or the one forced by
    ONNXSHIP_INTEGER_CLASS (then `integer_class_record()` says so)."""
    return forced_integer_class() or detected_integer_class()


def integer_class_record() -> dict[str, object]:
    """`integer_class` plus how it was obtained, for every record with an accuracy or latency."""
    forced = forced_integer_class()
    detected = detected_integer_class()
    out: dict[str, object] = {"integer_class": forced or detected}
    if forced is not None:
        out["integer_class_forced"] = {"by": INTEGER_CLASS_ENV, "detected": detected}
    return out
