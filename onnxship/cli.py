"""`onnxship` command line: parses into the library's configs and calls one function.

Exit codes everywhere: 0 success / pass, 1 a regression or check failed, 2 bad input or usage.
Errors are one line on stderr; `--verbose` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from onnxship import __version__
from onnxship.commands import COMMAND_MODULES
from onnxship.commands.common import resolve_user_paths

EPILOG = """\
pipeline:  train -> export(teacher) -> prune -> distill -> export(student) -> quantize (INT8)
           -> fp16 -> eval -> bench -> manifest.json, report.md, plots/
exit codes: 0 success/pass, 1 regression or check failed, 2 bad input or usage
data root:  --data-dir, else $ONNXSHIP_DATA_DIR, else ./data (MNIST/raw/*-ubyte)
"""

# `onnxship bench compare A.json B.json` / `onnxship bench merge ...` are sub-verbs of bench;
# argparse cannot mix a positional file list with sub-commands, so they are routed here.
BENCH_SUBVERBS = {"compare": "bench-compare", "merge": "bench-merge"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnxship",
        description="Deployment export toolchain: prune + distill in PyTorch, export to ONNX, "
        "INT8 (static, calibrated) and FP16, benchmark and gate on ONNX Runtime.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"onnxship {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug output and show tracebacks"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"onnxship.commands.{name}")
        module.register(sub)
    return parser


def _route(argv: list[str]) -> list[str]:
    for i, token in enumerate(argv):
        if token.startswith("-"):
            continue
        if token == "bench" and i + 1 < len(argv) and argv[i + 1] in BENCH_SUBVERBS:
            return argv[:i] + [BENCH_SUBVERBS[argv[i + 1]]] + argv[i + 2 :]
        break
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    # Measured on the 2-core fleet: with other jobs on the box, OpenMP's default busy-wait made
    # 2-thread torch training 5-8x slower; PASSIVE cost nothing on a quiet box. It must be set
    # before torch (or onnxruntime) is imported, so here, first; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args_list = _route(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    resolve_user_paths(args)
    from onnxship.core.errors import OnnxshipError

    try:
        return int(args.func(args) or 0)
    except OnnxshipError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"onnxship {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"onnxship {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
