"""The PyTorch side's data: MNIST (the default), a user's npz files or an image folder, held
in memory as tensors, with its `DatasetInfo` (onnxship.core.dataset).

`open_data(cfg, data_dir)` is the one entry point train, prune, distill and export use:
`DataSplits.split("fit" | "val" | "test")` and `DataSplits.info`. Kinds (`DataConfig.kind`):
- `mnist`: torchvision MNIST as below, numbers unchanged;
- `npz`: `train` and `test` files with `x` (float32, preprocessed) and `y` (int64); the
  validation split is carved from train (`val_fraction`, seeded permutation);
- `imagefolder`: torchvision `ImageFolder` folders `train` and `test`, resized to `resize`
  and normalised with `mean`/`std` (on pixels in [0, 1]), decoded once into tensors;
  validation carved from train as for npz.

MNIST details:

The data root follows CONTRACT.md (`--data-dir`, `$ONNXSHIP_DATA_DIR`, `./data`). A download is
attempted only when files are missing; offline, the error names the folder and the four files.
Splits: 'fit' (training minus validation) for training, 'val' (a fixed, seeded 5,000 of the
training images, defined once in `onnxship.core.mnist`) for decisions, 'test' for reporting.
Set `ONNXSHIP_NO_DOWNLOAD=1` (or pass `download=False`) to never touch the network: missing
files are then an immediate error (tests and air-gapped CI use it). A download that is tried
gets a socket timeout, so an offline machine that drops packets fails in seconds, not minutes.
Whole-tensor batching (no DataLoader/PIL per sample) keeps an epoch to a few seconds on 2 cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onnxship.core import mnist
from onnxship.core.dataset import DatasetInfo, DatasetKind, load_npz, mnist_info
from onnxship.core.errors import CoreError
from onnxship.models.errors import ModelsError

SPLITS = ("train", "fit", "val", "test")


@dataclass(frozen=True)
class TensorSplit:
    x: torch.Tensor  # float32 (N, *input_shape), normalised (MNIST: (N, 1, 28, 28))
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
    """Normalised tensors of one split ('train', 'fit', 'val', 'test').

    Loaded once per process and shared (every stage of one `onnxship run` reads the same
    splits): the cache key is the data root and the size, mtime and inode of its files, so a
    replaced file is read again. Callers must not modify the tensors in place."""
    if split not in SPLITS:
        raise ModelsError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    data_root = ensure_mnist(root)
    key = (os.fspath(data_root.resolve()), split, _files_stamp(mnist.raw_dir(data_root)))
    if key in _SPLIT_CACHE:
        _SPLIT_CACHE.move_to_end(key)
        return _SPLIT_CACHE[key]
    try:
        data = mnist.load_split(data_root, split)
    except CoreError as exc:
        raise ModelsError(str(exc)) from exc
    loaded = TensorSplit(x=torch.from_numpy(mnist.normalize(data.images)),
                         y=torch.from_numpy(data.labels.astype(np.int64)))  # fmt: skip
    _SPLIT_CACHE[key] = loaded
    while len(_SPLIT_CACHE) > _SPLIT_CACHE_SIZE:
        _SPLIT_CACHE.popitem(last=False)
    return loaded


# The most recently loaded splits (fit, val and test of one root fit in it: ~230 MB).
_SPLIT_CACHE: OrderedDict[tuple[Any, ...], TensorSplit] = OrderedDict()
_SPLIT_CACHE_SIZE = 4


def _files_stamp(folder: Path) -> tuple[tuple[str, int, int, int], ...]:
    stats = ((name, (folder / name).stat()) for name in sorted(mnist.MAGIC_OF))
    return tuple((name, st.st_size, st.st_mtime_ns, st.st_ino) for name, st in stats)


# --------------------------------------------------------------------------------------------
# The dataset abstraction: MNIST, npz, imagefolder.

DEFAULT_VAL_FRACTION = 0.1


@dataclass(frozen=True)
class DataConfig:
    """Which data a model is trained and measured on (`[data]` of a pipeline config).

    kind: mnist (default; `train`/`test` unused, the root is --data-dir) | npz | imagefolder.
    train, test: npz files, or ImageFolder folders (one subfolder per class).
    val_fraction, seed: the validation split carved from train (npz, imagefolder).
    resize: imagefolder images are resized to [resize, resize]; mean/std normalise them (per
    channel, on pixels in [0, 1]); both default to none.
    name: shown in the manifest (default: the train file's stem).
    """

    kind: DatasetKind = DatasetKind.MNIST
    train: str | None = None
    test: str | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = 0
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    name: str | None = None

    def validate(self) -> None:
        if not isinstance(self.kind, DatasetKind):
            raise ModelsError(
                f"data kind {self.kind!r} is not one of {', '.join(k.value for k in DatasetKind)}"
            )
        if self.kind is DatasetKind.MNIST:
            return
        what = "npz files" if self.kind is DatasetKind.NPZ else "ImageFolder folders"
        if not self.train or not self.test:
            raise ModelsError(
                f"[data] kind = {self.kind.value!r} needs train and test ({what}); found "
                f"train={self.train!r}, test={self.test!r}"
            )
        if not 0 < self.val_fraction < 1:
            raise ModelsError(
                f"[data] val_fraction {self.val_fraction} must be in (0, 1): the part of train "
                "held out for decisions"
            )
        if (self.mean is None) != (self.std is None):
            raise ModelsError("[data] give both mean and std, or neither")
        if self.std is not None and any(v == 0 for v in self.std):
            raise ModelsError(f"[data] std {list(self.std)} contains 0; it must be non-zero")
        if self.resize is not None and self.resize < 1:
            raise ModelsError(f"[data] resize must be >= 1 pixel, got {self.resize}")

    def files(self) -> list[Path]:
        """The files whose bytes the data depends on (stage-record inputs); MNIST: none."""
        if self.kind is DatasetKind.NPZ:
            return [Path(self.train or ""), Path(self.test or "")]
        return []

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "train": self.train,
            "test": self.test,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "resize": self.resize,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "name": self.name,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DataConfig:
        return cls(
            kind=DatasetKind(raw.get("kind", "mnist")),
            train=raw.get("train"),
            test=raw.get("test"),
            val_fraction=float(raw.get("val_fraction", DEFAULT_VAL_FRACTION)),
            seed=int(raw.get("seed", 0)),
            resize=raw.get("resize"),
            mean=None if raw.get("mean") is None else tuple(raw["mean"]),
            std=None if raw.get("std") is None else tuple(raw["std"]),
            name=raw.get("name"),
        )


def carve_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, val) indices of n training samples: a seeded permutation, `fraction` held out
    (at least one sample each side), both sorted."""
    n_val = min(max(1, round(n * fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass
class DataSplits:
    """Tensors of 'fit', 'val' and 'test' (loaded on first use) and the DatasetInfo."""

    info: DatasetInfo
    config: DataConfig
    data_dir: str | os.PathLike[str] | None = None
    _splits: dict[str, TensorSplit] = field(default_factory=dict)

    def split(self, name: str) -> TensorSplit:
        if name not in SPLITS:
            raise ModelsError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        if name not in self._splits:
            self._splits[name] = load_split(self.data_dir, name)
        return self._splits[name]

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse a model that cannot take this data or whose classes the labels exceed: one
        forward pass of one sample."""
        check_model_on_data(model, self.info, self._label_range())

    def _label_range(self) -> tuple[int, int] | None:
        ys = [s.y for s in self._splits.values() if len(s)]
        if not ys:
            return None
        return int(min(int(y.min()) for y in ys)), int(max(int(y.max()) for y in ys))

    def npz_arrays(self, name: str) -> dict[str, np.ndarray]:
        """One split as the arrays of a contract npz (x float32, y int64) for the ONNX side."""
        s = self.split(name)
        return {"x": s.x.numpy().astype(np.float32), "y": s.y.numpy().astype(np.int64)}


def check_model_on_data(
    model: torch.nn.Module, info: DatasetInfo, label_range: tuple[int, int] | None
) -> int:
    """Run one sample of `info.input_shape` through `model`; return its number of classes.

    Raises ModelsError (one line) when the model refuses the input shape, when its output is
    not [batch, classes], or when labels fall outside [0, classes)."""
    shape = (2, *info.input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape, dtype=torch.float32))
    except Exception as exc:
        first = " ".join(str(exc).split())[:200]
        raise ModelsError(
            f"the data's input shape [N, {', '.join(map(str, info.input_shape))}] does not "
            f"match the model, whose first layer takes {_expected_input(model)} (forward "
            f"failed: {type(exc).__name__}: {first}); reshape the data or fix the model"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != shape[0]:
        found = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelsError(
            f"the model's output on input [N, {', '.join(map(str, info.input_shape))}] is "
            f"{found}, expected logits [N, classes]; onnxship run trains classifiers"
        )
    classes = int(out.shape[1])
    if label_range is not None and (label_range[0] < 0 or label_range[1] >= classes):
        raise ModelsError(
            f"labels range over [{label_range[0]}, {label_range[1]}], but the model outputs "
            f"{classes} classes (expected labels in [0, {classes - 1}]); check the label "
            "encoding or the model's number of classes"
        )
    return classes


def _expected_input(model: torch.nn.Module) -> str:
    """What the model's first layer takes, for error messages ("[3, ...]" for a 3-channel
    conv, "[64]" for a Linear on flat vectors)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d):
            rank = {torch.nn.Conv1d: 1, torch.nn.Conv2d: 2, torch.nn.Conv3d: 3}[type(module)]
            return f"[N, {module.in_channels}{', H, W' if rank == 2 else ', ...'}]"
        if isinstance(module, torch.nn.Linear):
            return f"[N, {module.in_features}]"
    return "another shape"


def _npz_split(path: Path, what: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        arrays = load_npz(path, require_labels=True)
    except CoreError as exc:
        raise ModelsError(f"[data] {what}: {exc}") from exc
    x = arrays.only_input()
    assert arrays.labels is not None and arrays.sha256 is not None
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(arrays.labels), arrays.sha256


def _imagefolder_split(folder: Path, cfg: DataConfig, what: str) -> tuple[Any, list[str], str]:
    if not folder.is_dir():
        raise ModelsError(
            f"[data] {what} folder {folder} does not exist; pass an ImageFolder root (one "
            "subfolder per class)"
        )
    from torchvision import datasets, transforms

    steps: list[Any] = []
    if cfg.resize is not None:
        steps.append(transforms.Resize((cfg.resize, cfg.resize)))
    steps.append(transforms.ToTensor())
    if cfg.mean is not None and cfg.std is not None:
        steps.append(transforms.Normalize(list(cfg.mean), list(cfg.std)))
    try:
        ds = datasets.ImageFolder(os.fspath(folder), transform=transforms.Compose(steps))
    except (FileNotFoundError, RuntimeError) as exc:
        raise ModelsError(f"[data] {what} folder {folder}: {' '.join(str(exc).split())}") from exc
    digest = hashlib.sha256()
    xs, ys = [], []
    for (file, label), (image, _) in zip(ds.samples, ds, strict=True):
        digest.update(Path(file).relative_to(folder).as_posix().encode())
        digest.update(Path(file).read_bytes())
        xs.append(image)
        ys.append(label)
    try:
        x = torch.stack(xs)
    except RuntimeError as exc:
        raise ModelsError(
            f"[data] {what} folder {folder}: images differ in size; set [data] resize"
        ) from exc
    return (x, torch.tensor(ys, dtype=torch.int64)), list(ds.classes), digest.hexdigest()


def open_data(cfg: DataConfig | None, data_dir: str | os.PathLike[str] | None = None) -> DataSplits:
    """The data of `cfg` (None: MNIST under `data_dir`) with its DatasetInfo; npz and image
    folders are read and checked now, MNIST on first use of a split (as before)."""
    cfg = cfg or DataConfig()
    cfg.validate()
    if cfg.kind is DatasetKind.MNIST:
        root = mnist.resolve_data_root(data_dir)
        test_file = mnist.raw_dir(root) / mnist.TEST_IMAGES
        from onnxship.core.artifact import sha256_file

        sha = sha256_file(test_file) if test_file.is_file() else None
        return DataSplits(info=mnist_info(sha), config=cfg, data_dir=data_dir)
    train_path, test_path = Path(cfg.train or ""), Path(cfg.test or "")
    if cfg.kind is DatasetKind.NPZ:
        x_tr, y_tr, _ = _npz_split(train_path, "train")
        x_te, y_te, test_sha = _npz_split(test_path, "test")
        classes_n = int(max(int(y_tr.max()), int(y_te.max()))) + 1
        class_names = tuple(str(i) for i in range(classes_n))
    else:
        (x_tr, y_tr), classes, _ = _imagefolder_split(train_path, cfg, "train")
        (x_te, y_te), test_classes, test_sha = _imagefolder_split(test_path, cfg, "test")
        if test_classes != classes:
            raise ModelsError(
                f"[data] the test folder's classes {test_classes} differ from train's {classes}; "
                "use the same class subfolders"
            )
        class_names = tuple(classes)
    if tuple(x_tr.shape[1:]) != tuple(x_te.shape[1:]):
        raise ModelsError(
            f"[data] train samples are {list(x_tr.shape[1:])} but test samples are "
            f"{list(x_te.shape[1:])}; both must have the model's input shape"
        )
    if y_tr.min() < 0 or y_te.min() < 0:
        raise ModelsError("[data] labels must be >= 0 (class indices)")
    fit_idx, val_idx = carve_validation(int(x_tr.shape[0]), cfg.val_fraction, cfg.seed)
    fit_t, val_t = torch.from_numpy(fit_idx), torch.from_numpy(val_idx)
    info = DatasetInfo(
        kind=cfg.kind,
        name=cfg.name or train_path.stem,
        input_shape=tuple(int(d) for d in x_tr.shape[1:]),
        dtype="float32",
        mean=None if cfg.kind is DatasetKind.NPZ else cfg.mean,
        std=None if cfg.kind is DatasetKind.NPZ else cfg.std,
        class_names=class_names,
        test_sha256=test_sha,
    )
    splits = DataSplits(info=info, config=cfg, data_dir=data_dir)
    splits._splits = {
        "train": TensorSplit(x=x_tr, y=y_tr),
        "fit": TensorSplit(x=x_tr[fit_t], y=y_tr[fit_t]),
        "val": TensorSplit(x=x_tr[val_t], y=y_tr[val_t]),
        "test": TensorSplit(x=x_te, y=y_te),
    }
    return splits
