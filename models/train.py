"""Training a model from scratch on MNIST, an npz dataset or an image folder: the `train` stage.

`trained_from_data(cfg, out_path)` trains on the 'fit' split (training minus the fixed
validation part), reports top-1 on 'val' (for decisions) and 'test' (for reporting), and
writes a checkpoint (`.pt` + `.json` sidecar) atomically. It returns the weights file as an
`Artifact` whose metrics feed `stages/train.json`.

The config, `TrainConfig`, lives torch-free in `models.train_config` (so the CLI reads its
flags without torch); its defaults were chosen by measurement on 2-core AMD EPYC boxes so that
the default `onnxship train` reaches >= 99.0 % MNIST test top-1 in as few epochs as hold it:
the numbers are beside `DEFAULT_SGD` there. The device and mixed-precision checks
(`check_device`, `check_amp`, `default_amp`) are in `models.device_checks`. All are importable
from here as before.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from onnxship.core.artifact import Artifact
from onnxship.core.dataset import DatasetKind
from onnxship.core.mnist import MNIST_MEAN, MNIST_STD
from onnxship.models import distributed
from onnxship.models.device_checks import check_amp, check_device, default_amp  # noqa: F401
from onnxship.models.errors import ModelsError
from onnxship.models.loop import AugmentFn, process_cpu_s, total_steps, train_sgd
from onnxship.models.registry import ModelFactory, create_model, list_models  # noqa: F401
from onnxship.models.sgd_config import AmpMode, LrSchedule, SgdConfig  # noqa: F401
from onnxship.models.train_config import (  # noqa: F401
    DEFAULT_AUGMENT,
    DEFAULT_SGD,
    SHIFT_PIXELS,
    Augment,
    TrainConfig,
)
from onnxship.models.training_data import DataConfig, DataSplits

log = logging.getLogger(__name__)

STAGE = "train"


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
