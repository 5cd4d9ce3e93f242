"""Progress displays: a bar on a terminal, plain lines in a log, nothing before an error."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)

from onnxship.cli import main
from onnxship.core.progress import LogLines, Silent, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_print_one_line_per_interval_and_one_at_the_end() -> None:
    out, clock = io.StringIO(), _Clock()
    with LogLines(300, "train", "step", stream=out, interval=60.0, clock=clock) as bar:
        for _ in range(300):
            clock.now += 0.5  # 150 s of work in all
            bar.update(1)
            bar.set_postfix(loss="0.1234")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines == [
        "train: 120/300 steps (60 s so far), loss=0.1234",
        "train: 240/300 steps (120 s so far), loss=0.1234",
        "train: 300/300 steps in 150.0 s, loss=0.1234",
    ]


def test_log_lines_print_nothing_more_when_the_work_fails() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError), LogLines(10, "bench", "case", stream=out) as bar:
        bar.update(3)
        raise RuntimeError("boom")
    assert out.getvalue() == ""


def test_progress_is_a_delayed_bar_on_a_terminal_and_lines_elsewhere() -> None:
    assert isinstance(progress(5, "x", "case", stream=io.StringIO()), LogLines)
    assert isinstance(progress(5, "x", "case", enabled=False, stream=_Terminal()), Silent)
    terminal = _Terminal()
    with progress(5, "x", "case", stream=terminal) as bar:
        bar.update(5)
    # Work shorter than the delay never draws a frame (so no `0%|` before a quick error).
    assert terminal.getvalue() == ""


def test_bench_in_a_log_writes_lines_not_carriage_return_frames(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    args = ["bench", str(model), "--batch-sizes", "1,4", "--warmup", "1", "--iterations", "3"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "\r" not in err, err[:300]
    lines = [line for line in err.splitlines() if line.startswith("bench:")]
    assert len(lines) == 1 and lines[0].startswith("bench: 2/2 cases in "), err


def test_a_failing_command_prints_its_error_and_no_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    assert main(["bench", str(broken), "--iterations", "3"]) == 2
    err = capsys.readouterr().err
    assert "%|" not in err and "\r" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("onnxship bench: "), err
