"""The SGD loop's settings (`SgdConfig`, its LR schedules and mixed-precision modes), torch-free.

The loop itself is `models.loop.train_sgd`; these types live apart so the CLI can build its
flags from the configs that nest them (train, prune, distill) without importing torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from onnxship.models.errors import ModelsError


class LrSchedule(enum.Enum):
    ONECYCLE = "onecycle"
    COSINE = "cosine"
    CONSTANT = "constant"


class AmpMode(enum.Enum):
    OFF = "off"
    FP16 = "fp16"  # CUDA only, with GradScaler
    BF16 = "bf16"  # CUDA, or a CPU with native bf16


@dataclass(frozen=True)
class SgdConfig:
    epochs: float = 1.0  # fractional epochs allowed (fine-tuning budgets are in steps)
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: LrSchedule = LrSchedule.ONECYCLE

    def validate(self) -> None:
        if not self.epochs > 0:
            raise ModelsError(f"epochs must be > 0, got {self.epochs}; pass a positive number")
        if self.batch_size < 1:
            raise ModelsError(f"batch size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ModelsError(f"learning rate must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ModelsError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ModelsError(f"weight decay must be >= 0, got {self.weight_decay}")
