"""`onnxship verify DIR` (torch-free)."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxship.commands.common import add_command, add_data_dir, non_negative_int

HELP = "check a bundle: contract artifacts, checksums, content vs precision, accuracy"

DESCRIPTION = """\
Check a bundle against its manifest.json: the four contract artifacts are listed; each file's
sha256 and size match; it has no external-data references; its content matches its precision
label (int8: quantized ops, fp16: float16 weights, fp32: neither); it loads in ONNX Runtime
(CPU); and its test accuracy (MNIST, or the test .npz named by the manifest's dataset block)
re-measured with the recorded settings equals the manifest exactly when this machine's CPU, ISA
and onnxruntime match the manifest's environment - otherwise at most --max-differing test
predictions may differ from the recorded ones. The accuracy detail names this CPU's integer
class and the manifest's when they differ; --record-class keeps the accuracy measured here in
the manifest (accuracy_by_class) for gate --require-class. Exit 0 if all pass, 1 if any fails
(the failing artifacts are named), 2 on bad input. Needs only onnxruntime + numpy.
"""


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "verify", _add_arguments, run, HELP, DESCRIPTION, wrap=True)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle folder holding manifest.json")
    add_data_dir(parser)
    parser.add_argument("--skip-accuracy", action="store_true",
                        help="only checksums and loading (no MNIST needed)")  # fmt: skip
    parser.add_argument("--max-differing", type=non_negative_int, default=None,
                        help="differing test predictions allowed when the environment differs "
                        "from the manifest's (default: 0.1%% of the test set, 10 of 10,000)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    parser.add_argument("--record-class", action="store_true",
                        help="write the accuracies measured here into the manifest's "
                        "accuracy_by_class under this CPU's integer class (for gate "
                        "--require-class)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from onnxship.core.artifact import atomic_write_json
    from onnxship.errors import PipelineError
    from onnxship.verify import record_class_accuracy, verify_bundle

    if args.record_class and args.skip_accuracy:
        raise PipelineError(
            "--record-class records the accuracy measured here, --skip-accuracy measures none; "
            "drop one of them"
        )

    report = verify_bundle(
        args.bundle,
        data_dir=args.data_dir,
        check_accuracy=not args.skip_accuracy,
        max_differing=args.max_differing,
    )
    print(report.markdown())
    if args.json:
        atomic_write_json(args.json, report.to_json())
    if args.record_class:
        updated = record_class_accuracy(args.bundle, report)
        print(f"verify: recorded accuracy on this CPU's integer class for {len(updated)} artifacts")
    if report.ok:
        print(f"\nverify: {args.bundle} ok ({len(report.checks)} checks)")
        return 0
    print(f"\nverify: FAILED for {', '.join(report.failed_artifacts)}")
    return 1
