"""The one table of ONNX Runtime execution providers onnxship knows by name: their full names,
the aliases users type (`--provider cpu|cuda`), the short labels reports print, and the probe
that tells whether a session really runs on an EP here. Torch-free and onnx-free.

Any EP name ORT knows is accepted as given; the table only names the ones onnxship treats
specially (the CPU EP everywhere, CUDA benchmarked when a probe session runs on it).
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

from onnxship.runtime_bench.errors import BenchError

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
# alias (case-insensitive) -> EP name
PROVIDER_ALIASES = {"cpu": CPU_EP, "cuda": CUDA_EP}
CUDA_FIX = (
    "install the GPU build: `pip uninstall onnxruntime && pip install onnxruntime-gpu` "
    "(the two packages cannot coexist in one environment), on a machine with an NVIDIA GPU, "
    "driver and the CUDA/cuDNN libraries that onnxruntime-gpu expects"
)
# What the pipeline benchmarks when no EP is requested: the CPU EP always, these when usable.
PROBED_PROVIDERS = (CUDA_EP,)


def resolve_provider(spec: str) -> str:
    """'cpu' -> 'CPUExecutionProvider', 'cuda' -> 'CUDAExecutionProvider', else `spec` as given.

    The aliases are case-insensitive; any other value is taken as an ORT EP name (checked
    against the installed build when a session is created).
    """
    text = spec.strip()
    return PROVIDER_ALIASES.get(text.lower(), text)


def short_name(provider: str) -> str:
    """'CPUExecutionProvider' -> 'CPU' (labels in tables and plots); other names shortened
    the same way."""
    return provider.removesuffix("ExecutionProvider") or provider


_cuda_libraries_preloaded = False


def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the `nvidia-*` pip packages before the first CUDA session.

    onnxruntime-gpu installed from pip finds those libraries only after
    `onnxruntime.preload_dlls()` (ORT >= 1.21) or after `import torch` (whose CUDA build loads
    them). The bench side never imports torch, so without this a CUDA session fails to load
    libcudnn/libcublasLt on a machine whose CUDA comes from pip. Once per process; a build
    without CUDA returns at once; libraries already on the loader path are left as they are.
    ORT prints its warnings, which would corrupt machine-readable stdout: they go to the log.
    """
    global _cuda_libraries_preloaded
    if _cuda_libraries_preloaded:
        return
    _cuda_libraries_preloaded = True
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            preload()
    except Exception as exc:  # a failed preload shows up as a session error with the fix
        log.debug("onnxruntime.preload_dlls() failed: %s", exc)
    if captured.getvalue().strip():
        log.info("onnxruntime.preload_dlls(): %s", captured.getvalue().strip())


def check_provider_available(provider: str) -> str:
    """Resolve `provider` and raise BenchError (exit 2) unless this ORT build has it."""
    import onnxruntime as ort

    resolved = resolve_provider(provider)
    available = list(ort.get_available_providers())
    if resolved in available:
        if resolved == CUDA_EP:
            preload_cuda_libraries()
        return resolved
    listed = ", ".join(available)
    if resolved == CUDA_EP:
        raise BenchError(
            f"provider 'cuda' requested, but this onnxruntime {ort.__version__} build "
            f"({ort.get_device()}) has no CUDAExecutionProvider; available: {listed}; "
            f"to fix, {CUDA_FIX}"
        )
    if resolved in ort.get_all_providers():
        raise BenchError(
            f"provider {provider!r} ({resolved}) is a known ONNX Runtime EP but is not in this "
            f"onnxruntime {ort.__version__} build; available: {listed}; install the "
            "onnxruntime package built with it"
        )
    raise BenchError(
        f"unknown execution provider {provider!r}: expected 'cpu', 'cuda' or an EP name this "
        f"onnxruntime build has; available: {listed}"
    )


@dataclass(frozen=True)
class ProviderProbe:
    """Can this process run a session on `provider`? (`reason` says why or why not.)"""

    provider: str
    usable: bool
    reason: str


# A one-node model, y = x + x on a [1, 4] float tensor (opset 13, IR 8), serialized; built with
# onnx.helper by tests/test_bench_providers.py, which checks these bytes (no onnx needed here).
PROBE_MODEL = bytes.fromhex(
    "08083a4a0a0e0a01780a01781201792203416464120e6f6e6e78736869702d70726f62655a130a0178120e"
    "0a0c080112080a0208010a02080462130a0179120e0a0c080112080a0208010a02080442040a00100d"
)


def probe_provider(provider: str) -> ProviderProbe:
    """Create a session on `provider` alone with a tiny model and run it once.

    `get_available_providers()` only says which EPs this onnxruntime build contains:
    onnxruntime-gpu lists CUDA on a machine without a usable GPU or CUDA libraries, and ORT
    then falls back to the CPU EP (or fails) when a session is created. Only a session that
    really runs on the EP counts."""
    import numpy as np
    import onnxruntime as ort

    provider = resolve_provider(provider)
    available = list(ort.get_available_providers())
    if provider not in available:
        return ProviderProbe(
            provider, False, f"this onnxruntime build has no {provider} (available: {available})"
        )
    if provider == CUDA_EP:
        preload_cuda_libraries()
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(PROBE_MODEL, opts, providers=[provider])
        active = list(sess.get_providers())
        if provider not in active:
            return ProviderProbe(
                provider, False,
                f"{provider} is listed but a session fell back to {active} (no usable device "
                "or driver/libraries)",
            )  # fmt: skip
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        (y,) = sess.run(None, {"x": x})
        if not np.array_equal(y, x + x):
            return ProviderProbe(provider, False, f"{provider} computed a wrong probe result")
    except Exception as exc:  # any failure to create or run means "not usable here"
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return ProviderProbe(
            provider, False, f"creating or running a {provider} session failed: {first}"
        )
    return ProviderProbe(provider, True, f"a probe session ran on {provider}")
