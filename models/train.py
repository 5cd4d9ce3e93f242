"""Training a model from scratch on MNIST, an npz dataset or an image folder: the `train` stage.

`trained_from_data(cfg, out_path)` trains on the 'fit' split (training minus the fixed
validation part), reports top-1 on 'val' (for decisions) and 'test' (for reporting), and
writes a checkpoint (`.pt` + `.json` sidecar) atomically. It returns the weights file as an
`Artifact` whose metrics feed `stages/train.json`.

The defaults were chosen by measurement on 2-core AMD EPYC boxes so that the default
`onnxship train` reaches >= 99.0 % MNIST test top-1 in as few epochs as hold it: the numbers
are beside `DEFAULT_SGD`.

Mixed precision: `AmpMode.FP16` (with GradScaler) or `AmpMode.BF16` on CUDA; on a CPU only
`AmpMode.BF16`, and only when the CPU computes bf16 natively (AVX512-BF16 or AMX) - without it
autocast is emulated and was measured 37x slower than fp32 training, so it is refused rather
than silently slow. The CPU flags are a parameter (`cpu_flags=`) so the refusal is testable on
any machine.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from onnxship.core import env
from onnxship.core.artifact import Artifact
from onnxship.core.dataset import DatasetKind
from onnxship.core.flags import (
    Flag,
    flag,
    nested,
    non_negative_int,
    positive_float,
    positive_int,
    width_value,
)
from onnxship.core.mnist import MNIST_MEAN, MNIST_STD
from onnxship.models import distributed
from onnxship.models.errors import ModelsError
from onnxship.models.loop import (
    AmpMode,
    AugmentFn,
    LrSchedule,
    SgdConfig,
    process_cpu_s,
    total_steps,
    train_sgd,
)
from onnxship.models.registry import ModelFactory, create_model, list_models
from onnxship.models.registry import sorted_kwargs as _widths_tuple
from onnxship.models.training_data import DataConfig, DataSplits

log = logging.getLogger(__name__)

STAGE = "train"


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


def _background_value(mean: float = MNIST_MEAN[0], std: float = MNIST_STD[0]) -> float:
    """The normalised value of a black (0) pixel: what a shift moves into the image."""
    return (0.0 - mean) / std


def shift_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    max_shift: int = SHIFT_PIXELS,
    fill: float | None = None,
) -> torch.Tensor:
    """Translate every image of a (N, C, H, W) batch by its own random (dy, dx) in
    [-max_shift, max_shift], filling with the background value. One pad + one gather for the
    whole batch, so it costs little next to a training step on CPU. Random numbers come from
    `generator` (the loop's), so a seeded run stays deterministic."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    pad_value = _background_value() if fill is None else fill
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift), value=pad_value)
    pw = w + 2 * max_shift
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + offsets[0].view(n, 1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) + offsets[1].view(n, 1, 1)
    index = (rows * pw + cols).view(n, 1, h * w).expand(n, c, h * w)
    out = padded.reshape(n, c, -1).gather(2, index)
    return out.view(n, c, h, w)


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
        object.__setattr__(self, "widths", _widths_tuple(self.widths))
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
        injectable so the AMP refusal is testable on a CPU that has bf16.
        """
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


def _augment_fn(augment: Augment) -> AugmentFn | None:
    if augment is Augment.SHIFT:
        return shift_batch
    return None


def trained_from_data(
    cfg: TrainConfig,
    out_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cpu_flags: Iterable[str] | None = None,
    progress: bool = True,
    data: DataConfig | None = None,
    factory: ModelFactory | None = None,
    initial_state: str | os.PathLike[str] | None = None,
) -> Artifact:
    """Train `cfg.arch` (or a user's `factory` model) from scratch on the data's 'fit' split
    (MNIST unless `data` says otherwise: an npz dataset or an image folder), evaluate 'val' and
    'test', write the checkpoint `out_path` (.pt, plus its .json sidecar) and return it as an
    Artifact. `initial_state`: a plain state_dict (.pt) to start from instead of training (the
    SGD loop is skipped).

    Metrics: test_top1, val_top1 (fractions in [0, 1]), epochs, steps, train_wall_s (the SGD
    loop only), eval_wall_s, sec_per_epoch, threads (torch.get_num_threads()), final_loss,
    params, device, amp; world_size, global_batch_size, per_rank_batch_size, lr_scaling.

    Under torchrun every rank trains its shard (`models.distributed`), accuracy is all-reduced,
    and only rank 0 writes the checkpoint; every rank returns rank 0's Artifact.
    """
    from onnxship.models.training_data import open_data

    ranks = distributed.current()
    cfg.validate(cpu_flags=cpu_flags)
    out = Path(out_path)
    if out.suffix != ".pt":
        raise ModelsError(
            f"checkpoint path {out} must end in .pt (its sidecar is the same name with .json)"
        )
    device = distributed.train_device(check_device(cfg.device), ranks)

    splits = open_data(data, data_dir)
    fit, val, test = (splits.split(s) for s in ("fit", "val", "test"))

    torch.manual_seed(cfg.seed)  # weight init
    model = factory.build() if factory is not None else create_model(cfg.arch, **cfg.widths_dict)
    splits.check_model(model)
    is_mnist = splits.info.kind is DatasetKind.MNIST
    # The shift fills with MNIST's background value; other data trains unaugmented.
    augment = cfg.augment if is_mnist else Augment.NONE
    if initial_state is not None:
        load_initial_state(model, initial_state)
        cfg = replace(cfg, sgd=replace(cfg.sgd, epochs=0.0))
    fitted = _fit(model, cfg, fit.x, fit.y, device, augment, factory, initial_state, progress)
    model.cpu().eval()
    t1 = time.perf_counter()
    val_top1 = distributed.top1(model, val.x, val.y)
    test_top1 = distributed.top1(model, test.x, test.y)
    eval_wall_s = time.perf_counter() - t1
    if initial_state is None and not math.isfinite(fitted.final_loss):  # nan = no step taken
        log.warning("final training loss is %s: training diverged; lower --lr", fitted.final_loss)
    metrics = _train_metrics(cfg, fitted, model, device, ranks, (val_top1, test_top1, eval_wall_s))
    if not is_mnist:
        metrics["augment"] = augment.value
        metrics["dataset"] = splits.info.name
    if initial_state is not None:
        metrics["initial_state"] = os.fspath(initial_state)
    log.info(
        "trained in %.1f s: val top-1 %.4f, test top-1 %.4f",
        fitted.train_wall_s, val_top1, test_top1,
    )  # fmt: skip
    return _write_checkpoint(model, out, cfg, metrics, splits, factory, ranks)


def _write_checkpoint(
    model: torch.nn.Module,
    out: Path,
    cfg: TrainConfig,
    metrics: dict[str, Any],
    splits: DataSplits,
    factory: ModelFactory | None,
    ranks: distributed.Ranks,
) -> Artifact:
    """Rank 0 writes the checkpoint and its sidecar; every rank returns rank 0's Artifact."""
    from onnxship.models.checkpoint import save_checkpoint

    def write() -> Artifact:
        out.parent.mkdir(parents=True, exist_ok=True)
        return save_checkpoint(
            model,
            out,
            stage=STAGE,
            seed=cfg.seed,
            metrics=metrics,
            config=cfg.to_json(),
            dataset=splits.info,
            data=splits.config.to_json(),
            factory=factory,
        )

    return ranks.on_main(write, what="writing the checkpoint")


@dataclass(frozen=True)
class _Fitted:
    """What the SGD loop did: its steps and last loss, its wall and CPU time, and the fit
    split's size and rank (4: images, trained channels_last on a CPU)."""

    steps: float
    final_loss: float
    train_wall_s: float
    train_cpu_s: float
    n_fit: int
    ndim: int


def _fit(
    model: torch.nn.Module,
    cfg: TrainConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    augment: Augment,
    factory: ModelFactory | None,
    initial_state: str | os.PathLike[str] | None,
    progress: bool,
) -> _Fitted:
    """Place the data and the model, then run the SGD loop (skipped from an initial state)."""
    if device.type == "cuda":  # keep the whole split on the GPU: no per-batch copies
        x, y = x.to(device), y.to(device)
    elif x.ndim == 4:
        # channels_last: the CPU conv / max-pool kernels of these CNNs run faster on NHWC
        # (SimpleCNN at batch 256: 18 vs 23 s of CPU per epoch, one thread, measured); only
        # float rounding differs, and the checkpoint is saved contiguous (NCHW).
        model.to(memory_format=torch.channels_last)
    steps = total_steps(x.shape[0], cfg.sgd)
    log.info(
        "training %s %s on %d images: %d steps, %s, amp=%s, device=%s, %d threads",
        cfg.arch,
        cfg.widths_dict or "(default widths)",
        x.shape[0],
        steps,
        cfg.sgd,
        cfg.amp.value,
        device,
        torch.get_num_threads(),
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, cpu0 = time.perf_counter(), process_cpu_s()
    if initial_state is not None:
        result = {"steps": 0.0, "final_loss": float("nan")}
    else:
        result = train_sgd(
            model,
            x,
            y,
            cfg.sgd,
            seed=cfg.seed,
            augment=_augment_fn(augment),
            amp=cfg.amp,
            device=device,
            desc=f"train {factory.factory if factory else cfg.arch}",
            progress=progress,
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_wall_s = time.perf_counter() - t0
    return _Fitted(
        steps=result["steps"], final_loss=result["final_loss"], train_wall_s=train_wall_s,
        train_cpu_s=process_cpu_s() - cpu0, n_fit=int(x.shape[0]), ndim=x.ndim,
    )  # fmt: skip


def _train_metrics(
    cfg: TrainConfig,
    fitted: _Fitted,
    model: torch.nn.Module,
    device: torch.device,
    ranks: distributed.Ranks,
    evaluated: tuple[float, float, float],
) -> dict[str, Any]:
    """The stage record's metrics; `evaluated`: val top-1, test top-1 and their wall time."""
    val_top1, test_top1, eval_wall_s = evaluated
    epochs = cfg.sgd.epochs
    return {
        "test_top1": test_top1,
        "val_top1": val_top1,
        "epochs": int(epochs) if float(epochs).is_integer() else epochs,
        "steps": int(fitted.steps),
        "train_wall_s": round(fitted.train_wall_s, 3),
        "train_cpu_s": round(fitted.train_cpu_s, 3),
        "batch_size": cfg.sgd.batch_size,
        "channels_last": fitted.ndim == 4 and device.type == "cpu",
        "sec_per_epoch": round(fitted.train_wall_s / epochs, 3) if epochs else None,
        "eval_wall_s": round(eval_wall_s, 3),
        "threads": torch.get_num_threads(),
        "final_loss": fitted.final_loss if math.isfinite(fitted.final_loss) else None,
        "params": sum(p.numel() for p in model.parameters()),
        "n_fit": fitted.n_fit,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "device": str(device),
        "amp": cfg.amp.value,
        **ranks.record(cfg.sgd.batch_size),
    }


def load_initial_state(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a plain state_dict (`torch.load(weights_only=True)`) into `model`, strictly."""
    from onnxship.models.checkpoint import load_state_strictly

    p = Path(path)
    if not p.is_file():
        raise ModelsError(f"[model] state_dict {p} does not exist; pass an existing .pt file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelsError(
            f"[model] state_dict {p} was refused by torch.load(weights_only=True) "
            f"({type(exc).__name__}); save it with torch.save(model.state_dict(), path)"
        ) from exc
    if not isinstance(state, dict):
        raise ModelsError(f"[model] state_dict {p} holds a {type(state).__name__}, not a dict")
    load_state_strictly(model, state, f"[model] state_dict {p} does not fit the factory's model")
