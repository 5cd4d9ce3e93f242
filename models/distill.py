"""Knowledge distillation (Hinton et al. 2015) of a pruned student from its trained teacher,
with the ablation that shows what the teacher bought.

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

The T^2 factor keeps the soft term's gradients on the same scale as the hard term's when T
changes. The teacher runs in eval mode with `requires_grad_(False)` under `no_grad`: its logits
on the 'fit' split are computed once, before training (it is deterministic in eval mode and
there is no augmentation, so this equals running it on every batch, at a fraction of the cost).
The one training loop (`models.loop.train_sgd`) receives sample *indices* as its labels, and the
KD loss looks up each sample's label and cached teacher logits from them. `distill_student` is
the one KD trainer: the distill stage's KD run and the search stage's candidates (OneCycle SGD,
+-2 px shifts on MNIST, optionally the teacher run online) both train through it.

Every run also trains a second copy of the same pruned student with the same SGD config, the
same steps and the same seed (so the same batches in the same order), on plain cross-entropy:
`test_top1_kd` vs `test_top1_no_kd` is what distillation bought. In one process the two runs
train side by side, one core each (`models.loop.side_by_side`): the student is too small to
gain from a second intra-op thread, so the ablation costs about no extra wall time.

Under torchrun (`models.distributed`) both runs are data-parallel; each rank runs the teacher
forward on its own contiguous shard of 'fit' and the logits are all-gathered into the cache
(a few MB), so the teacher's work is split, not repeated. Rank 0 reads the checkpoints and
broadcasts them (other nodes need not see the files), and only rank 0 writes.

The config, `DistillConfig`, lives torch-free in `models.distill_config` (importable from here).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onnxship.core.artifact import Artifact, sha256_file
from onnxship.models import distributed
from onnxship.models.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    model_from_state,
    read_checkpoint_meta,
    save_checkpoint,
)
from onnxship.models.distill_config import DEFAULT_DISTILL_SGD, DistillConfig  # noqa: F401
from onnxship.models.errors import ModelsError
from onnxship.models.evaluate import outputs_in_batches
from onnxship.models.flops import count_macs, count_params
from onnxship.models.loop import AugmentFn, LossFn, process_cpu_s, side_by_side
from onnxship.models.sgd_config import LrSchedule, SgdConfig  # noqa: F401
from onnxship.models.training_data import DataConfig

log = logging.getLogger(__name__)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    T: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(zt/T) || softmax(zs/T)) + (1 - alpha) * CE(zs, y), batch mean.

    The teacher logits are detached: no gradient ever flows into the teacher.
    """
    soft = F.kl_div(
        F.log_softmax(student_logits / T, dim=1),
        F.softmax(teacher_logits.detach() / T, dim=1),
        reduction="batchmean",
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * (T * T) * soft + (1.0 - alpha) * hard


def check_pair(student_ckpt: str | os.PathLike[str] | None, teacher_ckpt: Any) -> None:
    """Refuse a missing teacher, unreadable checkpoints and a teacher of another architecture."""
    if teacher_ckpt is None or (isinstance(teacher_ckpt, str) and not teacher_ckpt.strip()):
        raise ModelsError(
            "distillation needs a teacher checkpoint and none was given; pass the trained "
            "teacher (e.g. --teacher OUT/checkpoints/teacher.pt)"
        )
    if student_ckpt is None:
        raise ModelsError("distillation needs a student checkpoint (the pruned model)")
    teacher_path, student_path = Path(teacher_ckpt), Path(student_ckpt)
    if not teacher_path.is_file():
        raise ModelsError(
            f"teacher checkpoint {teacher_path} does not exist; train one with "
            "`onnxship train` or pass another path"
        )
    teacher = read_checkpoint_meta(teacher_path)
    student = read_checkpoint_meta(student_path)
    if teacher.arch != student.arch:
        raise ModelsError(
            f"teacher {teacher_path} is a {teacher.arch} but student {student_path} is a "
            f"{student.arch}: distillation here expects a pruned student of the teacher's own "
            "architecture; prune the teacher to get the student"
        )


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The teacher's logits on `x` in eval mode (no autograd graph is built).

    Batches of 256 keep the activations in cache: 55,000 images took 1.8 s vs 5.4 s at 1,000
    (channels_last, 2 cores, measured)."""
    teacher.eval()
    return outputs_in_batches(teacher, x, batch_size)


@torch.no_grad()
def sharded_teacher_logits(
    teacher: nn.Module, x: torch.Tensor, ranks: distributed.Ranks | None = None
) -> torch.Tensor:
    """`teacher_logits` on all of `x`, each rank computing its contiguous shard and the
    shards all-gathered (on one rank: `teacher_logits(teacher, x)` itself)."""
    ranks = distributed.current() if ranks is None else ranks
    if not ranks.enabled:
        return teacher_logits(teacher, x)
    lo, hi, sizes = distributed.rows_of(x.shape[0], ranks)
    part = teacher_logits(teacher, x[lo:hi])
    return ranks.all_gather_rows(part, sizes)


def _load_on_all_ranks(
    path: str | os.PathLike[str], ranks: distributed.Ranks
) -> tuple[nn.Module, CheckpointMeta, str]:
    """(model, meta, sha256 of the weights file): rank 0 reads and verifies the checkpoint and
    broadcasts it, so ranks on other nodes need not see the file."""
    if not ranks.enabled:
        model, meta = load_checkpoint(path)
        return model, meta, sha256_file(path)

    def read() -> tuple[dict[str, torch.Tensor], CheckpointMeta, str]:
        model, meta = load_checkpoint(path)
        return model.state_dict(), meta, sha256_file(path)

    state, meta, sha = ranks.on_main(read, what=f"reading checkpoint {path}")
    return model_from_state(meta, state, source=path), meta, sha


def distill_student(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: DistillConfig,
    *,
    cached_logits: torch.Tensor | None = None,
    augment: AugmentFn | None = None,
    teacher_online: bool = False,
    desc: str = "distill",
    progress: bool = True,
) -> dict[str, float]:
    """The KD trainer (the distill stage's KD run and the search's candidates): train
    `student` in place by KD from `teacher` (frozen: eval, no grad) on (x, y) with `cfg.sgd`,
    batches in the order of `cfg.seed`. Returns train_sgd's stats; raises if any gradient
    reached the teacher.

    The soft targets are the teacher's logits on the unaugmented `x`, computed once
    (`cached_logits`, else here, sharded over the ranks). With `augment` (the search's +-2 px
    shifts) every augmented copy of an image keeps its image's cached logits as the soft
    target: the teachers here were trained with the same shifts, and the teacher's forward
    pass was ~3/4 of a KD step's time (measured). `teacher_online` runs the teacher on every
    (augmented) batch instead. NCHW models run channels_last (~20 % faster CPU conv kernels;
    weights still save as NCHW).
    """
    from onnxship.models.loop import train_sgd

    cfg.validate()
    teacher.eval()
    teacher.requires_grad_(False)
    if x.ndim == 4:
        teacher.to(memory_format=torch.channels_last)
        student.to(memory_format=torch.channels_last)
    T, alpha = float(cfg.temperature), float(cfg.alpha)
    loss_fn: LossFn
    if teacher_online:

        def online(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                zt = teacher(xb)
            return kd_loss(logits, zt, yb, T, alpha)

        loss_fn, targets = online, y
    else:
        logits_t = (
            cached_logits if cached_logits is not None else sharded_teacher_logits(teacher, x)
        )
        if logits_t.shape != (x.shape[0], logits_t.shape[1]) or logits_t.requires_grad:
            raise ModelsError("cached teacher logits must be a (N, classes) tensor without grad")

        def cached(logits: torch.Tensor, _x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return kd_loss(logits, logits_t[idx], y[idx], T, alpha)

        # train_sgd's "labels" are sample indices: the loss looks up label and logits by them
        loss_fn, targets = cached, torch.arange(x.shape[0])
    stats = train_sgd(student, x, targets, cfg.sgd, seed=cfg.seed, loss_fn=loss_fn,
                      augment=augment, desc=desc, progress=progress)  # fmt: skip
    if any(p.grad is not None for p in teacher.parameters()):
        raise ModelsError("a gradient reached the teacher during distillation; this is a bug")
    return stats


@dataclass
class _DistillArms:
    """The KD run and its ablation: the two students, their train_sgd stats and wall times."""

    kd: nn.Module
    no_kd: nn.Module
    kd_stats: dict[str, float]
    no_kd_stats: dict[str, float]
    timings: dict[str, float]


def _train_kd_and_ablation(
    student: nn.Module,
    teacher: nn.Module,
    fit: Any,
    cfg: DistillConfig,
    ranks: distributed.Ranks,
    progress: bool,
) -> _DistillArms:
    """Train a KD copy and a plain cross-entropy copy of `student` with the same SGD config,
    steps and seed. The two runs are independent: side by side, one core each (one process;
    under torchrun in turn, as the collectives of two runs must not interleave)."""
    from onnxship.models.loop import train_sgd

    student_kd, student_ce = student, copy.deepcopy(student)
    # channels_last makes the CPU conv + max-pool kernels of these small CNNs ~20 % faster
    # (measured); only float rounding differs, and checkpoints are saved contiguous (NCHW).
    for model in (teacher, student_kd, student_ce):
        if fit.x.ndim == 4:  # channels_last is for NCHW images only
            model.to(memory_format=torch.channels_last)
    torch.manual_seed(cfg.seed)

    t0 = time.perf_counter()
    cached = sharded_teacher_logits(teacher, fit.x, ranks)
    logits_s = time.perf_counter() - t0

    def timed(run: Callable[[], dict[str, float]]) -> Callable[[], tuple[dict[str, float], float]]:
        def job() -> tuple[dict[str, float], float]:
            t = time.perf_counter()
            return run(), time.perf_counter() - t

        return job

    def kd_run() -> dict[str, float]:
        return distill_student(student_kd, teacher, fit.x, fit.y, cfg, cached_logits=cached,
                               desc="distill (KD)", progress=progress)  # fmt: skip

    def ce_run() -> dict[str, float]:
        return train_sgd(student_ce, fit.x, fit.y, cfg.sgd, seed=cfg.seed,
                         desc="ablation (no KD)", progress=progress)  # fmt: skip

    t0, cpu0 = time.perf_counter(), process_cpu_s()
    (kd_stats, kd_s), (ce_stats, no_kd_s) = side_by_side(
        [timed(kd_run), timed(ce_run)], workers=1 if ranks.enabled else None
    )
    arms_s, arms_cpu_s = time.perf_counter() - t0, process_cpu_s() - cpu0
    if kd_stats["steps"] != ce_stats["steps"]:  # train_sgd derives steps from the config alone
        raise ModelsError("KD run and ablation took different step counts; this is a bug")
    timings = {
        "teacher_logits_s": round(logits_s, 3),
        "kd_wall_s": round(kd_s, 3),
        "no_kd_wall_s": round(no_kd_s, 3),
        "side_by_side": not ranks.enabled and torch.get_num_threads() > 1,
        "kd_and_ablation_wall_s": round(arms_s, 3),
        "kd_and_ablation_cpu_s": round(arms_cpu_s, 3),
    }
    return _DistillArms(student_kd, student_ce, kd_stats, ce_stats, timings)


def _distill_metrics(
    arms: _DistillArms,
    start_model: nn.Module,
    teacher: nn.Module,
    splits: tuple[Any, Any],
    cfg: DistillConfig,
    student_meta: CheckpointMeta,
    teacher_meta: CheckpointMeta,
    teacher_sha: str,
    ranks: distributed.Ranks,
) -> dict[str, Any]:
    """The distill record: test and val top-1 of both runs, of the start and of the teacher,
    the recipe, MACs/params of both models, wall times, the KD gain; warns of a run that ended
    below its pruned start."""
    top1 = distributed.top1
    val, test = splits
    student_kd, student_ce = arms.kd, arms.no_kd
    shape = (1, *teacher_meta.input_shape)
    metrics: dict[str, Any] = {
        "test_top1_kd": round(top1(student_kd, test.x, test.y), 6),
        "test_top1_no_kd": round(top1(student_ce, test.x, test.y), 6),
        "val_top1_kd": round(top1(student_kd, val.x, val.y), 6),
        "val_top1_no_kd": round(top1(student_ce, val.x, val.y), 6),
        "val_top1_start": round(top1(start_model, val.x, val.y), 6),
        "teacher_test_top1": round(top1(teacher, test.x, test.y), 6),
        "teacher_val_top1": round(top1(teacher, val.x, val.y), 6),
        "steps": int(arms.kd_stats["steps"]),
        "epochs": cfg.sgd.epochs,
        "temperature": cfg.temperature,
        "alpha": cfg.alpha,
        "seed": cfg.seed,
        "student_arch": student_meta.arch,
        "student_widths": dict(student_meta.widths),
        "student_macs": count_macs(student_kd, shape),
        "teacher_macs": count_macs(teacher, shape),
        "student_params": count_params(student_kd),
        "teacher_params": count_params(teacher),
        **arms.timings,
        "teacher_sha256": teacher_sha,
        **ranks.record(cfg.sgd.batch_size),
    }
    metrics["final_loss_kd"] = arms.kd_stats["final_loss"]
    metrics["final_loss_no_kd"] = arms.no_kd_stats["final_loss"]
    for run, key in (("KD", "val_top1_kd"), ("no-KD ablation", "val_top1_no_kd")):
        if metrics[key] < metrics["val_top1_start"] - 0.05:
            log.warning(
                "%s run ended at val top-1 %.4f, below the pruned start %.4f: training diverged "
                "(dead ReLUs after a short warm-up); lower --lr or raise --epochs",
                run,
                metrics[key],
                metrics["val_top1_start"],
            )
    metrics["macs_ratio"] = round(metrics["student_macs"] / metrics["teacher_macs"], 6)
    metrics["kd_gain_test_pp"] = round(
        100 * (metrics["test_top1_kd"] - metrics["test_top1_no_kd"]), 3
    )
    metrics["kd_gain_val_pp"] = round(100 * (metrics["val_top1_kd"] - metrics["val_top1_no_kd"]), 3)
    return metrics


def distilled_from_checkpoints(
    student_ckpt: str | os.PathLike[str],
    teacher_ckpt: str | os.PathLike[str] | None,
    cfg: DistillConfig,
    out_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    data: DataConfig | None = None,
) -> Artifact:
    """Distill the (pruned) student checkpoint from the teacher; write the KD student.
    The data is `data`, else the one the teacher's checkpoint records, else MNIST.

    Trains on the 'fit' split; decisions use 'val', reported accuracy 'test'. Also runs the
    ablation (same student, same steps and seed, no teacher). Metrics: `test_top1_kd`,
    `test_top1_no_kd`, `val_top1_kd`, `val_top1_no_kd`, `teacher_test_top1`,
    `teacher_val_top1`, `val_top1_start`, `steps`, MACs/params of both, wall times.
    """
    from onnxship.models.training_data import open_data

    ranks = distributed.current()
    cfg.validate()
    ranks.on_main(lambda: check_pair(student_ckpt, teacher_ckpt), what="checking checkpoints")
    assert teacher_ckpt is not None
    teacher, teacher_meta, teacher_sha = _load_on_all_ranks(teacher_ckpt, ranks)
    student, student_meta, student_sha = _load_on_all_ranks(student_ckpt, ranks)
    start_model = copy.deepcopy(student)
    if student_meta.parent_sha256 not in (None, teacher_sha):
        log.warning(
            "student %s was not pruned from teacher %s (parent sha256 differs); distilling anyway",
            student_ckpt,
            teacher_ckpt,
        )

    recorded = teacher_meta.data
    splits = open_data(data or (DataConfig.from_json(recorded) if recorded else None), data_dir)
    fit, val, test = (splits.split(s) for s in ("fit", "val", "test"))
    teacher.requires_grad_(False)
    arms = _train_kd_and_ablation(student, teacher, fit, cfg, ranks, progress)
    metrics = _distill_metrics(
        arms, start_model, teacher, (val, test), cfg, student_meta, teacher_meta, teacher_sha,
        ranks,
    )  # fmt: skip
    log.info(
        "distilled %s from %s: test top-1 KD %.4f vs no-KD %.4f (teacher %.4f)",
        student_ckpt,
        teacher_ckpt,
        metrics["test_top1_kd"],
        metrics["test_top1_no_kd"],
        metrics["teacher_test_top1"],
    )
    return ranks.on_main(
        lambda: save_checkpoint(
            arms.kd,
            out_path,
            stage="distill",
            seed=cfg.seed,
            metrics=metrics,
            parent_sha256=student_sha,
            config=cfg,
            extra={"teacher": os.fspath(teacher_ckpt), "teacher_sha256": teacher_sha},
            like=student_meta,
        ),
        what="writing the checkpoint",
    )
