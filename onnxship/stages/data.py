"""The data step: the ONNX-side stages read the run's data as npz files inside the bundle, for
MNIST as for a user's own model and data (`[model] factory`, `[data] kind = "npz" |
"imagefolder"`, checked before the bundle folder is touched). An unrecorded step: it runs every
time and rewrites a file only when its content changes, so stages keyed on their sha256 stay
cached.

    data/val.npz   the validation split: INT8 calibration and its accuracy budget (MNIST:
                   normalised with the model's mean/std, with `train_indices`); calibration
                   is drawn from it and the budget measured on the other rows, for MNIST
                   and own data alike
    data/test.npz  the test data: FP16 parity, eval and `verify`
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from onnxship.core.artifact import Artifact, atomic_write_bytes, sha256_bytes, sha256_file
from onnxship.core.dataset import DatasetKind
from onnxship.errors import PipelineError
from onnxship.models.errors import ModelsError
from onnxship.models.training_data import open_data
from onnxship.stages.base import OwnRun, Run, Stage, Work
from onnxship.stages.config import PipelineConfig

VAL_NPZ = "data/val.npz"
TEST_NPZ = "data/test.npz"


def uses_own_data(cfg: PipelineConfig) -> bool:
    """True when the run trains a user's factory model or reads a user's data (checked before
    the bundle folder is touched; its data step writes the carved splits)."""
    return cfg.model.factory is not None or cfg.data.kind is not DatasetKind.MNIST


def own_model_and_data(cfg: PipelineConfig) -> OwnRun | None:
    """Check a user's factory and data before the bundle folder is touched (None: the
    default MNIST run with a registry model, checked by its stages)."""
    factory = cfg.model.to_factory()
    if not uses_own_data(cfg):
        if cfg.model.state_dict is not None:
            raise PipelineError(
                "[model] state_dict needs [model] factory: it is loaded into the factory's model"
            )
        return None
    try:
        splits = open_data(cfg.data, cfg.data_dir)
        if factory is not None:
            model = factory.build()
            for name in ("fit", "val", "test"):
                splits.split(name)
            splits.check_model(model)
    except ModelsError as exc:
        raise PipelineError(str(exc)) from exc
    if factory is None:
        raise PipelineError(
            f"[data] kind = {cfg.data.kind.value!r} needs [model] factory: the built-in "
            f"{cfg.train.arch} takes MNIST's [1, 28, 28] images; name your network with "
            'factory = "pkg.module:function"'
        )
    check_calibration_split(cfg, len(splits.split("val")))
    try:
        source: Path | None = Path(inspect.getfile(factory.resolve()))
    except (TypeError, OSError):  # a builtin or C function has no file
        source = None
    return OwnRun(splits=splits, factory=factory, source=source)


def check_calibration_split(cfg: PipelineConfig, val_rows: int) -> None:
    """The quantize stages calibrate on `[quantize.calibration] size` rows of data/val.npz and
    measure the budget on the others: checked before any training, not after it."""
    from onnxship.calibrate.calibration_data import check_split
    from onnxship.calibrate.errors import CalibrateError

    try:
        check_split(val_rows, cfg.quantize.calibration, "the validation split of [data]")
    except CalibrateError as exc:
        raise PipelineError(str(exc)) from exc


def stages(cfg: PipelineConfig) -> list[Stage]:
    """The data step: data/val.npz and data/test.npz."""
    return [
        Stage(
            name="data",
            kind="data",
            config=cfg.data,
            outputs=(VAL_NPZ, TEST_NPZ),
            produce=write_data_npz,
            recorded=False,
        )
    ]


def write_data_npz(run: Run, work: Work) -> Artifact:
    """The validation split and the test data as contract npz files inside the bundle (own
    data: the carved validation split; the test file is a byte copy of an npz test file,
    decoded images for an image folder), in deterministic bytes. Rewritten only when their
    content changes."""
    if run.own is None:
        return write_mnist_npz(run, work)
    from onnxship.core.dataset import npz_bytes

    splits = run.own.splits
    for name, target in zip(("val", "test"), work.outputs, strict=True):
        if name == "test" and splits.config.kind is DatasetKind.NPZ:
            content = Path(splits.config.test or "").read_bytes()  # the user's file, as is
        else:
            content = npz_bytes(splits.npz_arrays(name))
        _replace_if_changed(target, content)
    return Artifact.from_file(work.outputs[0], stage="data", config=splits.config.to_json())


def _replace_if_changed(target: Path, content: bytes) -> None:
    """Write `content` to `target` unless it already holds exactly that (its sha256 then stays,
    and so do the cached stages keyed on it)."""
    if not target.is_file() or sha256_file(target) != sha256_bytes(content):
        atomic_write_bytes(target, content)


def write_mnist_npz(run: Run, work: Work) -> Artifact:
    """MNIST's validation and test splits, normalised with MNIST's mean/std (what the
    registry models are trained with and their metadata records), in deterministic bytes."""
    from onnxship.core import mnist
    from onnxship.core.dataset import npz_bytes
    from onnxship.models.training_data import ensure_mnist

    root = ensure_mnist(run.data_dir)
    for name, target in zip(("val", "test"), work.outputs, strict=True):
        arrays = mnist.split_npz_arrays(root, name, mnist.MNIST_MEAN, mnist.MNIST_STD)
        _replace_if_changed(target, npz_bytes(arrays))
    return Artifact.from_file(work.outputs[0], stage="data", config=run.cfg.data.to_json())


def dataset_block(teacher_ckpt: Path, test_npz: Path, out: Path) -> dict[str, Any]:
    """The manifest's `dataset` block: the teacher checkpoint's DatasetInfo; `test_path`
    (relative to the bundle) names the npz every accuracy was measured on and `test_sha256`
    is that file's hash (what `verify` re-measures on and checks)."""
    from onnxship.core.dataset import mnist_info
    from onnxship.models.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(teacher_ckpt)
    info = meta.dataset or mnist_info()
    block = info.to_json()
    block["test_path"] = os.path.relpath(test_npz, out)
    block["test_sha256"] = sha256_file(test_npz)
    return block
