"""`onnxship train`: train an architecture from scratch on MNIST (the `train` stage).

Writes OUT/checkpoints/<name>.pt (+ .json sidecar) and OUT/stages/train.json. Module top is
stdlib-only so `onnxship --help` never imports torch.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxship.commands.common import (
    add_data_dir,
    add_dist_timeout,
    add_out_dir,
    non_negative_int,
    positive_float,
    positive_int,
)

# Mirrors models.train.DEFAULT_SGD / DEFAULT_AUGMENT (kept literal here so --help is torch-free;
# tests/test_cli_train.py checks they agree).
DEFAULT_ARCH = "simple_cnn"
DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 0.1
DEFAULT_AUGMENT = "shift"
DEFAULT_SCHEDULE = "onecycle"
DEFAULT_NAME = "teacher"

DESCRIPTION = f"""\
Train an architecture from scratch on MNIST with SGD (momentum 0.9, Nesterov, weight decay
5e-4) and a {DEFAULT_SCHEDULE} LR schedule, on the training split minus the fixed
5,000-image validation part; report top-1 on validation and on the test split.

Defaults: {DEFAULT_ARCH}, {DEFAULT_EPOCHS} epochs, batch {DEFAULT_BATCH_SIZE}, peak LR {DEFAULT_LR}, \
{DEFAULT_AUGMENT} (+-2 px) augmentation: chosen on
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


def _width(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=INT like hidden=64, got {text!r}")
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=INT like hidden=64, got {text!r} ({value!r} is not an integer)"
        ) from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"width {key}={number} must be >= 1")
    return key.strip(), number


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train a model from scratch on MNIST (writes a checkpoint + stages/train.json)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_out_dir(parser)
    parser.add_argument(
        "--arch",
        default=DEFAULT_ARCH,
        help=f"registered architecture: simple_cnn, bn_cnn, tiny_cnn (default: {DEFAULT_ARCH})",
    )
    parser.add_argument(
        "--width",
        dest="widths",
        action="append",
        type=_width,
        default=[],
        metavar="NAME=INT",
        help="override one width of the architecture, e.g. --width hidden=64 (repeatable; "
        "default: the architecture's own widths)",
    )
    parser.add_argument(
        "--epochs",
        type=positive_float,
        default=DEFAULT_EPOCHS,
        help=f"passes over the training data, > 0; fractions allowed (default: {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"mini-batch size (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=DEFAULT_LR,
        help=f"peak learning rate of the schedule (default: {DEFAULT_LR})",
    )
    parser.add_argument(
        "--schedule",
        choices=("onecycle", "cosine", "constant"),
        default=DEFAULT_SCHEDULE,
        help=f"learning-rate schedule (default: {DEFAULT_SCHEDULE})",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--augment",
        choices=("none", "shift"),
        default=DEFAULT_AUGMENT,
        help=f"training augmentation; shift = random +-2 px translation (default: {DEFAULT_AUGMENT})",
    )
    add_data_dir(parser)
    parser.add_argument(
        "--amp",
        nargs="?",
        const="auto",
        choices=("auto", "bf16", "fp16"),
        default=None,
        help="mixed precision (default: off). Bare --amp = bf16 (fp16 + GradScaler on a CUDA "
        "GPU without bf16). On a CPU only bf16, and only with native bf16 (AVX512-BF16/AMX): "
        "otherwise it is refused, since emulated bf16 was measured 37x slower than fp32",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda[:N] (default: cpu)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch intra-op threads (default: torch's choice, usually the core count)",
    )
    parser.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help=f"checkpoint name: writes OUT/checkpoints/NAME.pt (default: {DEFAULT_NAME})",
    )
    add_dist_timeout(parser)
    parser.set_defaults(func=run)


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
    from onnxship.models.errors import ModelsError
    from onnxship.models.loop import AmpMode, LrSchedule
    from onnxship.models.train import (
        DEFAULT_SGD,
        Augment,
        TrainConfig,
        default_amp,
    )

    name = str(args.name)
    if not name or Path(name).name != name or name in (".", "..") or name.startswith("."):
        raise ModelsError(
            f"--name {name!r} must be a plain file name (no folders, not hidden), e.g. teacher"
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ModelsError(f"--out {out} exists and is not a folder; pass a folder path")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    amp = AmpMode.OFF
    if args.amp == "auto":
        amp = default_amp(args.device)
    elif args.amp is not None:
        amp = AmpMode(args.amp)
    from dataclasses import replace

    cfg = TrainConfig(
        arch=args.arch,
        widths=tuple(args.widths),
        sgd=replace(
            DEFAULT_SGD,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            schedule=LrSchedule(args.schedule),
        ),
        seed=args.seed,
        augment=Augment(args.augment),
        amp=amp,
        device=args.device,
    )
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
