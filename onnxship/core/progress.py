"""Progress of long work: a bar on a terminal, plain lines in a log.

Every progress display of onnxship goes through `progress()`. Where stderr is a terminal it is
a tqdm bar that appears only after `delay` seconds (a command that fails at once prints its
one-line error, not a `0%|` bar first) and is erased when the work ends. Anywhere else (a CI
log, `onnxship run > run.log 2>&1`) there are no carriage-return frames: one plain line per
`interval` seconds while the work runs, and one when it ends, the way pip and tqdm's
`disable=None` keep logs readable. Torch-free and tqdm-optional (a deployment target without
tqdm gets the plain lines).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any, Protocol

LOG_INTERVAL_S = 60.0  # one line per minute of long work in a log
TTY_DELAY_S = 0.5  # a bar shows only for work that has run this long


class Progress(Protocol):
    """What callers use: the subset of tqdm's interface both displays implement."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, **values: Any) -> Any: ...

    def close(self) -> Any: ...

    def __enter__(self) -> Progress: ...

    def __exit__(self, *exc: object) -> Any: ...


class Silent:
    """No display (progress turned off, or not the rank that reports)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class LogLines:
    """Plain lines for a log: `desc: n/total unit (elapsed)` once per `interval` seconds while
    updates come, and a last line with the total wall time when the work ends. Work that ends
    in an exception prints nothing more (its error is the line the user needs)."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        *,
        stream: IO[str],
        interval: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream, self.interval, self.clock = stream, interval, clock
        self.n = 0
        self.postfix = ""
        self.started = self.last = clock()
        self.closed = False

    def _line(self, suffix: str) -> None:
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {count} {self.unit}s {suffix}{extra}", file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._line(f"({now - self.started:.0f} s so far)")

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n:
            self._line(f"in {self.clock() - self.started:.1f} s")

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc and exc[0] is not None:
            self.closed = True  # the error is what the log needs, not a summary line
        self.close()


def progress(
    total: int | None,
    desc: str,
    unit: str,
    *,
    enabled: bool = True,
    stream: IO[str] | None = None,
    interval: float = LOG_INTERVAL_S,
) -> Progress:
    """A progress display for `total` units of work named `desc` (see the module docstring)."""
    if not enabled:
        return Silent()
    out = stream if stream is not None else sys.stderr
    isatty = getattr(out, "isatty", None)
    if callable(isatty) and isatty():
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional on deployment targets
            pass
        else:
            bar: Progress = tqdm(
                total=total, desc=desc, unit=unit, leave=False, file=out, delay=TTY_DELAY_S
            )
            return bar
    return LogLines(total, desc, unit, stream=out, interval=interval)
