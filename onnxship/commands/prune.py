"""`onnxship prune`: shrink a trained checkpoint (the `prune` stage).

Writes OUT/checkpoints/<name>.pt (+ .json sidecar with the new widths) and OUT/stages/prune.json.
Module top is stdlib-only so `onnxship --help` never imports torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxship.commands.common import (
    add_data_dir,
    add_out_dir,
    non_negative_int,
    number,
    positive_float,
    positive_int,
)

# Mirrors models.prune.DEFAULT_MACS_BUDGET / DEFAULT_SPARSITY (literal here: --help is torch-free;
# tests/test_cli_prune_distill.py checks they agree).
DEFAULT_MACS_BUDGET = 0.1
DEFAULT_SPARSITY = 0.8
DEFAULT_NAME = "student-pruned"

DESCRIPTION = f"""\
Prune a trained checkpoint.

structured (default): remove whole conv filters and hidden units, ranked by the L1/L2 norm of
their weights (BatchNorm-folded where a BN follows the conv), and rewire every consumer, giving
a dense, smaller model of the same architecture that is faster and smaller once exported.
Target: --macs-budget F (default {DEFAULT_MACS_BUDGET}: at most {DEFAULT_MACS_BUDGET:.0%} of the
source's multiply-accumulates; widths are shrunk proportionally, then grown greedily into what
is left of the budget) or --ratios (fraction of each width to keep). Accuracy drops sharply
right after pruning: win it back with `onnxship distill` (or --finetune-epochs here).

unstructured: zero single weights by magnitude (torch.nn.utils.prune, baked in), globally or per
layer, to --sparsity (default {DEFAULT_SPARSITY}) or below --threshold. Tensors keep their full
size: dense inference is NOT faster and the .pt is NOT smaller; the benefit is a smaller
gzip-compressed download, which the stage record reports with the sparsity per layer.

Validation accuracy is measured before and right after pruning ('val' split; MNIST training
split only). Prints one summary line.
"""


def parse_ratios(text: str) -> float | dict[str, float]:
    """'0.25' (every width) or 'conv_channels=0.25,hidden=0.3'. Range is checked by the library."""
    text = text.strip()
    if "=" not in text:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a fraction like 0.25 or NAME=FRACTION pairs like "
                f"conv_channels=0.25,hidden=0.3, got {text!r}"
            ) from None
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected NAME=FRACTION pairs like conv_channels=0.25,hidden=0.3, got {text!r}"
            ) from None
    return out


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "prune",
        help="prune a checkpoint: structured (smaller dense model) or unstructured (sparse)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, metavar="CKPT", help="trained checkpoint (.pt)")
    add_out_dir(parser)
    parser.add_argument(
        "--method",
        choices=("structured", "unstructured"),
        default="structured",
        help="structured removes channels (default); unstructured zeroes single weights",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--macs-budget",
        type=number,
        default=None,
        metavar="F",
        help=f"structured: MACs of the result as a fraction of the source's, in (0, 1) "
        f"(default: {DEFAULT_MACS_BUDGET})",
    )
    target.add_argument(
        "--ratios",
        type=parse_ratios,
        default=None,
        metavar="R",
        help="structured: fraction of each width to KEEP, in (0, 1): one number for every width "
        "(0.25) or NAME=R pairs (conv_channels=0.25,hidden=0.3; unnamed widths stay whole)",
    )
    target.add_argument(
        "--sparsity",
        type=number,
        default=None,
        metavar="S",
        help=f"unstructured: fraction of weights to zero, in (0, 1) (default: {DEFAULT_SPARSITY})",
    )
    target.add_argument(
        "--threshold",
        type=number,
        default=None,
        metavar="T",
        help="unstructured: zero every weight with |w| <= T",
    )
    parser.add_argument(
        "--importance",
        choices=("l1", "l2"),
        default="l1",
        help="structured: norm that ranks channels (default: l1)",
    )
    parser.add_argument(
        "--scope",
        choices=("global", "per_layer"),
        default="global",
        help="unstructured --sparsity: one ranking over all layers, or the same sparsity in "
        "each (default: global)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=1,
        help="iterative schedule: prune in this many steps (default: 1)",
    )
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
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="fine-tune seed (default: 0)"
    )
    add_data_dir(parser)
    parser.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help=f"checkpoint name: writes OUT/checkpoints/NAME.pt (default: {DEFAULT_NAME})",
    )
    parser.set_defaults(func=run)


def check_name(name: str, example: str) -> str:
    from onnxship.models.errors import ModelsError

    if not name or Path(name).name != name or name in (".", "..") or name.startswith("."):
        raise ModelsError(
            f"--name {name!r} must be a plain file name (no folders, not hidden), e.g. {example}"
        )
    return name


def run(args: argparse.Namespace) -> int:
    from onnxship import api
    from onnxship.core import mnist
    from onnxship.models.errors import ModelsError
    from onnxship.models.loop import SgdConfig
    from onnxship.models.prune import (
        Importance,
        PruneConfig,
        PruneMethod,
        PruneScope,
    )

    name = check_name(str(args.name), DEFAULT_NAME)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ModelsError(f"--out {out} exists and is not a folder; pass a folder path")
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
    cfg = PruneConfig(
        method=method,
        importance=Importance(args.importance),
        width_ratios=args.ratios,
        macs_budget=macs_budget,
        sparsity=sparsity,
        threshold=args.threshold,
        scope=PruneScope(args.scope),
        steps=args.steps,
        finetune=(
            SgdConfig(epochs=args.finetune_epochs, lr=args.finetune_lr)
            if args.finetune_epochs is not None
            else None
        ),
        seed=args.seed,
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
