"""`onnxship` command line: parses into the library's configs and calls one function.

Exit codes everywhere: 0 success / pass, 1 a regression or check failed, 2 bad input or usage,
3 the machine failed mid-run (disk full, permission denied, read-only filesystem, a file that
vanished; nothing is half-written, rerun to resume), 130 interrupted (SIGINT), 143 terminated
(SIGTERM). Errors are one line on stderr; `--verbose` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from onnxship import __version__
from onnxship.commands import COMMAND_MODULES
from onnxship.commands.common import CommandParser, resolve_user_paths

EPILOG = """\
pipeline:  train -> export(teacher) -> prune -> distill -> export(student) -> quantize (INT8)
           -> fp16 -> search (+ its export, INT8, FP16) -> eval -> bench -> manifest.json,
           report.md, plots/
exit codes: 0 success/pass, 1 regression or check failed, 2 bad input or usage,
           3 environment fault mid-run (disk full, permission denied, read-only filesystem,
           file vanished: nothing half-written, rerun to resume),
           130 interrupted (SIGINT), 143 terminated (SIGTERM); temporary files are removed
data root:  --data-dir, else $ONNXSHIP_DATA_DIR, else ./data (MNIST/raw/*-ubyte)
"""

RESUME_HINT = "temporary files removed, nothing half-written; rerun the same command to resume"

# `onnxship bench compare A.json B.json` / `onnxship bench merge ...` are sub-verbs of bench;
# argparse cannot mix a positional file list with sub-commands, so they are routed here.
BENCH_SUBVERBS = {"compare": "bench-compare", "merge": "bench-merge"}
# The commands that run data-parallel under torchrun (models.distributed); the others would
# be N copies writing the same files, so they are refused there.
DISTRIBUTED_COMMANDS = ("train", "distill", "run")


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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
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


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    """While the command runs, SIGTERM raises `TerminatedBySignal` (a KeyboardInterrupt) in the
    main thread, so it unwinds exactly like Ctrl-C: `atomic_output` removes its temporary files
    and the CLI prints one line. Schedulers and CI runners stop jobs with SIGTERM.

    Only the first SIGTERM raises; later ones (a runner repeating itself) are ignored while the
    first unwinds. The previous handler is restored afterwards (main() is called in-process by
    tests and embedding programs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from onnxship.core.errors import TerminatedBySignal

    fired = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        raise TerminatedBySignal(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    # Measured on the 2-core fleet: with other jobs on the box, OpenMP's default busy-wait made
    # 2-thread torch training 5-8x slower; PASSIVE cost nothing on a quiet box. It must be set
    # before torch (or onnxruntime) is imported, so here, first; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from onnxship.core.allocator import keep_freed_memory

    keep_freed_memory()  # freed tensors are reused, not faulted in again (module docstring)
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
    world = os.environ.get("WORLD_SIZE", "1").strip()
    if world not in ("", "1") and args.command not in DISTRIBUTED_COMMANDS:
        print(
            f"onnxship {args.command}: error: launched as one of WORLD_SIZE={world} processes "
            f"(torchrun), but only {', '.join(DISTRIBUTED_COMMANDS)} run data-parallel; run "
            f"`onnxship {args.command}` as a single process",
            file=sys.stderr,
        )
        return 2
    resolve_user_paths(args)
    from onnxship.core.errors import (
        EXIT_INTERRUPTED,
        EXIT_TERMINATED,
        EnvironmentFault,
        OnnxshipError,
        TerminatedBySignal,
    )

    def fail(message: str) -> None:
        if args.verbose:
            traceback.print_exc()
        print(f"onnxship {args.command}: {message}", file=sys.stderr, flush=True)

    try:
        with _sigterm_as_exception():
            return int(args.func(args) or 0)
    except OnnxshipError as exc:
        fail(f"error: {exc}")
        return exc.exit_code
    except OSError as exc:
        # Last resort: an OSError that no writer translated (a read of a file that vanished,
        # a library's scratch file in $TMPDIR) is still one line with the environment code.
        fault = EnvironmentFault.from_oserror(exc, action=_action(exc))
        fail(f"error: {fault}")
        return fault.exit_code
    except TerminatedBySignal:
        fail(f"terminated (SIGTERM); {RESUME_HINT}")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        fail(f"interrupted (SIGINT); {RESUME_HINT}")
        return EXIT_INTERRUPTED


def _action(exc: OSError) -> str:
    """Writers translate their own OSErrors (`atomic_output`); what reaches the CLI comes from
    a read (a file that vanished) or a library's own scratch file (a full $TMPDIR)."""
    import errno

    if exc.errno == errno.ENOENT:
        return "reading"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
        return "writing"
    return "accessing"


if __name__ == "__main__":
    sys.exit(main())
