"""MNIST without torch: data-root resolution, idx-file reading, the fixed validation split.

This is the single source of truth for *which* training images are held out as validation
(pruning, calibration and recipe decisions use them) so that the PyTorch side (`models.training_data`)
and the torch-free side (`calibrate`, `runtime_bench`) can never disagree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxship.core.errors import CoreError

DATA_DIR_ENV = "ONNXSHIP_DATA_DIR"
DEFAULT_DATA_DIR = "./data"

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
MNIST_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# Training-set statistics (pixels scaled to [0, 1]); recorded in every checkpoint and ONNX file.
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
MNIST_CLASSES = tuple(str(i) for i in range(10))

# The validation split: a fixed, seeded subset of the 60,000 training images.
VALIDATION_SIZE = 5000
VALIDATION_SEED = 20261128


def resolve_data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`--data-dir`, else `$ONNXSHIP_DATA_DIR`, else `./data` (CONTRACT.md)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return Path(DEFAULT_DATA_DIR)


def raw_dir(root: str | os.PathLike[str]) -> Path:
    return Path(root) / "MNIST" / "raw"


def missing_files(root: str | os.PathLike[str]) -> list[str]:
    folder = raw_dir(root)
    return [name for name in MNIST_FILES if not (folder / name).is_file()]


def missing_data_message(root: str | os.PathLike[str], missing: Sequence[str]) -> str:
    return (
        f"MNIST not found: expected the files {', '.join(MNIST_FILES)} in {raw_dir(root)}, "
        f"missing {', '.join(missing)}; point --data-dir or ${DATA_DIR_ENV} at a folder that "
        "holds MNIST/raw/*-ubyte (torchvision layout)"
    )


def require_files(root: str | os.PathLike[str]) -> Path:
    """Return the raw folder, or raise naming the folder and the four files."""
    missing = missing_files(root)
    if missing:
        raise CoreError(missing_data_message(root, missing))
    return raw_dir(root)


IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
MAGIC_OF = {
    TRAIN_IMAGES: IMAGE_MAGIC,
    TRAIN_LABELS: LABEL_MAGIC,
    TEST_IMAGES: IMAGE_MAGIC,
    TEST_LABELS: LABEL_MAGIC,
}


def check_idx_header(path: str | os.PathLike[str], *, expect_magic: int) -> tuple[int, list[int]]:
    """Check an idx file's magic number and that its size matches its header.

    Returns (header bytes, dims). Reads only the header, so it is cheap enough to run before
    handing the file to another reader (torchvision's errors on a corrupt file are cryptic).
    """
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as handle:
        head = handle.read(16)
    if len(head) < 8:
        raise CoreError(
            f"{p} is not an MNIST idx file: {size} bytes, too short for a header; "
            "replace it with the original file"
        )
    magic = int.from_bytes(head[0:4], "big")
    if magic != expect_magic:
        raise CoreError(
            f"{p} is not an MNIST idx file: magic number {magic}, expected {expect_magic}; "
            "replace it with the original file"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(head) < header:
        raise CoreError(f"{p} is truncated inside its header; replace it with the original file")
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if size != expected:
        raise CoreError(
            f"{p} is corrupt or truncated: header says shape {tuple(dims)} ({expected} bytes), "
            f"file has {size} bytes; replace it with the original file"
        )
    return header, dims


def read_idx(path: str | os.PathLike[str], *, expect_magic: int) -> np.ndarray:
    """Read an idx1/idx3 file (uint8) after checking its magic number and its size."""
    header, dims = check_idx_header(path, expect_magic=expect_magic)
    data = Path(path).read_bytes()
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


@dataclass(frozen=True)
class MnistSplit:
    images: np.ndarray  # uint8, (N, 28, 28)
    labels: np.ndarray  # int64, (N,)


def load_split(root: str | os.PathLike[str], split: str) -> MnistSplit:
    """Load 'train' (all 60,000), 'fit' (train minus validation), 'val' or 'test'."""
    folder = require_files(root)
    if split == "test":
        images = read_idx(folder / TEST_IMAGES, expect_magic=IMAGE_MAGIC)
        labels = read_idx(folder / TEST_LABELS, expect_magic=LABEL_MAGIC)
    elif split in ("train", "fit", "val"):
        images = read_idx(folder / TRAIN_IMAGES, expect_magic=IMAGE_MAGIC)
        labels = read_idx(folder / TRAIN_LABELS, expect_magic=LABEL_MAGIC)
    else:
        raise CoreError(f"unknown MNIST split {split!r}; expected one of train, fit, val, test")
    if images.shape[0] != labels.shape[0]:
        raise CoreError(
            f"MNIST {split} images and labels disagree in {folder}: {images.shape[0]} images, "
            f"{labels.shape[0]} labels; replace the files with the originals"
        )
    if split in ("fit", "val"):
        fit_idx, val_idx = validation_split(images.shape[0])
        idx = fit_idx if split == "fit" else val_idx
        images, labels = images[idx], labels[idx]
    return MnistSplit(images=np.ascontiguousarray(images), labels=labels.astype(np.int64))


def validation_split(
    n_train: int, size: int = VALIDATION_SIZE, seed: int = VALIDATION_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, validation indices) into the training split; fixed for a given seed."""
    if not 0 < size < n_train:
        raise CoreError(f"validation size must be in (0, {n_train}), got {size}")
    order = np.random.default_rng(seed).permutation(n_train)
    return np.sort(order[size:]), np.sort(order[:size])


def normalize(
    images: np.ndarray, mean: Sequence[float] = MNIST_MEAN, std: Sequence[float] = MNIST_STD
) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28): pixels/255, then (x - mean) / std.

    The same arithmetic as torchvision's ToTensor + Normalize, in float32.
    """
    x = images.astype(np.float32)[:, None, :, :]
    # In place, one allocation: the same float32 operations in the same order as
    # ((x / 255) - m) / s, so the values are bit-identical; fresh memory is the cost here.
    x /= np.float32(255.0)
    x -= np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    x /= np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return x


def split_npz_arrays(
    root: str | os.PathLike[str],
    split: str,
    mean: Sequence[float] = MNIST_MEAN,
    std: Sequence[float] = MNIST_STD,
) -> dict[str, np.ndarray]:
    """One split as the arrays of a contract npz: `x` (normalised as `normalize`, the values
    every ONNX-side reader fed before), `y` (int64) and, for 'val' / 'fit', `train_indices`
    (int64 positions in the 60,000-image training split, in the order of the rows)."""
    data = load_split(root, split)
    arrays = {"x": normalize(data.images, mean, std), "y": data.labels.astype(np.int64)}
    if split in ("fit", "val"):
        n_train = check_idx_header(raw_dir(root) / TRAIN_LABELS, expect_magic=LABEL_MAGIC)[1][0]
        fit_idx, val_idx = validation_split(n_train)
        arrays["train_indices"] = (fit_idx if split == "fit" else val_idx).astype(np.int64)
    return arrays
