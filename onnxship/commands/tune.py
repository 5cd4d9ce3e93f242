"""`onnxship tune BUNDLE` (on the target: onnxruntime + numpy + onnx, no torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxship.commands.common import add_command, add_config_flags, config_from_args

HELP = (
    "decide on the target: re-search INT8, re-measure accuracy, pick the artifact "
    "and session options for a scenario, record it in the bundle"
)

DESCRIPTION = """\
Run on the target machine (needs onnxruntime, numpy and onnx; no torch, no MNIST). Re-runs the
INT8 recipe search for this machine's integer class from the bundle's FP32 files, calibrated on
the shipped calibration sets (the seeded draw from BUNDLE/data/val.npz) with the accuracy budget
measured on the other rows of data/val.npz (new files are named ARTIFACT@TARGET and written
under BUNDLE/targets/TARGET/), re-measures every artifact's test accuracy here on
BUNDLE/data/test.npz, times the artifacts within the accuracy budget against
teacher-fp32 for the scenario (block-interleaved rounds, 95%% bootstrap CIs), picks the fastest
- the simplest artifact when the fastest is a tie within noise - tunes threads and spinning for
it, and writes BUNDLE/targets/TARGET.json plus the manifest's targets entry. A second tune on
the same machine replaces its own record and no other. The data files are checked against the
sha256 the bundle recorded for them before anything is written. Exit 0 done, 2 bad input (no
manifest, a missing or altered calibration set, data/val.npz or data/test.npz, a newer manifest
schema, a provider this onnxruntime lacks, an unknown scenario).
"""


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "tune", _add_arguments, run, HELP, DESCRIPTION, wrap=True)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from onnxship.tune import TuneConfig

    parser.add_argument("bundle", type=Path, help="bundle folder holding manifest.json")
    add_config_flags(
        parser, TuneConfig(), "provider", "scenario", "batch_sizes", "budget_s", "max_drop",
        "requantize",
    )  # fmt: skip
    parser.add_argument("--val-npz", type=Path, default=None,
                        help="your own validation .npz to measure the INT8 accuracy budget on, "
                        "calibrating on the shipped calibration sets (default: the other rows "
                        "of the bundle's data/val.npz)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="tune a copy of the bundle in this new folder (for a read-only "
                        "bundle)")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="only for a bundle made before bundles carried data/val.npz and "
                        "data/test.npz (MNIST, onnxship 0.1.0): the MNIST root holding "
                        "MNIST/raw/*-ubyte (default: $ONNXSHIP_DATA_DIR, else ./data); other "
                        "bundles are measured on their own data")  # fmt: skip
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
