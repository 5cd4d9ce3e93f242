"""`onnxship eval MODEL.onnx`: top-1 (or fidelity) of an .onnx file through ONNX Runtime
(torch-free), on MNIST or on your own dataset .npz."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxship.commands.common import (
    add_command,
    add_data_dir,
    add_session_config,
    float_list,
    positive_int,
)

DESCRIPTION = """\
Top-1 accuracy of an .onnx file, run in an ONNX Runtime session (no torch).

--data TEST.npz: your own data, for any model (with or without onnxship metadata): 'x' (the
model's input, preprocessed float32, fed as is) and 'y' (int64 labels); a model with several
inputs takes one array per input, named after it. Without 'y', pass --reference FP32.onnx to
measure fidelity to that model instead: top-1 agreement for classifiers ([batch, classes]
output), output SQNR (dB) otherwise; max |error| is always reported. The result says which.

Without --data: MNIST (--split), the idx files read with numpy and normalised with the
mean/std in the model's metadata (onnxship.input_mean / onnxship.input_std), or --mean/--std.

The result is deterministic: the same file, data and onnxruntime give exactly the same numbers.
"""


HELP = (
    "top-1 (or fidelity to --reference) of an .onnx file through ONNX Runtime, on MNIST or --data"
)

EPILOG = (
    "exit codes: 0 evaluated, 2 bad input (model file, data, metadata, shapes, "
    "labels)\nexample: onnxship eval model.onnx --data test.npz --json eval.json"
)


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "eval", _add_arguments, run, HELP, DESCRIPTION, EPILOG)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL.onnx")
    add_data_dir(parser)
    parser.add_argument(
        "--split", choices=("test", "val", "fit", "train"), default=None,
        help="MNIST split: test (reported accuracy), val (the fixed held-out part of train), "
        "fit (train minus val) or train (default: test)",
    )  # fmt: skip
    parser.add_argument(
        "--data", type=Path, default=None, metavar="TEST.npz",
        help="your own preprocessed data: 'x' (or one array per input) and 'y' labels",
    )  # fmt: skip
    parser.add_argument(
        "--reference", type=Path, default=None, metavar="FP32.onnx",
        help="with --data: also measure fidelity to this model (needed when the npz has no 'y')",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=1000, help="default: 1000")
    parser.add_argument(
        "--provider", default=None,
        help="cpu, cuda or an ORT EP name (default: cpu, or the --session-config's EP)",
    )  # fmt: skip
    add_session_config(
        parser,
        "run the model with exactly the session options in FILE (from `onnxship bench "
        "--tune-session`); an option this onnxruntime lacks is refused",
    )
    parser.add_argument(
        "--mean", type=float_list, default=None, help="override the metadata's mean"
    )
    parser.add_argument("--std", type=float_list, default=None, help="override the metadata's std")
    parser.add_argument(
        "--json", type=Path, default=None, metavar="OUT", help="write the result as JSON"
    )


def run(args: argparse.Namespace) -> int:
    from onnxship import api
    from onnxship.core.artifact import atomic_write_json

    result = api.evaluate(
        args.model,
        data_dir=args.data_dir,
        split=args.split,
        batch_size=args.batch_size,
        provider=args.provider,
        mean=args.mean,
        std=args.std,
        data=args.data,
        reference=args.reference,
        session_config=args.session_config,
    )
    if args.json is not None:
        atomic_write_json(args.json, result)
    print(summary(args.model, result))
    return 0


def summary(model: Path, result: dict) -> str:
    parts = []
    if "top1" in result:
        parts.append(
            f"{result['split']} top-1 {result['top1']:.4f} ({result['correct']}/{result['n']})"
        )
    fid = result.get("fidelity")
    if fid:
        head = (
            f"top-1 agreement {fid['top1_agreement']:.4f}"
            if "top1_agreement" in fid
            else f"output SQNR {fid['sqnr_db']:.1f} dB"
        )
        parts.append(
            f"fidelity to {fid['reference']}: {head}, max |error| {fid['max_abs_error']:.3g} "
            f"({fid['samples']} samples)"
        )
    return f"{model}: {'; '.join(parts)} on {result['provider']}"
