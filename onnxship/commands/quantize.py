"""`onnxship quantize`: static INT8 with calibration data, accuracy-aware, tuned per target EP.

Writes OUT/artifacts/NAME.onnx, OUT/calibration/NAME-calib.npz and OUT/stages/quantize.json.
The module top is stdlib-only: `onnxship --help` never loads the quantizer; `onnxship quantize
--help` reads the flags off `QuantizeConfig` (onnxruntime and onnx, no torch).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from onnxship.commands.common import (
    add_command,
    add_config_flags,
    add_data_dir,
    add_out_dir,
    config_from_args,
)


def _description() -> str:
    from onnxship.calibrate.recipes import AUTO, GRAMMAR, PRESET_NAMES

    presets = textwrap.indent("\n".join(PRESET_NAMES), "  ")
    return f"""\
Quantize an FP32 .onnx to static INT8 with onnxruntime.quantization (quant_pre_process, then
quantize_static with calibration data).

Any model, your own data (no onnxship metadata needed):
  onnxship quantize MODEL.onnx --out DIR --calib-npz CALIB.npz --val-npz VAL.npz
calibrates on CALIB ('x', or one array per model input, preprocessed float32) and measures the
accuracy budget on VAL: with labels 'y', FP32 minus INT8 top-1 <= --max-drop; without labels,
fidelity to the FP32 model: top-1 agreement >= 1 - --max-drop for class scores ([batch,
classes]), output SQNR >= --min-sqnr dB otherwise. The record's `budget` says which. CALIB and
VAL the same file (or the same bytes): --calib-size rows drawn from it (seeded, class-balanced
with 'y') calibrate and the budget is measured on the other rows, at least as many; the
record's `calibration.split` gives both counts.

MNIST (the default): --calib-size images (class-balanced, seeded) from the validation part of
MNIST's *training* split - never the test split - normalised with the mean/std stored in the
model's metadata (--mean/--std override it); the budget is measured on the other validation
images. The calibration set is saved as OUT/calibration/NAME-calib.npz; its sha256 is in the
record.

--recipe {AUTO} (default) searches these recipes on the target provider: ranges calibrated once
per calibration method, each recipe scored on the budget's metric, then only those within the
budget raced against the FP32 model at --batch-sizes (one thread, --bench-seconds per batch
size; a batch size that does not fit is skipped and said), and keeps the fastest:
{presets}
Any other grid point can be named: {GRAMMAR}.
'-linear' quantizes only Gemm/MatMul and keeps convolutions in float.

Integer classes: on x86 without VNNI (AVX2, AVX-512 without VNNI, SSE) U8S8 products are summed
in int16 and can saturate. On such a CPU every preset that may saturate is replaced by its
reduce_range twin (same kernel, 7-bit weights) and U8U8 is added. --portable searches only
recipes exact on every x86 class, for an unknown target. The INT8 file and the record name the
class it was validated on, the classes its recipe is exact on and what it risks elsewhere.

If no recipe is within the budget, the accuracy fallback ranks nodes by sensitivity
(qdq_loss_debug SQNR + measured one-node-in-float variants) and keeps the worst in float
until the drop is within budget. The FP32 model is always a row of the table: if no INT8
recipe is faster on this target, the record says so (int8_faster_than_fp32: false).

Exit codes: 0 written; 1 no recipe within the accuracy budget (the best one found is
reported, nothing is written), or --require-faster and no INT8 recipe beats FP32; 2 bad input (unknown recipe, bad calibration data, missing
metadata, unknown provider, ...).
"""


HELP = "static INT8 with calibration (ORT), accuracy budget, recipe search per target"


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "quantize", _add_arguments, run, HELP)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from onnxship.calibrate.quantize_config import QuantizeConfig

    parser.description = _description()
    parser.add_argument("model", type=Path, metavar="MODEL.onnx", help="the FP32 model")
    add_out_dir(parser)
    parser.add_argument(
        "--name",
        default=None,
        help="artifact name (default: the model's file name with -fp32 replaced by -int8)",
    )
    defaults = QuantizeConfig()
    add_config_flags(parser, defaults, "recipe", "provider", "calibration")
    parser.add_argument(
        "--calib-npz", type=Path, default=None, metavar="CALIB.npz",
        help="calibrate on your own .npz of preprocessed inputs (used whole; the same file as "
        "--val-npz: --calib-size rows drawn from it)",
    )  # fmt: skip
    parser.add_argument(
        "--val-npz", type=Path, default=None, metavar="VAL.npz",
        help="measure the accuracy budget on your own .npz ('y' labels: top-1; none: fidelity "
        "to FP32)",
    )  # fmt: skip
    add_config_flags(parser, defaults, "min_sqnr_db", "max_drop")
    add_data_dir(parser)
    add_config_flags(
        parser, defaults, "mean", "std", "exclude_nodes", "exclude_op_types", "fallback",
        "portable", "require_faster", "latency",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from onnxship import api
    from onnxship.calibrate.quantize_config import QuantizeConfig

    cfg = config_from_args(args, QuantizeConfig())
    artifact = api.quantize(
        args.model,
        args.out,
        cfg,
        name=args.name,
        calib_npz=args.calib_npz,
        val_npz=args.val_npz,
        data_dir=args.data_dir,
        progress=True,
    )
    m = artifact.metrics
    lat = m["latency"]["by_batch"]
    ratios = ", ".join(
        f"b{b} {v['speedup']:.2f}x [{v['speedup_ci'][0]:.2f}, {v['speedup_ci'][1]:.2f}]"
        for b, v in lat.items()
    )
    metric = m["budget"]["metric"]
    scored = {"top1": "val top-1", "top1_agreement": "top-1 agreement with FP32"}.get(
        metric, "output SQNR (dB) vs FP32"
    )
    print(
        f"quantize: {artifact.path} ({artifact.bytes} bytes, {m['bytes_ratio']:.0%} of FP32) "
        f"recipe {m['recipe']['name']} (validated on {m['integer_class']}, exact on "
        f"{', '.join(m['safe_integer_classes'])}); {scored} on {m['val_split']}: FP32 "
        f"{m['fp32_val_top1']:.4f} -> INT8 {m['int8_val_top1']:.4f}; speed-up over FP32 "
        f"({m['latency']['statistic']}, CI) {ratios}; "
        f"faster than FP32: {'yes' if m['int8_faster_than_fp32'] else 'no'}; "
        f"{len(m['candidates']) - 1} candidates, {m['calibration']['passes']} calibration "
        f"pass(es), in {m['search_wall_s']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MiB"
    )
    if not m["int8_faster_than_fp32"]:
        print(f"quantize: note: {m['int8_faster_than_fp32_why']}")
    return 0
