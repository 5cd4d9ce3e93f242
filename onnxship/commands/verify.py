"""`onnxship verify DIR` (torch-free)."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxship.commands.common import add_data_dir


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "verify",
        help="check a bundle: checksums, every file loads in ORT, accuracy equals the manifest",
        description="Check every artifact of a bundle against its manifest.json: sha256 and size, "
        "no external-data sidecar, loads in ONNX Runtime (CPU), and test accuracy (MNIST, or the "
        "test .npz named by the manifest's dataset block) "
        "re-measured with the recorded settings equals the manifest exactly. Exit 0 if all pass, "
        "1 if any fails (the failing artifacts are named), 2 on bad input. Needs only "
        "onnxruntime + numpy.",
    )
    parser.add_argument("bundle", type=Path, help="bundle folder holding manifest.json")
    add_data_dir(parser)
    parser.add_argument("--skip-accuracy", action="store_true",
                        help="only checksums and loading (no MNIST needed)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxship.core.artifact import atomic_write_json
    from onnxship.verify import verify_bundle

    report = verify_bundle(
        args.bundle, data_dir=args.data_dir, check_accuracy=not args.skip_accuracy
    )
    print(report.markdown())
    if args.json:
        atomic_write_json(args.json, report.to_json())
    if report.ok:
        print(f"\nverify: {args.bundle} ok ({len(report.checks)} checks)")
        return 0
    print(f"\nverify: FAILED for {', '.join(report.failed_artifacts)}")
    return 1
