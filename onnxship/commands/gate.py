"""`onnxship gate` (torch-free, ORT-free)."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxship.commands.common import add_command

HELP = "CI gate: per-artifact accuracy against a committed baseline, JUnit XML"

DESCRIPTION = """\
Compare each artifact's test top-1 in a manifest with a baseline file ({"artifacts":
{"student-int8": {"test_top1": 0.985, "max_drop": 0.003}}}). An artifact fails when it is
missing or below test_top1 - max_drop. Prints a Markdown summary; exit 0 pass, 1 any failure, 2
bad input. Latency is not gated unless --check-latency enables the baseline's latency_ratios
(ratios between artifacts of the same run). --require-class avx2,avx512_vnni also requires each
baseline artifact's accuracy measured on each named CPU integer class (the manifest's
accuracy_by_class, e.g. from `verify --record-class` on that CPU) to meet the baseline.
"""


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "gate", _add_arguments, run, HELP, DESCRIPTION, wrap=True)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, required=True, help="DIR/manifest.json")
    parser.add_argument("--baseline", type=Path, required=True,
                        help="baseline JSON, e.g. baselines/mnist_simplecnn.json")  # fmt: skip
    parser.add_argument("--junit", type=Path, default=None,
                        help="write JUnit XML, one test case per artifact")  # fmt: skip
    parser.add_argument("--check-latency", action="store_true",
                        help="also enforce the baseline's latency_ratios (opt-in: noisy machines)")  # fmt: skip
    parser.add_argument("--require-class", default=None, metavar="CLASSES",
                        help="comma-separated CPU integer classes (e.g. avx2,avx512_vnni) each "
                        "baseline artifact must have a measured accuracy on, meeting the "
                        "baseline; one JUnit case per artifact and class")  # fmt: skip
    parser.add_argument("--require-targets", type=Path, default=None, metavar="FILE",
                        help='JSON {"targets": ["<target id or integer class>", ...]}: fail '
                        "when one has no `onnxship tune` record in the manifest, or its "
                        "accuracy measured there is below the baseline")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from onnxship.gate import gate, markdown, write_junit

    cases = gate(
        args.manifest,
        args.baseline,
        check_latency=args.check_latency,
        require_classes=args.require_class,
        require_targets=args.require_targets,
    )
    print(markdown(cases))
    if args.junit:
        write_junit(cases, args.junit)
    failed = [c.name for c in cases if not c.ok]
    if failed:
        print(f"gate: FAILED: {', '.join(failed)}")
        return 1
    return 0
