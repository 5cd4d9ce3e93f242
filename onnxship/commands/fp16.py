"""`onnxship fp16`: an FP32 .onnx -> an FP16 .onnx, checked and compared with the FP32 one."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxship.commands.common import (
    add_artifact_names,
    add_command,
    add_config_flags,
    add_data_dir,
    add_out_dir,
    artifact_names,
    config_from_args,
    record_path,
)

DESCRIPTION = """\
Convert an FP32 .onnx (from `onnxship export`) to FP16 with onnxruntime's float16
converter: float32 inputs/outputs kept by default, --op-block-list op types kept in float32
(added to the converter's default list). Weights beyond float16's range (|w| > 65504) are an
error naming the tensors, never silently clipped; tiny weights (< 2^-24) are reported. The
graph is topologically sorted (onnx-ir) so it passes onnx.checker (full_check) and strict
shape inference. Parity with the FP32 model in ONNX Runtime at batch 1 and 1000, on your own
data with --data PARITY.npz (any model, onnxship metadata or not: 'x' or one array per input,
preprocessed, fed as is) or else on the MNIST test set (10,000 images, normalised with the
model's metadata): argmax agreement >= --min-agreement (99.9 %) for class scores
([batch, classes]), output SQNR >= --min-sqnr dB for any other output; max |d| reported.
Writes OUT/artifacts/NAME.onnx and OUT/stages/RECORD.json.
"""

EPILOG = """\
exit codes: 0 converted and checked; 1 parity failed or a weight overflows float16;
2 bad input (missing/corrupt/non-FP32 .onnx, unwritable output)
example: onnxship fp16 runs/a/artifacts/student-fp32.onnx --out runs/a --name student-fp16
"""


HELP = "FP32 .onnx -> FP16 .onnx (float32 I/O kept, parity vs FP32 on test data)"


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "fp16", _add_arguments, run, HELP, DESCRIPTION, EPILOG)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from onnxship.export.fp16 import Fp16Config

    parser.add_argument("model", type=Path, help="FP32 .onnx (onnxship's export or your own)")
    add_out_dir(parser)
    add_artifact_names(
        parser,
        "artifact name: OUT/artifacts/NAME.onnx (default: MODEL's stem with -fp32 -> -fp16)",
        "fp16",
    )
    defaults = Fp16Config()
    add_config_flags(
        parser, defaults, "op_block_list", "keep_io_types", "min_agreement", "min_sqnr_db"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PARITY.npz",
        help="parity data: your own preprocessed inputs ('x' or one array per input)",
    )
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    from onnxship import api
    from onnxship.export.fp16 import Fp16Config

    cfg = config_from_args(args, Fp16Config())
    artifact = api.fp16(
        args.model, args.out, cfg, data_dir=args.data_dir, data=args.data, **artifact_names(args)
    )
    m = artifact.metrics
    parity = m["parity"]
    print(
        f"wrote {artifact.path} ({artifact.bytes} bytes = {m['bytes_ratio']:.1%} of the FP32 "
        f"file, target <= {m['bytes_ratio_target']:.0%})"
    )
    where = f"samples of {args.data}" if args.data is not None else "MNIST test images"
    if parity.get("metric") == "sqnr_db":
        result = f"output SQNR {parity['sqnr_db']:.1f} dB, max |d| {parity['max_abs_error']:.2e}"
    else:
        result = (
            f"argmax agreement {parity['argmax_agreement']:.2%}, max |dlogit| "
            f"{parity['max_abs_logit_diff']:.2e}"
        )
    print(
        f"parity vs FP32 on {parity['samples']} {where} at batch "
        f"{','.join(map(str, parity['batch_sizes']))}: {result}"
    )
    if m["fp16_range"]["underflow_values"]:
        print(
            f"note: {m['fp16_range']['underflow_values']} weight value(s) below 2^-24 were "
            "raised to ±2^-24 (see the record's fp16_range)"
        )
    print(f"record: {record_path(args)}")
    return 0
