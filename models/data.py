"""MNIST for the PyTorch side, through torchvision, held in memory as normalised tensors.

The data root follows CONTRACT.md (`--data-dir`, `$ONNXSHIP_DATA_DIR`, `./data`). A download is
attempted only when files are missing; offline, the error names the folder and the four files.
Splits: 'fit' (training minus validation) for training, 'val' (a fixed, seeded 5,000 of the
training images, defined once in `runtime_bench.mnist`) for decisions, 'test' for reporting.
Set `ONNXSHIP_NO_DOWNLOAD=1` (or pass `download=False`) to never touch the network: missing
files are then an immediate error (tests and air-gapped CI use it). A download that is tried
gets a socket timeout, so an offline machine that drops packets fails in seconds, not minutes.
Whole-tensor batching (no DataLoader/PIL per sample) keeps an epoch to a few seconds on 2 cores.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from onnxship.core import mnist
from onnxship.core.errors import CoreError
from onnxship.models.errors import ModelsError

SPLITS = ("train", "fit", "val", "test")


@dataclass(frozen=True)
class TensorSplit:
    x: torch.Tensor  # float32 (N, 1, 28, 28), normalised
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.y.shape[0])


NO_DOWNLOAD_ENV = "ONNXSHIP_NO_DOWNLOAD"
DOWNLOAD_TIMEOUT_S = 30.0


def download_allowed() -> bool:
    """False when $ONNXSHIP_NO_DOWNLOAD is set to anything but '', '0', 'false' or 'no'."""
    value = os.environ.get(NO_DOWNLOAD_ENV, "").strip().lower()
    return value in ("", "0", "false", "no")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ensure_mnist(root: str | os.PathLike[str] | None, *, download: bool | None = None) -> Path:
    """Resolve the data root; download MNIST there only if files are missing; check headers.

    `download=None` follows $ONNXSHIP_NO_DOWNLOAD (default: download allowed).
    """
    data_root = mnist.resolve_data_root(root)
    missing = mnist.missing_files(data_root)
    if missing:
        if download is None:
            download = download_allowed()
        if not download:
            raise ModelsError(
                mnist.missing_data_message(data_root, missing)
                + f" (download disabled: {NO_DOWNLOAD_ENV} is set or download=False)"
            )
        old_timeout = socket.getdefaulttimeout()
        raw = mnist.raw_dir(data_root)
        # Folders torchvision will create; removed again (if still empty) when the download fails.
        created = [d for d in (raw, raw.parent, data_root) if not d.exists()]
        try:
            from torchvision.datasets import MNIST

            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
            # torchvision prints progress to stdout; keep the CLI's stdout machine-readable.
            with contextlib.redirect_stdout(io.StringIO()):
                for train in (True, False):
                    MNIST(os.fspath(data_root), train=train, download=True)
        except Exception as exc:  # network errors come in many types; all mean "not there"
            for folder in created:  # deepest first; leaves anything that holds files
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise ModelsError(
                mnist.missing_data_message(data_root, missing)
                + f" (download failed: {_one_line(exc)})"
            ) from exc
        finally:
            socket.setdefaulttimeout(old_timeout)
        still_missing = mnist.missing_files(data_root)
        if still_missing:
            raise ModelsError(mnist.missing_data_message(data_root, still_missing))
    folder = mnist.raw_dir(data_root)
    try:
        for name, magic in mnist.MAGIC_OF.items():
            mnist.check_idx_header(folder / name, expect_magic=magic)
    except CoreError as exc:
        raise ModelsError(str(exc)) from exc
    return data_root


def load_split(root: str | os.PathLike[str] | None, split: str) -> TensorSplit:
    """Normalised tensors of one split ('train', 'fit', 'val', 'test')."""
    if split not in SPLITS:
        raise ModelsError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    data_root = ensure_mnist(root)
    from torchvision.datasets import MNIST

    dataset = MNIST(os.fspath(data_root), train=split != "test", download=False)
    images = dataset.data.numpy()
    labels = dataset.targets.numpy()
    if split in ("fit", "val"):
        fit_idx, val_idx = mnist.validation_split(images.shape[0])
        idx = fit_idx if split == "fit" else val_idx
        images, labels = images[idx], labels[idx]
    x = torch.from_numpy(mnist.normalize(images))
    y = torch.from_numpy(labels.astype("int64"))
    return TensorSplit(x=x, y=y)
