"""Error types shared by every onnxship package.

`OnnxshipError` is the single base class; each package has one subclass (`ModelsError`,
`ExportError`, `CalibrateError`, `BenchError`, `PipelineError`). The CLI catches the base class,
prints the one-line message and exits with `exit_code`:

    0 success / pass, 1 a check failed, 2 bad input or usage, 3 the machine failed mid-run
    (disk full, permission denied, read-only filesystem, a file that vanished), 130 interrupted
    (SIGINT), 143 terminated (SIGTERM).

Messages name the file or artifact, what was expected, what was found and the fix.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM, what schedulers and CI runners send


class OnnxshipError(Exception):
    """Base class of every error onnxship raises on purpose.

    exit_code: 2 for bad input or usage (the default), 1 for "a check ran and failed"
    (parity, accuracy budget, verify, gate), 3 for an environment fault (`EnvironmentFault`).
    """

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class CheckFailedError(OnnxshipError):
    """A check ran to completion and its result is a failure (exit code 1)."""

    exit_code = EXIT_CHECK_FAILED


class CoreError(OnnxshipError):
    """Errors of the core: files, artifacts, records, dataset readers, model metadata."""


class TerminatedBySignal(KeyboardInterrupt):
    """SIGTERM turned into an exception (by the CLI's handler) so that it unwinds like Ctrl-C:
    every `atomic_output` removes its temporary file and nothing lands under a final name.

    A subclass of KeyboardInterrupt on purpose: library code that cleans up on Ctrl-C (tqdm,
    context managers catching BaseException) does the same on SIGTERM."""

    exit_code = EXIT_TERMINATED


# errno -> (short name of the fault, the fix). The message names the path, what was being
# written and, for a full filesystem, the free space.
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_FIXES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("disk full", "free space there (or choose another --out) and rerun"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota and rerun"),
    errno.EFBIG: (
        "file too large for this filesystem or the process's file-size limit (ulimit -f)",
        "raise the limit or write to another filesystem and rerun",
    ),
    errno.EACCES: ("permission denied", "fix the permissions (or choose another --out) and rerun"),
    errno.EPERM: (
        "operation not permitted",
        "fix the permissions (or choose another --out) and rerun",
    ),
    errno.EROFS: (
        "read-only filesystem",
        "remount it read-write or choose an --out on a writable filesystem and rerun",
    ),
    errno.ENOENT: (
        "file or folder vanished mid-run",
        "check that nothing else (a cleaner, another job) deletes files there, then rerun",
    ),
    errno.EIO: ("I/O error", "check the disk (dmesg) and rerun"),
}


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def free_space(path: str | os.PathLike[str] | None) -> int | None:
    """Free bytes on the filesystem holding `path` (or its nearest existing folder)."""
    if path is None:
        return None
    probe = Path(path)
    for candidate in (probe, *probe.parents):
        try:
            if candidate.exists():
                return shutil.disk_usage(candidate).free
        except OSError:
            return None
    return None


class EnvironmentFault(OnnxshipError):
    """The machine failed while onnxship was working: disk full, permission denied, read-only
    filesystem, a file that vanished, an I/O error. Exit code 3: nothing is half-written (every
    write is atomic), so fixing the cause and rerunning the same command resumes the run.

    Bad paths found *before* any work starts (an --out folder that does not exist or is not
    writable) stay usage errors, exit 2: the fix there is a different command line.
    """

    exit_code = EXIT_ENVIRONMENT

    def __init__(
        self,
        message: str,
        *,
        errno_: int | None = None,
        path: str | os.PathLike[str] | None = None,
        what: str | None = None,
    ) -> None:
        super().__init__(message)
        self.errno = errno_
        self.path = None if path is None else Path(path)
        self.what = what

    @classmethod
    def from_oserror(
        cls,
        exc: OSError,
        *,
        path: str | os.PathLike[str] | None = None,
        what: str | None = None,
        action: str = "writing",
    ) -> EnvironmentFault:
        """One line from an OSError: the fault, the path, what was being written (or read),
        the free space where the filesystem is full, and the fix.

        `path` is the final name the caller was producing (the OSError itself usually names a
        temporary file beside it); without it the error's own filename is used.
        """
        code = exc.errno
        name, fix = _FIXES.get(code or -1, ("operating-system error", "fix the cause and rerun"))
        target = path if path is not None else (exc.filename or None)
        detail = exc.strerror or str(exc)
        symbol = errno.errorcode.get(code, "") if code is not None else ""
        found = f"{detail} ({symbol})" if symbol else detail
        if what and target:
            subject = f"{what} {target}"
        else:
            subject = what or (str(target) if target else "a file")
        parts = [f"{name} while {action} {subject}: {found}"]
        if code in _DISK_FULL:
            where = Path(target).parent if target else None
            free = free_space(where)
            if free is not None:
                parts.append(f"{format_bytes(free)} free on the filesystem holding {where}")
        if action == "writing" and path is not None:
            parts.append("nothing was written under that name")
        scratch = tempfile.gettempdir()
        if target and Path(scratch) in Path(target).parents:
            parts.append(
                f"it is a scratch file in the temporary folder {scratch}: free space there or "
                "point TMPDIR at a larger filesystem, then rerun"
            )
        else:
            parts.append(fix)
        return cls("; ".join(parts), errno_=code, path=target, what=what)
