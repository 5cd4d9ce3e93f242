"""Data-parallel training under `torchrun`: the process group, the ranks, and the few
collectives the training stages need.

Launch (one node, N processes; several nodes: the same on each node with `--nnodes M
--rdzv-backend c10d --rdzv-endpoint HOST:PORT`):

    torchrun --nproc_per_node=N -m onnxship train|distill|run ...

`torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `session()` reads
them and, when WORLD_SIZE > 1, joins the process group (gloo on CPU, nccl on CUDA). Without
them (a plain `onnxship train`) everything here is a no-op on one rank.

The rules the stages follow:
- Training (`models.loop.train_sgd`) wraps the model in DistributedDataParallel. `batch_size`
  is the *global* batch: every rank draws the same seeded permutation of the epoch, and rank r
  takes every world_size-th sample of each global batch (`shard`), so the shards are disjoint
  and together are exactly the single-process batch. Each rank's loss is weighted by its share
  of the batch, so the averaged gradient is the gradient of the global batch mean: the LR is
  therefore NOT scaled with the world size (`LR_SCALING`), and 1 and N processes take the same
  steps over the same batches.
- Metrics are all-reduced (`all_reduce_sum`, `top1`): accuracy is evaluated on disjoint slices.
- Only rank 0 writes files. Work that does not distribute runs on rank 0 inside `on_main()`,
  while the other ranks wait for its result (or its error, which they raise too).
- Collectives time out after `timeout_s` (default 120 s), so a dead or stuck rank makes every
  rank fail with a one-line `DistributedError` (exit code 1) instead of hanging. The waits for
  rank 0's non-distributed work (export, quantize, bench: minutes) use a separate gloo group
  with `MAIN_WAIT_TIMEOUT_S`; a rank that *dies* breaks its connections, which the others see
  at once.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from onnxship.core.errors import OnnxshipError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 120.0
# How long the other ranks wait for rank 0's non-distributed stages (export, prune, quantize,
# fp16, eval, bench of `onnxship run`). A rank that dies closes its sockets and the waiting
# ranks fail at once; this bounds only a rank 0 that is alive but stuck.
MAIN_WAIT_TIMEOUT_S = 6 * 3600.0
LR_SCALING = (
    "none: the batch size is the global batch, split across the ranks, and each rank's loss "
    "is weighted by its share, so the single-process LR schedule applies unchanged"
)
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(OnnxshipError):
    """A collective failed: another rank died, or did not answer within the timeout."""

    exit_code = 1


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job. `Ranks()` is the single-process default."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def record(self, batch_size: int) -> dict[str, Any]:
        """What a training stage's metrics state about data parallelism: the world size, the
        global and per-rank batch, and the LR scaling rule."""
        return {
            "world_size": self.world_size,
            "dist_backend": self.backend,
            "global_batch_size": batch_size,
            "per_rank_batch_size": -(-batch_size // self.world_size),
            "lr_scaling": LR_SCALING if self.enabled else "none (one process)",
        }

    # -- collectives (no-ops on one rank) ---------------------------------------------------

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks (float64, on the main group)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_collective_device(self))
        with translate_errors(self, "all-reduce"):
            dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def all_gather_rows(self, part: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate each rank's rows (rank order); `sizes[r]` = rows of rank r."""
        if not self.enabled:
            return part
        dev = _collective_device(self)
        width = part.shape[1:]
        chunks = [torch.empty((n, *width), dtype=part.dtype, device=dev) for n in sizes]
        with translate_errors(self, "all-gather"):
            dist.all_gather(chunks, part.to(dev).contiguous())
        return torch.cat([c.cpu() for c in chunks])

    def barrier(self) -> None:
        if self.enabled:
            with translate_errors(self, "barrier"):
                dist.barrier(group=_WAIT_GROUP)

    def broadcast(self, obj: T, *, what: str = "broadcast") -> T:
        """Rank 0's `obj` on every rank (pickled; gloo side group, long timeout)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        with translate_errors(self, what, timeout_s=MAIN_WAIT_TIMEOUT_S):
            dist.broadcast_object_list(box, src=0, group=_WAIT_GROUP)
        return box[0]  # type: ignore[return-value]

    def on_main(self, fn: Callable[[], T], *, what: str = "rank 0's work") -> T:
        """Run `fn` on rank 0 only, as a single-process program; every rank returns its result.

        An error on rank 0 is raised on every rank (the others say it came from rank 0), so
        all exit with the same code. Nested calls run locally.
        """
        global _CURRENT
        if not self.enabled or not _CURRENT.enabled:  # one rank, or nested inside on_main
            return fn()
        payload: tuple[Any, ...] | None = None
        if self.is_main:
            _CURRENT = Ranks(timeout_s=self.timeout_s)  # nested code runs single-process
            try:
                value = fn()
            except OnnxshipError as exc:
                payload = ("err", str(exc), exc.exit_code)
                raise
            except BaseException as exc:
                payload = ("err", f"{type(exc).__name__}: {_first_line(exc)}", 1)
                raise
            else:
                payload = ("ok", value)
            finally:
                _CURRENT = self
                if payload is not None:
                    self.broadcast(payload, what=what)
            return value
        payload = self.broadcast(None, what=what)
        assert payload is not None
        if payload[0] == "err":
            raise OnnxshipError(
                f"rank {self.rank}/{self.world_size}: rank 0 failed: {payload[1]}",
                exit_code=payload[2],
            )
        return payload[1]


_CURRENT = Ranks()
_WAIT_GROUP: Any = None
_CPU_GROUP: Any = None  # gloo, for models trained on the CPU in a job whose backend is nccl


def current() -> Ranks:
    """The ranks of the running job (`Ranks()` outside torchrun or inside `on_main`)."""
    return _CURRENT


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _collective_device(ranks: Ranks) -> torch.device:
    if ranks.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def translate_errors(ranks: Ranks, what: str, *, timeout_s: float | None = None) -> Iterator[None]:
    """A failed collective becomes one line: which rank, which collective, why, the fix.
    A no-op on one rank."""
    if not ranks.enabled:
        yield
        return
    try:
        yield
    except (dist.DistError, RuntimeError) as exc:
        if isinstance(exc, OnnxshipError) or not _is_comm_failure(exc):
            raise  # e.g. a CUDA out-of-memory error is not another rank's fault
        limit = ranks.timeout_s if timeout_s is None else timeout_s
        raise DistributedError(
            f"rank {ranks.rank}/{ranks.world_size}: {what} failed: another rank died or did not "
            f"answer within {limit:g} s ({_first_line(exc)}); see the first failing rank's "
            "error above, fix it and rerun (finished stages are reused)"
        ) from exc


_COMM_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "peer", "store")


def _is_comm_failure(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(word in text for word in _COMM_WORDS)


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> Ranks:
    """Join torchrun's process group when WORLD_SIZE > 1 (idempotent); return the ranks."""
    global _CURRENT, _WAIT_GROUP, _CPU_GROUP
    if _CURRENT.enabled:
        return _CURRENT
    if not timeout_s > 0:
        raise DistributedError(f"--dist-timeout must be > 0 seconds, got {timeout_s}", exit_code=2)
    world = env_world_size()
    if world <= 1:
        _CURRENT = Ranks(timeout_s=timeout_s)
        return _CURRENT
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun "
            "(it sets RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or unset WORLD_SIZE",
            exit_code=2,
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise DistributedError(
                f"--device {device} under torchrun but CUDA is not available; use --device cpu",
                exit_code=2,
            )
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) on this "
                "node; pass --nproc_per_node <= the GPU count",
                exit_code=2,
            )
        torch.cuda.set_device(local_rank)
    ranks = Ranks(rank, world, local_rank, backend, float(timeout_s))
    timeout = datetime.timedelta(seconds=timeout_s)
    with translate_errors(ranks, "joining the process group"):
        dist.init_process_group(backend=backend, timeout=timeout)
        # Rank 0's decisions and results travel on a gloo group with a long timeout: the others
        # wait there while rank 0 alone exports, quantizes and benchmarks (minutes).
        _WAIT_GROUP = dist.new_group(
            backend="gloo", timeout=datetime.timedelta(seconds=MAIN_WAIT_TIMEOUT_S)
        )
        # `run --device cuda` trains the teacher on the GPUs (nccl) but distills on the CPU.
        _CPU_GROUP = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    _CURRENT = ranks
    log.info("rank %d/%d (local %d) joined the %s process group", rank, world, local_rank, backend)
    return ranks


def shutdown() -> None:
    global _CURRENT, _WAIT_GROUP, _CPU_GROUP
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    _CURRENT = Ranks(timeout_s=_CURRENT.timeout_s)
    _WAIT_GROUP = _CPU_GROUP = None


@contextlib.contextmanager
def session(device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Ranks]:
    """`init_from_env` for the length of one command, then leave the group."""
    ranks = init_from_env(device, timeout_s)
    try:
        yield ranks
    finally:
        if ranks.enabled:
            shutdown()


def train_device(device: str | torch.device, ranks: Ranks) -> torch.device:
    """`cuda` under torchrun means this rank's GPU (cuda:LOCAL_RANK)."""
    dev = torch.device(device)
    if ranks.enabled and dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", ranks.local_rank)
    return dev


def shard(idx: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's part of a global batch: every world_size-th sample from `rank` on."""
    if not ranks.enabled:
        return idx
    return idx[ranks.rank :: ranks.world_size]


def wrap(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (rank 0's weights are broadcast to all)."""
    if not ranks.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    group = _CPU_GROUP if device.type == "cpu" and ranks.backend == "nccl" else None
    with translate_errors(ranks, "broadcasting rank 0's weights"):
        return DistributedDataParallel(model, device_ids=ids, process_group=group)


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ranks: Ranks | None = None) -> float:
    """Top-1 over all of (x, y): each rank evaluates its contiguous slice, counts all-reduced.
    On one rank it is `models.evaluate.top1` itself (bit-identical)."""
    from onnxship.models.evaluate import predict_logits
    from onnxship.models.evaluate import top1 as local_top1

    ranks = current() if ranks is None else ranks
    if not ranks.enabled:
        return local_top1(model, x, y)
    n = x.shape[0]
    lo, hi = n * ranks.rank // ranks.world_size, n * (ranks.rank + 1) // ranks.world_size
    correct = 0.0
    if hi > lo:
        logits = predict_logits(model, x[lo:hi])
        correct = float((logits.argmax(dim=1) == y[lo:hi]).sum())
    total_correct, total = ranks.all_reduce_sum([correct, float(hi - lo)])
    return total_correct / total


def rows_of(n: int, ranks: Ranks) -> tuple[int, int, list[int]]:
    """This rank's contiguous slice [lo, hi) of n rows, and every rank's row count."""
    bounds = [n * r // ranks.world_size for r in range(ranks.world_size + 1)]
    sizes = [bounds[r + 1] - bounds[r] for r in range(ranks.world_size)]
    return bounds[ranks.rank], bounds[ranks.rank + 1], sizes
