"""`onnxship eval MODEL.onnx`: MNIST top-1 of an .onnx file through ONNX Runtime (torch-free)."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxship.commands.common import add_data_dir, float_list, positive_int

DESCRIPTION = """\
Top-1 accuracy of an .onnx file on MNIST, run in an ONNX Runtime session. The idx files are
read with numpy (no torch) and normalised with the mean/std stored in the model's metadata
(onnxship.input_mean / onnxship.input_std), or --mean/--std for a model without it. The result
is deterministic: the same file, data and onnxruntime give exactly the same top-1.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="MNIST top-1 of an .onnx file through ONNX Runtime",
        description=DESCRIPTION,
        epilog="exit codes: 0 evaluated, 2 bad input (model file, data folder, metadata)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, metavar="MODEL.onnx")
    add_data_dir(parser)
    parser.add_argument(
        "--split", choices=("test", "val", "fit", "train"), default="test",
        help="MNIST split: test (reported accuracy), val (the fixed held-out part of train), "
        "fit (train minus val) or train (default: test)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=1000, help="default: 1000")
    parser.add_argument(
        "--provider", default="cpu", help="cpu, cuda or an ORT EP name (default: cpu)"
    )
    parser.add_argument(
        "--mean", type=float_list, default=None, help="override the metadata's mean"
    )
    parser.add_argument("--std", type=float_list, default=None, help="override the metadata's std")
    parser.add_argument(
        "--json", type=Path, default=None, metavar="OUT", help="write the result as JSON"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxship.core.artifact import atomic_write_json
    from onnxship.runtime_bench.accuracy import evaluate_onnx

    result = evaluate_onnx(
        args.model,
        data_dir=args.data_dir,
        split=args.split,
        batch_size=args.batch_size,
        provider=args.provider,
        mean=args.mean,
        std=args.std,
    )
    if args.json is not None:
        atomic_write_json(args.json, result)
    print(
        f"{args.model}: {result['split']} top-1 {result['top1']:.4f} "
        f"({result['correct']}/{result['n']}) on {result['provider']}"
    )
    return 0
