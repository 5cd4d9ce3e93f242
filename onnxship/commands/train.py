"""`onnxship train`: train an architecture from scratch on MNIST (the `train` stage).

Writes OUT/checkpoints/<name>.pt (+ .json sidecar) and OUT/stages/train.json. Module top is
stdlib-only so `onnxship --help` never imports torch.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from onnxship.commands.common import (
    add_checkpoint_name,
    add_command,
    add_config_flags,
    add_data_dir,
    add_dist_timeout,
    add_out_dir,
    add_torch_threads,
    checkpoint_destination,
    config_from_args,
)

DEFAULT_NAME = "teacher"

# The defaults named here are the library's (TrainConfig()), filled in when the help is shown.
DESCRIPTION = """\
Train an architecture from scratch on MNIST with SGD (momentum 0.9, Nesterov, weight decay
5e-4) and a {sgd.schedule.value} LR schedule, on the training split minus the fixed
5,000-image validation part; report top-1 on validation and on the test split.

Defaults: {arch}, {sgd.epochs} epochs, batch {sgd.batch_size}, peak LR {sgd.lr}, \
{augment.value} (+-2 px) augmentation: chosen on
the validation split to reach >= 99.0 % test top-1 within 120 s of training on a quiet 2-core
CPU. The same --seed twice on the same CPU and thread count gives identical weights (sha256).
OMP_WAIT_POLICY defaults to PASSIVE (set it to override): spinning OpenMP threads crawl on a
shared machine.

Writes OUT/checkpoints/NAME.pt (state_dict only) + NAME.json (architecture, widths,
normalisation, seed, metrics, sha256) and OUT/stages/train.json; prints one summary line.

Data-parallel: torchrun --nproc_per_node=N -m onnxship train ... (DistributedDataParallel,
gloo on CPU, nccl with --device cuda). --batch-size is the global batch, split across the
ranks, so the LR is not scaled; only rank 0 writes. See README "Scaling up".
"""


HELP = "train a model from scratch on MNIST (writes a checkpoint + stages/train.json)"


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "train", _add_arguments, run, HELP)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from onnxship.models.train_config import TrainConfig

    defaults = TrainConfig()
    parser.description = DESCRIPTION.format(**vars(defaults))
    add_out_dir(parser)
    add_config_flags(parser, defaults, "arch", "widths", "sgd", "seed", "augment")
    add_data_dir(parser)
    add_config_flags(parser, defaults, "amp", "device")
    add_torch_threads(parser)
    add_checkpoint_name(parser, DEFAULT_NAME)
    add_dist_timeout(parser)


def _ranks_note(metrics: Mapping[str, Any]) -> str:
    world = metrics.get("world_size", 1)
    return f" x {world} ranks, global batch {metrics['global_batch_size']}" if world > 1 else ""


OMP_WAIT_ENV = "OMP_WAIT_POLICY"


def prefer_passive_omp_wait() -> None:
    """Make torch's OpenMP workers sleep instead of spin while waiting, unless the user chose.

    Must run before torch is first imported (libgomp reads the variable when it loads). On a
    2-core box shared with other work, spinning workers steal the CPU from the one doing the
    work: measured (under contention) 480-600 ms per simple_cnn training step with the default
    policy vs 64-105 ms with PASSIVE, 2 threads each.
    """
    os.environ.setdefault(OMP_WAIT_ENV, "PASSIVE")


def run(args: argparse.Namespace) -> int:
    prefer_passive_omp_wait()
    import torch

    from onnxship import api
    from onnxship.core import mnist
    from onnxship.models import distributed
    from onnxship.models.device_checks import default_amp
    from onnxship.models.sgd_config import AmpMode
    from onnxship.models.train_config import TrainConfig

    name, out = checkpoint_destination(args, DEFAULT_NAME)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    amp = AmpMode.OFF
    if args.amp == "auto":
        amp = default_amp(args.device)
    elif args.amp is not None:
        amp = AmpMode(args.amp)
    cfg = config_from_args(args, TrainConfig(), amp=amp)
    cfg.validate()  # bad values fail here, before any data is read or folder created

    with distributed.session(cfg.device, args.dist_timeout) as ranks:
        artifact = api.train(
            out, cfg, name=name, data_dir=mnist.resolve_data_root(args.data_dir), ranks=ranks
        )
    if not ranks.is_main:
        return 0
    m = artifact.metrics
    print(
        f"trained {cfg.arch} (seed {cfg.seed}): test top-1 {100 * m['test_top1']:.2f} %, "
        f"val top-1 {100 * m['val_top1']:.2f} %, {m['epochs']:g} epochs / {m['steps']} steps in "
        f"{m['train_wall_s']:.1f} s ({m['sec_per_epoch']:.1f} s/epoch, {m['threads']} threads, "
        f"{m['device']}{_ranks_note(m)}) -> {artifact.path}"
    )
    return 0
