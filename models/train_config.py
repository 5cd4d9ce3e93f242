"""What the `train` stage does (`TrainConfig`), torch-free: the CLI builds `onnxship train`'s
flags from it without importing torch. The stage is `models.train.trained_from_data`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from onnxship.core.flags import (
    Flag,
    flag,
    nested,
    non_negative_int,
    positive_float,
    positive_int,
    sorted_kwargs,
    width_value,
)
from onnxship.models.errors import ModelsError
from onnxship.models.sgd_config import AmpMode, LrSchedule, SgdConfig


class Augment(enum.Enum):
    NONE = "none"
    SHIFT = "shift"  # random translation by up to SHIFT_PIXELS in x and y, per sample


SHIFT_PIXELS = 2

# Chosen on the 'val' split (5,000 images, so +-0.15 % is noise), simple_cnn, seed 0.
# 2-core Zen 4 (NCHW):
#   8 ep, batch 128, peak LR 0.1, shift    val 99.12 %  test 99.20 %   (default until 0.2)
#   8 ep, batch 128, peak LR 0.1, no aug   val 98.94 %  test 98.87 %
#   6 ep, batch 128, peak LR 0.1, shift    val 99.00 %  test 99.26 %
#   8 ep, batch 128, peak LR 0.05, shift   val 99.02 %  test 99.22 %
#   8 ep, batch 256, peak LR 0.2, shift    val 99.04 %  test 99.15 %
# 2-core AMD EPYC with AVX2 only (channels_last):
#   5 ep, batch 128, peak LR 0.1, shift    val 99.02 %  test 99.12 %   <- default
#   5 ep, batch 256, peak LR 0.2, shift    val 98.98 %  test 98.86 %
#   4 ep, batch 256, peak LR 0.2, shift    val 98.92 %  test 99.04 %
# Batch 256 saved ~6 % of the time per epoch but needed more epochs. The 5-epoch default
# used 86 s of CPU (2 threads) for its SGD loop; 8 epochs took 133 s of wall time unloaded.
DEFAULT_SGD = SgdConfig(
    epochs=5,
    batch_size=128,
    lr=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule=LrSchedule.ONECYCLE,
)
DEFAULT_AUGMENT = Augment.SHIFT


@dataclass(frozen=True)
class TrainConfig:
    """What `trained_from_data` does. `widths` may be given as a mapping; it is stored as a
    sorted tuple of (name, value) pairs so the config stays hashable. Empty = the
    architecture's defaults."""

    # fmt: off
    arch: str = field(default="simple_cnn", metadata=flag(
        "--arch", "registered architecture: simple_cnn, bn_cnn, tiny_cnn (default: {default})"))
    widths: tuple[tuple[str, int], ...] = field(default=(), metadata=flag(
        "--width", "override one width of the architecture, e.g. --width hidden=64 (repeatable; "
        "default: the architecture's own widths)", dest="widths", action="append",
        type=width_value, metavar="NAME=INT"))
    sgd: SgdConfig = field(default_factory=lambda: DEFAULT_SGD, metadata=nested(
        epochs=Flag("--epochs", "passes over the training data, > 0; fractions allowed "
                    "(default: {default})", type=positive_float),
        batch_size=Flag("--batch-size", "mini-batch size (default: {default})", type=positive_int),
        lr=Flag("--lr", "peak learning rate of the schedule (default: {default})",
                type=positive_float),
        schedule=Flag("--schedule", "learning-rate schedule (default: {default})")))
    seed: int = field(default=0, metadata=flag(
        "--seed", "random seed (default: {default})", type=non_negative_int))
    augment: Augment = field(default=DEFAULT_AUGMENT, metadata=flag(
        "--augment", "training augmentation; shift = random +-2 px translation "
        "(default: {default})"))
    amp: AmpMode = field(default=AmpMode.OFF, metadata=flag(
        "--amp", "mixed precision (default: off). Bare --amp = bf16 (fp16 + GradScaler on a CUDA "
        "GPU without bf16). On a CPU only bf16, and only with native bf16 (AVX512-BF16/AMX): "
        "otherwise it is refused, since emulated bf16 was measured 37x slower than fp32",
        nargs="?", const="auto", choices=("auto", "bf16", "fp16"), default=None))
    device: str = field(default="cpu", metadata=flag(
        "--device", "cpu or cuda[:N] (default: {default})"))
    # fmt: on

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", sorted_kwargs(self.widths))
        # Accept the enums' string values too (configs loaded from TOML / the CLI).
        for name, kind in (("augment", Augment), ("amp", AmpMode)):
            value = getattr(self, name)
            if not isinstance(value, kind):
                try:
                    object.__setattr__(self, name, kind(value))
                except ValueError:
                    allowed = ", ".join(m.value for m in kind)
                    raise ModelsError(
                        f"train config: {name}={value!r} is not one of {allowed}"
                    ) from None

    @property
    def widths_dict(self) -> dict[str, int]:
        return dict(self.widths)

    def validate(self, *, cpu_flags: Iterable[str] | None = None) -> None:
        """Raise ModelsError on any bad value, before any data is loaded or any file written.

        `cpu_flags`: the CPU's ISA flags (default: this machine's, from /proc/cpuinfo);
        injectable so the AMP refusal is testable on a CPU that has bf16. (Imports torch: the
        architectures and the device are torch's.)
        """
        from onnxship.models.device_checks import check_amp, check_device
        from onnxship.models.registry import list_models

        if self.arch not in list_models():
            raise ModelsError(
                f"unknown architecture {self.arch!r}; known architectures: {', '.join(list_models())}"
            )
        for key, value in self.widths:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelsError(f"train config: width {key}={value!r} must be a positive integer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ModelsError(f"train config: seed must be an integer >= 0, got {self.seed!r}")
        self.sgd.validate()
        check_device(self.device)
        check_amp(self.amp, self.device, cpu_flags=cpu_flags)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for stage records (widths as a dict)."""
        from onnxship.core.artifact import jsonable

        record = jsonable(self)
        record["widths"] = self.widths_dict
        return record

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrainConfig:
        """Build from a plain mapping (a TOML table): the SgdConfig fields may sit flat
        (`epochs`, `batch_size`, `lr`, ...) or under `sgd`. Unknown keys are refused."""
        sgd_fields = set(SgdConfig.__dataclass_fields__)
        own_fields = set(cls.__dataclass_fields__) - {"sgd"}
        sgd_raw: dict[str, Any] = dict(raw.get("sgd", {}))
        own: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "sgd":
                continue
            if key in own_fields:
                own[key] = value
            elif key in sgd_fields:
                sgd_raw[key] = value
            else:
                known = ", ".join(sorted(own_fields | sgd_fields))
                raise ModelsError(f"train config: unknown key {key!r}; known keys: {known}")
        unknown_sgd = set(sgd_raw) - sgd_fields
        if unknown_sgd:
            raise ModelsError(
                f"train config: unknown sgd key(s) {', '.join(sorted(unknown_sgd))}; "
                f"known: {', '.join(sorted(sgd_fields))}"
            )
        if "schedule" in sgd_raw and not isinstance(sgd_raw["schedule"], LrSchedule):
            try:
                sgd_raw["schedule"] = LrSchedule(sgd_raw["schedule"])
            except ValueError:
                allowed = ", ".join(m.value for m in LrSchedule)
                raise ModelsError(
                    f"train config: schedule={sgd_raw['schedule']!r} is not one of {allowed}"
                ) from None
        sgd = replace(DEFAULT_SGD, **sgd_raw)
        return cls(sgd=sgd, **own)
