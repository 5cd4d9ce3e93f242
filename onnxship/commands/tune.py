"""`onnxship tune BUNDLE` (on the target: onnxruntime + numpy + onnx, no torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxship.commands.common import add_command, add_config_flags, add_data_dir, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "tune",
        _add_arguments,
        run,
        help="decide on the target: re-search INT8, re-measure accuracy, pick the artifact "
        "and session options for a scenario, record it in the bundle",
        description="Run on the target machine (needs onnxruntime, numpy and onnx; no torch). "
        "Re-runs the INT8 recipe search for this machine's integer class from the bundle's FP32 "
        "files and shipped calibration sets (new files are named ARTIFACT@TARGET and written "
        "under BUNDLE/targets/TARGET/), re-measures every artifact's test accuracy here, times "
        "the artifacts within the accuracy budget against teacher-fp32 for the scenario "
        "(block-interleaved rounds, 95%% bootstrap CIs), picks the fastest - the simplest "
        "artifact when the fastest is a tie within noise - tunes threads and spinning for it, "
        "and writes BUNDLE/targets/TARGET.json plus the manifest's targets entry. A second tune "
        "on the same machine replaces its own record and no other. Exit 0 done, 2 bad input "
        "(no manifest, a missing or altered calibration set, a newer manifest schema, a "
        "provider this onnxruntime lacks, an unknown scenario).",
    )


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from onnxship.tune import TuneConfig

    parser.add_argument("bundle", type=Path, help="bundle folder holding manifest.json")
    add_config_flags(
        parser, TuneConfig(), "provider", "scenario", "batch_sizes", "budget_s", "max_drop",
        "requantize",
    )  # fmt: skip
    parser.add_argument("--val-npz", type=Path, default=None,
                        help="validation .npz for the INT8 search (default: the bundle's "
                        "data/val.npz, or MNIST's validation split under --data-dir)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="tune a copy of the bundle in this new folder (for a read-only "
                        "bundle)")  # fmt: skip
    add_data_dir(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import json

    from onnxship.tune import TuneConfig, target_from_bundle

    cfg = config_from_args(args, TuneConfig())
    path = target_from_bundle(
        args.bundle, cfg, args.out, data_dir=args.data_dir, val_npz=args.val_npz,
        progress=not args.no_progress,
    )  # fmt: skip
    record = json.loads(path.read_text())
    rec = record["recommended"]
    detail = record["ratios"].get(rec, {})
    ratio = max(detail.values(), key=lambda r: r["ratio"], default=None)  # the scenario's batch
    speed = (
        f"{ratio['ratio']:.2f}x teacher-fp32 (95% CI {ratio['ci'][0]:.2f}-{ratio['ci'][1]:.2f})"
        if ratio
        else "the reference"
    )
    print(f"target {record['id']} ({record['integer_class']}, {record['scenario']}): "
          f"recommended {rec}, {speed}, test top-1 {record['accuracy'][rec]['test_top1']:.4f}; "
          f"session {record['session_options']['chosen']}; {record['wall_s']:.1f} s")  # fmt: skip
    print(f"record: {path}")
    return 0
