"""The one SGD training loop, shared by training, fine-tuning and distillation.

Batches come from in-memory tensors, shuffled with a seeded generator, so a run is
deterministic on CPU for a given seed. The loss is pluggable (`loss_fn(logits, x, y)`), which
is how distillation adds its teacher term without a second loop.

Under torchrun (`models.distributed`), the same loop runs data-parallel: the model is wrapped in
DistributedDataParallel, every rank draws the same permutation and keeps its disjoint shard of
each global batch (`cfg.batch_size` stays the global batch), and each rank's loss is weighted
by its share of the batch so the all-reduced gradient is the global batch mean's. Augmentation
is drawn for the whole global batch on every rank (so the generators stay in step) and then
sharded. One process takes exactly the code path it took before.
"""

from __future__ import annotations

import math
import resource
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import nn

from onnxship.core.progress import progress as progress_display
from onnxship.models import distributed
from onnxship.models.errors import ModelsError
from onnxship.models.sgd_config import AmpMode, LrSchedule, SgdConfig  # declared torch-free there

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
T = TypeVar("T")


def process_cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used so far: stage records
    report it beside wall time, which other jobs on a shared machine inflate."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def side_by_side(jobs: Sequence[Callable[[], T]], workers: int | None = None) -> list[T]:
    """Run independent training jobs at once, one per core, each with one intra-op thread;
    results in the order of `jobs`. Small models gain nothing from a second intra-op thread
    (the pruned SimpleCNN student trained no faster on 2 threads than on 1, measured on 2
    cores), so two of them side by side use both cores. Each job owns its model, optimiser
    and seeded generator, so results equal those of a run in turn on one thread (a sum split
    over two threads rounds differently). `workers` defaults to
    min(jobs, torch's intra-op threads); 1 runs them in turn, unchanged."""
    workers = min(len(jobs), torch.get_num_threads()) if workers is None else workers
    if workers <= 1 or len(jobs) <= 1:
        return [job() for job in jobs]

    def one_thread(job: Callable[[], T]) -> T:
        torch.set_num_threads(1)  # OpenMP's thread count is per calling thread: set it here
        return job()

    before = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="train") as pool:
            return [f.result() for f in [pool.submit(one_thread, job) for job in jobs]]
    finally:
        torch.set_num_threads(before)


def cross_entropy_loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y)


def total_steps(n_samples: int, cfg: SgdConfig) -> int:
    per_epoch = math.ceil(n_samples / cfg.batch_size)
    return max(1, round(per_epoch * cfg.epochs))


def train_sgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: SgdConfig,
    *,
    seed: int,
    loss_fn: LossFn = cross_entropy_loss,
    augment: AugmentFn | None = None,
    amp: AmpMode = AmpMode.OFF,
    device: torch.device | str = "cpu",
    desc: str = "train",
    progress: bool = True,
    ranks: distributed.Ranks | None = None,
) -> dict[str, float]:
    """Train `model` in place; return {"steps", "final_loss"}.

    The number of optimiser steps is `ceil(N / batch_size) * epochs` (rounded), so two calls
    with the same config take the same steps: the KD-vs-no-KD ablation relies on that.
    `ranks` (default: the running job's, `distributed.current()`) makes it data-parallel;
    `final_loss` is then the global batch's mean loss (all-reduced).
    """
    cfg.validate()
    ranks = distributed.current() if ranks is None else ranks
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    if ranks.enabled and cfg.batch_size < ranks.world_size:
        raise ModelsError(
            f"batch size {cfg.batch_size} is smaller than the {ranks.world_size} ranks: it is "
            f"the global batch, split across ranks; pass --batch-size >= {ranks.world_size}"
        )
    net = distributed.wrap(model, ranks, device)
    steps = total_steps(x.shape[0], cfg)
    optimizer, scheduler = _optimizer(model, cfg, steps)
    use_scaler = amp is AmpMode.FP16 and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    autocast_dtype = {AmpMode.FP16: torch.float16, AmpMode.BF16: torch.bfloat16}.get(amp)

    n = x.shape[0]
    step = 0
    loss_value = float("nan")
    show = progress and ranks.is_main
    with (
        distributed.translate_errors(ranks, f"{desc} (gradient all-reduce)"),
        progress_display(steps, desc, "step", enabled=show) as bar,
    ):
        while step < steps:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, cfg.batch_size):
                if step >= steps:
                    break
                idx = order[start : start + cfg.batch_size]
                xb, yb = x[idx], y[idx]
                if augment is not None:
                    xb = augment(xb, generator)
                weight = 1.0
                if ranks.enabled:
                    xb, yb, weight = _local_part(xb, yb, ranks)
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                loss = _sgd_step(
                    net, xb, yb, weight, loss_fn=loss_fn, optimizer=optimizer,
                    scheduler=scheduler, scaler=scaler, autocast_dtype=autocast_dtype,
                    device=device, ranks=ranks,
                )  # fmt: skip
                step += 1
                if step % 50 == 0 or step == steps:
                    loss_value = float(loss.detach())
                    if ranks.enabled:
                        loss_value = ranks.all_reduce_sum([loss_value])[0] / ranks.world_size
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                bar.update(1)
    model.eval()
    return {"steps": float(steps), "final_loss": loss_value}


def _optimizer(
    model: nn.Module, cfg: SgdConfig, steps: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LRScheduler | None]:
    """SGD with the config's momentum and weight decay, and its learning-rate schedule over
    `steps` optimiser steps (None: a constant rate)."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    if cfg.schedule is LrSchedule.ONECYCLE:
        # OneCycleLR divides by (pct_start * total_steps - 1): 0.25 of 4 steps would be 0.
        pct_start = 0.25 if steps != 4 else 0.3
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=pct_start
        )
    elif cfg.schedule is LrSchedule.COSINE:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    else:
        scheduler = None
    return optimizer, scheduler


def _sgd_step(
    net: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    weight: float,
    *,
    loss_fn: LossFn,
    optimizer: torch.optim.SGD,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler | None,
    autocast_dtype: torch.dtype | None,
    device: torch.device,
    ranks: distributed.Ranks,
) -> torch.Tensor:
    """One optimiser step on the batch (this rank's part of it); returns the batch's loss."""
    optimizer.zero_grad(set_to_none=True)
    if autocast_dtype is not None:
        with torch.autocast(device_type=device.type, dtype=autocast_dtype):
            loss = loss_fn(net(xb), xb, yb)
    else:
        loss = loss_fn(net(xb), xb, yb)
    if ranks.enabled:
        # DDP averages gradients over the ranks; weighting each rank's mean loss by
        # world * local_n / global_n makes that average the global batch mean's.
        loss = loss * weight
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss


def _local_part(
    xb: torch.Tensor, yb: torch.Tensor, ranks: distributed.Ranks
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This rank's shard of a global batch and its loss weight (world * local_n / global_n).

    A rank whose shard is empty (a last partial batch smaller than the world) still runs one
    sample with weight 0: DDP needs every rank in every backward pass."""
    pos = distributed.shard(torch.arange(xb.shape[0]), ranks)
    if pos.numel() == 0:
        return xb[:1], yb[:1], 0.0
    return xb[pos], yb[pos], ranks.world_size * pos.numel() / xb.shape[0]
