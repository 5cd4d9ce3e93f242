"""`onnxship export`: a checkpoint -> one self-contained, checked .onnx (FP32)."""

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
Export a checkpoint (.pt with its .json sidecar) to ONNX: input 'input' [batch,1,28,28]
float32, output 'logits' [batch,10], symbolic batch dimension, BatchNorm folded, weights
inline (one file, no .onnx.data), onnxship metadata (normalisation, labels, architecture,
source sha256). Before the file is renamed into place it must pass onnx.checker
(full_check), strict shape inference, and parity with PyTorch in ONNX Runtime on MNIST test
images at batch 1 and 250 (max |dlogit| <= 1e-4, 100 % argmax agreement).
Writes OUT/artifacts/NAME.onnx and OUT/stages/RECORD.json.
"""

EPILOG = """\
exit codes: 0 exported and checked; 1 parity check failed; 2 bad input (checkpoint,
opset onnxruntime cannot run, unwritable output, exporter failure)
example: onnxship export runs/a/checkpoints/teacher.pt --out runs/a --name teacher-fp32
"""


HELP = "checkpoint -> one checked FP32 .onnx (dynamo exporter, parity vs PyTorch)"


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "export", _add_arguments, run, HELP, DESCRIPTION, EPILOG)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from onnxship.export.onnx_export import ExportConfig

    parser.add_argument(
        "checkpoint", type=Path, help="checkpoint .pt (its .json sidecar beside it)"
    )
    add_out_dir(parser)
    add_artifact_names(
        parser,
        "artifact name: writes OUT/artifacts/NAME.onnx (default: <checkpoint stem>-fp32)",
        "export",
    )
    defaults = ExportConfig()
    add_config_flags(parser, defaults, "opset", "exporter", "optimize", "parity_samples")
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    from onnxship import api
    from onnxship.export.onnx_export import ExportConfig

    cfg = config_from_args(args, ExportConfig())
    artifact = api.export(
        args.checkpoint, args.out, cfg, data_dir=args.data_dir, **artifact_names(args)
    )
    m = artifact.metrics
    parity = m["parity"]
    fallback = (
        f" (fallback: {m['exporter_fallback_reason']})" if m["exporter_fallback_reason"] else ""
    )
    print(
        f"wrote {artifact.path} ({artifact.bytes} bytes, opset {m['opset']}, "
        f"{m['exporter']} exporter{fallback}, {m['export_wall_s']:.1f} s)"
    )
    print(
        f"parity vs PyTorch on {parity['samples']} test samples at batch "
        f"{','.join(map(str, parity['batch_sizes']))}: max |dlogit| "
        f"{parity['max_abs_logit_diff']:.2e}, argmax agreement {parity['argmax_agreement']:.2%}"
    )
    print(f"record: {record_path(args)}")
    return 0
