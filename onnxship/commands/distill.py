"""`onnxship distill`: knowledge distillation of a pruned student (the `distill` stage).

Writes OUT/checkpoints/<name>.pt (+ .json sidecar) and OUT/stages/distill.json, whose metrics
hold `test_top1_kd` and `test_top1_no_kd` (the ablation). Module top is stdlib-only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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

DEFAULT_NAME = "student"

# The defaults named here are the library's (DistillConfig()), filled in when the help is shown.
DESCRIPTION = """\
Distill a (pruned) student from its trained teacher (Hinton et al. 2015):

    loss = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y)

The student starts from its pruned weights and trains with SGD (OneCycle) on the MNIST training
split minus the fixed validation part; the teacher is frozen (eval mode, no gradients). Every
run also trains the same student for the same steps with the same seed WITHOUT the teacher
(plain cross-entropy) and records both test accuracies (test_top1_kd, test_top1_no_kd): the
ablation that shows what distillation bought. The KD student is written.

Defaults: T={temperature:g}, alpha={alpha:g}, {sgd.epochs:g} epochs, peak LR {sgd.lr:g}, batch {sgd.batch_size}
(T and alpha chosen on the validation split, never on test). What they reach with your
teacher is measured in every run: the record holds the KD and no-KD accuracies. The teacher
must be of the student's architecture (prune the teacher to get the student). Prints one
summary line.

Data-parallel: torchrun --nproc_per_node=N -m onnxship distill ... (gloo on CPU; each rank
runs the teacher on its own shard; --batch-size is the global batch; only rank 0 reads the
checkpoints and writes). See README "Scaling up".
"""


HELP = "distill a pruned student from its teacher (+ the no-teacher ablation)"


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "distill", _add_arguments, run, HELP)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from onnxship.models.distill_config import DistillConfig

    defaults = DistillConfig()
    parser.description = DESCRIPTION.format(**vars(defaults))
    parser.add_argument(
        "student", type=Path, metavar="STUDENT.pt", help="pruned student checkpoint (.pt)"
    )
    parser.add_argument(
        "--teacher",
        type=Path,
        default=None,
        metavar="TEACHER.pt",
        help="trained teacher checkpoint of the same architecture (required)",
    )
    add_out_dir(parser)
    add_config_flags(parser, defaults)
    add_torch_threads(
        parser,
        "For the default student 1 thread is as fast as 2, and it does not stall when other "
        "processes share the cores (OpenMP spin-waits made 2 threads >10x slower then)",
    )
    add_data_dir(parser)
    add_checkpoint_name(parser, DEFAULT_NAME)
    add_dist_timeout(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from onnxship import api
    from onnxship.core import mnist
    from onnxship.models import distributed
    from onnxship.models.distill import check_pair
    from onnxship.models.distill_config import DistillConfig

    name, out = checkpoint_destination(args, DEFAULT_NAME)
    cfg = config_from_args(args, DistillConfig())
    cfg.validate()
    # A missing / mismatched teacher fails before any work; under torchrun rank 0 checks,
    # inside the stage, since ranks on other nodes may not see the files.
    if distributed.env_world_size() <= 1:
        check_pair(args.student, args.teacher)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    data_root = mnist.resolve_data_root(args.data_dir)
    with distributed.session("cpu", args.dist_timeout) as ranks:
        artifact = api.distill(
            args.student, args.teacher, out, cfg, name=name, data_dir=data_root, ranks=ranks
        )
    if not ranks.is_main:
        return 0
    m = artifact.metrics
    print(
        f"distilled {m['student_arch']} {m['student_widths']} ({100 * m['macs_ratio']:.1f} % of "
        f"the teacher's MACs, T={cfg.temperature:g}, alpha={cfg.alpha:g}, {m['steps']} steps, "
        f"seed {cfg.seed}): test top-1 KD {100 * m['test_top1_kd']:.2f} % vs no-KD "
        f"{100 * m['test_top1_no_kd']:.2f} % ({m['kd_gain_test_pp']:+.2f} pp), teacher "
        f"{100 * m['teacher_test_top1']:.2f} % -> {artifact.path}"
    )
    return 0
