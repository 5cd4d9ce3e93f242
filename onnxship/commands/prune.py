"""`onnxship prune`: shrink a trained checkpoint (the `prune` stage).

Writes OUT/checkpoints/<name>.pt (+ .json sidecar with the new widths) and OUT/stages/prune.json.
Module top is stdlib-only so `onnxship --help` never imports torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxship.commands.common import (
    add_checkpoint_name,
    add_command,
    add_config_flags,
    add_data_dir,
    add_out_dir,
    checkpoint_destination,
    config_from_args,
    positive_float,
)

DEFAULT_NAME = "student-pruned"

# The defaults named here are the library's (models.prune_config), filled in when the help is shown.
DESCRIPTION = """\
Prune a trained checkpoint.

structured (default): remove whole conv filters and hidden units, ranked by the L1/L2 norm of
their weights (BatchNorm-folded where a BN follows the conv), and rewire every consumer, giving
a dense, smaller model of the same architecture that is faster and smaller once exported.
Target: --macs-budget F (default {macs_budget}: at most {macs_budget:.0%} of the
source's multiply-accumulates; widths are shrunk proportionally, then grown greedily into what
is left of the budget) or --ratios (fraction of each width to keep). Accuracy drops sharply
right after pruning: win it back with `onnxship distill` (or --finetune-epochs here).

unstructured: zero single weights by magnitude (torch.nn.utils.prune, baked in), globally or per
layer, to --sparsity (default {sparsity}) or below --threshold. Tensors keep their full
size: dense inference is NOT faster and the .pt is NOT smaller; the benefit is a smaller
gzip-compressed download, which the stage record reports with the sparsity per layer.

Validation accuracy is measured before and right after pruning ('val' split; MNIST training
split only). Prints one summary line.
"""


HELP = "prune a checkpoint: structured (smaller dense model) or unstructured (sparse)"


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "prune", _add_arguments, run, HELP)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from onnxship.models import prune_config

    parser.description = DESCRIPTION.format(
        macs_budget=prune_config.DEFAULT_MACS_BUDGET, sparsity=prune_config.DEFAULT_SPARSITY
    )
    parser.add_argument("checkpoint", type=Path, metavar="CKPT", help="trained checkpoint (.pt)")
    add_out_dir(parser)
    defaults = prune_config.PruneConfig()
    add_config_flags(parser, defaults, "method")
    target = parser.add_mutually_exclusive_group()
    add_config_flags(target, defaults, "macs_budget", "width_ratios", "sparsity", "threshold")
    add_config_flags(parser, defaults, "importance", "scope", "steps")
    parser.add_argument(
        "--finetune-epochs",
        type=positive_float,
        default=None,
        metavar="E",
        help="fine-tune this many epochs (SGD, OneCycle) on the 'fit' split after each step "
        "(default: no fine-tune; distillation follows)",
    )
    parser.add_argument(
        "--finetune-lr", type=positive_float, default=0.05, help="fine-tune peak LR (default: 0.05)"
    )
    add_config_flags(parser, defaults, "seed")
    add_data_dir(parser)
    add_checkpoint_name(parser, DEFAULT_NAME)


def run(args: argparse.Namespace) -> int:
    from onnxship import api
    from onnxship.core import mnist
    from onnxship.models.errors import ModelsError
    from onnxship.models.prune_config import (
        DEFAULT_MACS_BUDGET,
        DEFAULT_SPARSITY,
        PruneConfig,
        PruneMethod,
    )
    from onnxship.models.sgd_config import SgdConfig

    name, out = checkpoint_destination(args, DEFAULT_NAME)
    method = PruneMethod(args.method)
    structured = method is PruneMethod.STRUCTURED
    if structured and (args.sparsity is not None or args.threshold is not None):
        raise ModelsError("--sparsity/--threshold need --method unstructured")
    if not structured and (args.macs_budget is not None or args.ratios is not None):
        raise ModelsError("--macs-budget/--ratios need --method structured (the default)")
    # Resolve the defaults here so the stage record's config shows the target actually used.
    macs_budget, sparsity = args.macs_budget, args.sparsity
    if structured and args.ratios is None and macs_budget is None:
        macs_budget = DEFAULT_MACS_BUDGET
    if not structured and args.threshold is None and sparsity is None:
        sparsity = DEFAULT_SPARSITY
    finetune = None
    if args.finetune_epochs is not None:
        finetune = SgdConfig(epochs=args.finetune_epochs, lr=args.finetune_lr)
    cfg = config_from_args(
        args, PruneConfig(), macs_budget=macs_budget, sparsity=sparsity, finetune=finetune
    )
    cfg.validate()  # bad values fail here, before any file is read or folder created
    src = Path(args.checkpoint)
    if not src.is_file():
        raise ModelsError(f"checkpoint {src} does not exist; train one with `onnxship train`")

    artifact = api.prune(src, out, cfg, name=name, data_dir=mnist.resolve_data_root(args.data_dir))
    m = artifact.metrics
    summary = (
        f"pruned {m['arch']} ({method.value}) {_fmt_widths(m['widths_before'])} -> "
        f"{_fmt_widths(m['widths_after'])}: {m['macs_before']:,} -> {m['macs_after']:,} MACs "
        f"({100 * m['macs_ratio']:.1f} %), {m['params_before']:,} -> {m['params_after']:,} params"
    )
    if not structured:
        summary += (
            f", sparsity {100 * m['sparsity']:.1f} %, gzip {m['gzip_bytes_before']:,} -> "
            f"{m['gzip_bytes_after']:,} bytes"
        )
    summary += (
        f"; val top-1 {100 * m['val_top1_before']:.2f} % -> {100 * m['val_top1_pruned']:.2f} %"
    )
    if "val_top1_finetuned" in m:
        summary += f" -> {100 * m['val_top1_finetuned']:.2f} % fine-tuned"
    print(f"{summary} -> {artifact.path}")
    return 0


def _fmt_widths(widths: dict[str, int]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in widths.items()) + "}"
