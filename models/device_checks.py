"""Where training may run: the device and mixed-precision checks of the train stage (torch).

Mixed precision: `AmpMode.FP16` (with GradScaler) or `AmpMode.BF16` on CUDA; on a CPU only
`AmpMode.BF16`, and only when the CPU computes bf16 natively (AVX512-BF16 or AMX) - without it
autocast is emulated and was measured 37x slower than fp32 training, so it is refused rather
than silently slow. The CPU flags are a parameter (`cpu_flags=`) so the refusal is testable on
any machine.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from onnxship.core import env
from onnxship.models.errors import ModelsError
from onnxship.models.sgd_config import AmpMode


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelsError(f"device {device!r} is not a torch device; use cpu or cuda") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ModelsError(f"device {device!r} is not supported for training; use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelsError(
            f"device {device!r} requested but CUDA is not available here "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu"
        )
    return dev


def check_amp(amp: AmpMode, device: str, *, cpu_flags: Iterable[str] | None = None) -> None:
    """Refuse mixed precision where it would be wrong or pathologically slow."""
    if amp is AmpMode.OFF:
        return
    dev_type = torch.device(device).type
    if dev_type == "cuda":
        if amp is AmpMode.BF16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ModelsError(
                f"--amp bf16 on {device}: this GPU does not support bf16; use --amp fp16"
            )
        return
    if amp is AmpMode.FP16:
        raise ModelsError(
            "--amp fp16 on the CPU is not supported (fp16 autocast with GradScaler is a CUDA "
            "recipe); use --amp bf16 on a CPU with native bf16, --device cuda, or drop --amp"
        )
    flags = env.cpu_flags() if cpu_flags is None else frozenset(cpu_flags)
    if not any(f in flags for f in env.NATIVE_BF16_FLAGS):
        raise ModelsError(
            f"--amp (bf16 autocast) refused on this CPU ({env.cpu_model_name()}): it has none of "
            f"the native bf16 flags {', '.join(env.NATIVE_BF16_FLAGS)}, so bf16 is emulated and "
            "was measured 37x slower than fp32 training; drop --amp (fp32) or train with "
            "--device cuda"
        )


def default_amp(device: str) -> AmpMode:
    """What a bare `--amp` means: bf16 on a CPU (refused later without native bf16); on CUDA
    bf16 where the GPU supports it, else fp16 with GradScaler."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return AmpMode.FP16
    return AmpMode.BF16
