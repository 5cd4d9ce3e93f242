"""`onnxship quantize`: static INT8 with calibration data, accuracy-aware, tuned per target EP.

Writes OUT/artifacts/NAME.onnx, OUT/calibration/NAME-calib.npz and OUT/stages/quantize.json.
The module top is stdlib-only (plus `calibrate.recipes`, itself stdlib-only) so `--help` stays
fast and torch-free.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from onnxship.commands.common import (
    add_data_dir,
    add_out_dir,
    float_list,
    fraction,
    int_list,
    positive_float,
    positive_int,
)

DEFAULT_CALIB_SIZE = 256  # mirrors calibrate.dataset.CalibrationConfig (tests check they agree)
DEFAULT_CALIB_BATCH = 32
DEFAULT_MAX_DROP = 0.003
DEFAULT_MIN_SQNR = 30.0  # mirrors calibrate.quantize.QuantizeConfig.min_sqnr_db
DEFAULT_BENCH_SECONDS = 5.0  # mirrors calibrate.quantize.LatencyConfig.seconds_per_batch_size


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
classes]), output SQNR >= --min-sqnr dB otherwise. The record's `budget` says which.

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


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "quantize",
        help="static INT8 with calibration (ORT), accuracy budget, recipe search per target",
        description=_description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, metavar="MODEL.onnx", help="the FP32 model")
    add_out_dir(parser)
    parser.add_argument(
        "--name",
        default=None,
        help="artifact name (default: the model's file name with -fp32 replaced by -int8)",
    )
    parser.add_argument(
        "--recipe", default="auto", help="'auto' (search, the default) or a recipe name"
    )
    parser.add_argument(
        "--provider",
        default="cpu",
        help="target EP for accuracy and latency: cpu, cuda or an EP name (default: cpu)",
    )
    parser.add_argument(
        "--calib-size",
        type=positive_int,
        default=DEFAULT_CALIB_SIZE,
        help=f"calibration images from the validation split (default: {DEFAULT_CALIB_SIZE})",
    )
    parser.add_argument(
        "--calib-batch",
        type=positive_int,
        default=DEFAULT_CALIB_BATCH,
        help=f"images per calibration batch (default: {DEFAULT_CALIB_BATCH})",
    )
    parser.add_argument(
        "--calib-npz", type=Path, default=None, metavar="CALIB.npz",
        help="calibrate on your own .npz of preprocessed inputs (used whole)",
    )  # fmt: skip
    parser.add_argument(
        "--val-npz", type=Path, default=None, metavar="VAL.npz",
        help="measure the accuracy budget on your own .npz ('y' labels: top-1; none: fidelity "
        "to FP32)",
    )  # fmt: skip
    parser.add_argument(
        "--min-sqnr", type=positive_float, default=DEFAULT_MIN_SQNR, metavar="DB",
        help="budget without labels for outputs that are not class scores: INT8 output SQNR "
        f"vs FP32, in dB (default: {DEFAULT_MIN_SQNR:g})",
    )  # fmt: skip
    parser.add_argument(
        "--max-drop",
        type=fraction,
        default=DEFAULT_MAX_DROP,
        help="accuracy budget: FP32 minus INT8 validation top-1, as a fraction "
        f"(default: {DEFAULT_MAX_DROP} = 0.3 pp)",
    )
    add_data_dir(parser)
    parser.add_argument("--mean", type=float_list, default=None, help="input mean per channel")
    parser.add_argument("--std", type=float_list, default=None, help="input std per channel")
    parser.add_argument(
        "--exclude-node",
        action="append",
        default=[],
        metavar="NODE",
        help="keep this node in float (repeatable)",
    )
    parser.add_argument(
        "--exclude-op-type",
        action="append",
        default=[],
        metavar="OP",
        help="keep every node of this op type in float (repeatable), e.g. Conv",
    )
    parser.add_argument(
        "--no-fallback",
        action="store_true",
        help="do not keep sensitive nodes in float when no recipe meets the budget",
    )
    parser.add_argument(
        "--portable",
        action="store_true",
        help="search only recipes exact on every x86 integer class (reduce_range or U8U8), for "
        "an unknown target CPU; by default the grid is the one exact on this CPU's class",
    )
    parser.add_argument(
        "--require-faster",
        action="store_true",
        help="exit 1 (writing nothing) if no INT8 recipe beats FP32 at every batch size",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int_list,
        default=(1, 64),
        help="batch sizes of the latency comparison (default: 1,64)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="intra-op threads of the latency comparison (default: 1)",
    )
    parser.add_argument(
        "--bench-seconds",
        type=positive_float,
        default=DEFAULT_BENCH_SECONDS,
        help="latency budget per batch size, in seconds: the race of the candidates within "
        "the accuracy budget against FP32, plus as much again for the winner's re-run; a batch "
        "size that does not fit is skipped and said in the record "
        f"(default: {DEFAULT_BENCH_SECONDS})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxship import api
    from onnxship.calibrate.dataset import CalibrationConfig
    from onnxship.calibrate.quantize import LatencyConfig, QuantizeConfig

    cfg = QuantizeConfig(
        recipe=args.recipe,
        provider=args.provider,
        max_drop=args.max_drop,
        calibration=CalibrationConfig(size=args.calib_size, batch_size=args.calib_batch),
        latency=LatencyConfig(
            batch_sizes=tuple(args.batch_sizes),
            threads=args.threads,
            seconds_per_batch_size=args.bench_seconds,
        ),
        exclude_nodes=tuple(args.exclude_node),
        exclude_op_types=tuple(args.exclude_op_type),
        mean=args.mean,
        std=args.std,
        fallback=not args.no_fallback,
        require_faster=args.require_faster,
        min_sqnr_db=args.min_sqnr,
        portable=args.portable,
    )
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
