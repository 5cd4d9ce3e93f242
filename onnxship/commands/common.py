"""Argument helpers shared by the command modules (stdlib only)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DATA_DIR_ENV = "ONNXSHIP_DATA_DIR"


def resolve_user_paths(args: argparse.Namespace) -> None:
    """The CLI's edge: every path the user gave - each `Path` flag or positional (lists too)
    and `$ONNXSHIP_DATA_DIR` - made absolute against the caller's working directory, once, so
    nothing downstream (a library call, a child process, a config written to a bundle) ever
    sees a relative path. Config-file values are resolved against the file's folder by
    `onnxship.pipeline.load_config`."""
    for key, value in vars(args).items():
        if isinstance(value, Path):
            setattr(args, key, Path(os.path.abspath(value)))
        elif isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
            setattr(args, key, [Path(os.path.abspath(v)) for v in value])
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        os.environ[DATA_DIR_ENV] = os.path.abspath(env)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (>= 1), got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def number(text: str) -> float:
    """Any float; the library checks the range, so its message can explain the meaning."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number (> 0), got {value}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1) (budgets like --max-drop 0.003)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {value}")
    return value


def int_csv(text: str) -> tuple[int, ...]:
    """'1,64' -> (1, 64), no range check (for configs that check ranges with a clearer error)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 1,64, got {text!r}"
        ) from None


def int_list(text: str) -> tuple[int, ...]:
    """'1,64' -> (1, 64); every value >= 1."""
    values = int_csv(text)
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers like 1,64, got {text!r}"
        )
    return values


def float_list(text: str) -> tuple[float, ...]:
    """'0.1307' or '0.485,0.456,0.406' -> floats, one per input channel."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers (one per input channel) like 0.1307, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="MNIST root holding MNIST/raw/*-ubyte (default: $ONNXSHIP_DATA_DIR, else ./data)",
    )


def add_out_dir(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        required=required,
        help="output folder; artifacts go to OUT/artifacts or OUT/checkpoints, records to OUT/stages",
    )


def output_file(out_dir: Path, subdir: str, filename: str) -> Path:
    """`out_dir/subdir/filename`, creating the folder (one-line error if it cannot be made)."""
    from onnxship.api import output_path

    return output_path(out_dir, subdir, filename)


DEFAULT_DIST_TIMEOUT_S = 120.0  # mirrors models.distributed.DEFAULT_TIMEOUT_S (torch-free here)


def add_dist_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dist-timeout",
        type=positive_float,
        default=DEFAULT_DIST_TIMEOUT_S,
        metavar="SECONDS",
        help="under torchrun: a collective that waits longer than this fails on every rank "
        "with a one-line error instead of hanging (a rank that dies is noticed at once; "
        f"default: {DEFAULT_DIST_TIMEOUT_S:g})",
    )
