"""Shared fixtures: the real MNIST root and small, quickly trained checkpoints.

Accuracy tests use real MNIST from $ONNXSHIP_DATA_DIR (CI sets it to ../shared/data); nothing is
written outside pytest's tmp paths.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _mnist_root() -> Path:
    env = os.environ.get("ONNXSHIP_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for root in candidates:
        if (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
            return root
    pytest.fail(
        "MNIST not found: set ONNXSHIP_DATA_DIR to a folder holding MNIST/raw/*-ubyte "
        f"(tried {', '.join(map(str, candidates))})"
    )


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    return _mnist_root()


def _quick_checkpoint(tmp_dir: Path, root: Path, arch: str, widths: dict, epochs: float) -> Path:
    import torch

    from onnxship.models.checkpoint import save_checkpoint
    from onnxship.models.data import load_split
    from onnxship.models.loop import SgdConfig, train_sgd
    from onnxship.models.registry import create_model

    torch.manual_seed(0)
    fit = load_split(root, "fit")
    model = create_model(arch, **widths)
    train_sgd(model, fit.x, fit.y, SgdConfig(epochs=epochs, lr=0.05), seed=0, progress=False)
    path = tmp_dir / f"{arch}.pt"
    save_checkpoint(model, path, stage="train", seed=0)
    return path


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """simple_cnn at the article's widths, trained for 0.3 epoch (~97 % test top-1)."""
    return _quick_checkpoint(
        tmp_path_factory.mktemp("ckpt"), mnist_root, "simple_cnn", {}, epochs=0.3
    )


@pytest.fixture(scope="session")
def trained_bn_checkpoint(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """bn_cnn at default widths, trained for 0.2 epoch."""
    return _quick_checkpoint(
        tmp_path_factory.mktemp("ckpt_bn"), mnist_root, "bn_cnn", {}, epochs=0.2
    )
