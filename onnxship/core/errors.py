"""Error types shared by every onnxship package.

`OnnxshipError` is the single base class; each package has one subclass (`ModelsError`,
`ExportError`, `CalibrateError`, `BenchError`, `PipelineError`). The CLI catches the base class,
prints the one-line message and exits with `exit_code` (2 = bad input or usage, 1 = a check
failed). Messages name the file or artifact, what was expected, what was found and the fix.
"""

from __future__ import annotations


class OnnxshipError(Exception):
    """Base class of every error onnxship raises on purpose.

    exit_code: 2 for bad input or usage (the default), 1 for "a check ran and failed"
    (parity, accuracy budget, verify, gate).
    """

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class CheckFailedError(OnnxshipError):
    """A check ran to completion and its result is a failure (exit code 1)."""

    exit_code = 1


class CoreError(OnnxshipError):
    """Errors of the core: files, artifacts, records, dataset readers, model metadata."""
