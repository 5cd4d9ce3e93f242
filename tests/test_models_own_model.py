"""A user's own network and data on the PyTorch side: factories, DepGraph pruning, checkpoints
rebuilt from shapes, the npz / imagefolder data kinds, channel groups declared at registration."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from onnxship.core.dataset import DatasetInfo, DatasetKind, mnist_info
from onnxship.models.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from onnxship.models.errors import ModelsError
from onnxship.models.flops import count_macs
from onnxship.models.prune import PruneConfig, prune_model_depgraph
from onnxship.models.registry import ModelFactory, prune_groups
from onnxship.models.train import TrainConfig, trained_from_data
from onnxship.models.training_data import (
    DataConfig,
    carve_validation,
    check_model_on_data,
    open_data,
)

NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    """stem conv+BN -> [depthwise -> BN -> pointwise] + residual -> concat of two convs ->
    global pool -> linear."""

    def __init__(self, width=8, classes=4):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.pw = nn.Conv2d(width, width, 1)
        self.a = nn.Conv2d(width, width, 1)
        self.b = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.pw(self.dw(x)))
        x = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.head(x.mean(dim=(2, 3)))


def net(width=8, classes=4):
    return Net(width, classes)
'''


@pytest.fixture
def factory(tmp_path: Path) -> ModelFactory:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "ownnets.py").write_text(NETS)
    return ModelFactory("ownnets:net", {"width": 8}, str(folder))


def _info(shape: tuple[int, ...] = (1, 6, 6), classes: int = 4) -> DatasetInfo:
    return DatasetInfo(
        kind=DatasetKind.NPZ,
        name="toy",
        input_shape=shape,
        class_names=tuple(str(i) for i in range(classes)),
    )


def _randomise_bn(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_model_factory_builds_from_the_config_folder(factory: ModelFactory) -> None:
    model = factory.build()
    assert isinstance(model, nn.Module)
    assert model.stem.out_channels == 8


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ownnets", "is not 'pkg.module:function'"),
        ("nosuchmodule:net", "does not import"),
        ("ownnets:missing", "has no function 'missing'"),
    ],
)
def test_model_factory_refuses_bad_specs_in_one_line(
    factory: ModelFactory, spec: str, message: str
) -> None:
    bad = ModelFactory(spec, {}, factory.search_path)
    with pytest.raises(ModelsError, match=message) as info:
        bad.build()
    assert "\n" not in str(info.value)


def test_prune_depgraph_meets_the_macs_budget_on_residual_concat_depthwise_bn(
    factory: ModelFactory,
) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(factory.build())
    before = copy.deepcopy(model.state_dict())
    pruned, metrics = prune_model_depgraph(model, PruneConfig(macs_budget=0.4), (1, 6, 6))
    shape = (1, 1, 6, 6)
    assert count_macs(pruned, shape) <= 0.4 * count_macs(model, shape)
    assert pruned.stem.out_channels < 8
    # The depthwise conv stays depthwise and the residual partners agree.
    assert pruned.dw.groups == pruned.dw.in_channels == pruned.stem.out_channels
    assert pruned.pw.out_channels == pruned.stem.out_channels
    assert pruned.head.out_features == 4  # classes are never pruned
    assert pruned(torch.zeros(3, 1, 6, 6)).shape == (3, 4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert metrics["depgraph_steps"] >= 1


def test_prune_depgraph_refuses_named_width_ratios(factory: ModelFactory) -> None:
    with pytest.raises(ModelsError, match="give one number"):
        prune_model_depgraph(factory.build(), PruneConfig(width_ratios={"x": 0.5}), (1, 6, 6))


def test_checkpoint_of_a_pruned_factory_model_reloads_from_shapes_with_weights_only(
    factory: ModelFactory, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(factory.build())
    pruned, _ = prune_model_depgraph(model, PruneConfig(width_ratios=0.5), (1, 6, 6))
    path = tmp_path / "student.pt"
    save_checkpoint(pruned, path, stage="prune", dataset=_info(), factory=factory)
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    meta = read_checkpoint_meta(path)
    assert meta.arch == "ownnets:net" and meta.widths == {}
    assert meta.dataset == _info()
    assert meta.mean == (0.0,) and meta.std == (1.0,)  # preprocessed data: identity
    reloaded, _ = load_checkpoint(path)
    x = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), pruned.eval()(x), rtol=0, atol=0)


def test_check_model_on_data_names_both_shapes_and_the_label_range(
    factory: ModelFactory,
) -> None:
    model = factory.build()
    assert check_model_on_data(model, _info(), (0, 3)) == 4
    with pytest.raises(ModelsError, match=r"\[N, 3, 6, 6\].*\[N, 1, H, W\]"):
        check_model_on_data(model, _info((3, 6, 6)), None)
    with pytest.raises(ModelsError, match=r"\[0, 7\].*4 classes"):
        check_model_on_data(model, _info(), (0, 7))


def test_carve_validation_is_seeded_disjoint_and_complete() -> None:
    fit, val = carve_validation(100, 0.1, seed=3)
    fit2, val2 = carve_validation(100, 0.1, seed=3)
    assert np.array_equal(fit, fit2) and np.array_equal(val, val2)
    assert val.shape == (10,) and not set(fit) & set(val)
    assert sorted([*fit, *val]) == list(range(100))


def _toy_npz(folder: Path, n: int = 80, classes: int = 4) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n).astype(np.int64)
    # Class-dependent brightness, so a tiny net can learn something.
    x = (rng.normal(size=(n, 1, 6, 6)) * 0.1 + y[:, None, None, None] * 0.5).astype(np.float32)
    train, test = folder / "train.npz", folder / "test.npz"
    np.savez(train, x=x[:60], y=y[:60])
    np.savez(test, x=x[60:], y=y[60:])
    return train, test


def test_open_data_npz_carves_validation_and_describes_the_data(tmp_path: Path) -> None:
    train, test = _toy_npz(tmp_path)
    splits = open_data(DataConfig(kind=DatasetKind.NPZ, train=str(train), test=str(test)))
    assert splits.info.input_shape == (1, 6, 6)
    assert splits.info.num_classes == 4
    assert len(splits.split("fit")) == 54 and len(splits.split("val")) == 6
    assert len(splits.split("test")) == 20


def test_open_data_defaults_to_mnist_without_reading_it() -> None:
    splits = open_data(None, "/nonexistent")
    assert splits.info == mnist_info(None)


def test_train_from_a_state_dict_skips_training_and_records_the_dataset(
    factory: ModelFactory, tmp_path: Path
) -> None:
    train, test = _toy_npz(tmp_path)
    torch.manual_seed(5)
    start = factory.build()
    weights = tmp_path / "start.pt"
    torch.save(start.state_dict(), weights)
    data = DataConfig(kind=DatasetKind.NPZ, train=str(train), test=str(test))
    out = tmp_path / "teacher.pt"
    artifact = trained_from_data(
        TrainConfig(), out, data=data, factory=factory, initial_state=weights, progress=False
    )
    assert artifact.metrics["steps"] == 0
    model, meta = load_checkpoint(out)
    assert meta.data is not None and meta.data["kind"] == "npz"
    assert all(torch.equal(v, start.state_dict()[k]) for k, v in model.state_dict().items())


def test_open_data_imagefolder_decodes_resizes_and_normalises(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for label, value in (("cat", 40), ("dog", 200)):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(3 if split == "train" else 2):
                Image.new("RGB", (10, 12), (value, value, value + i)).save(folder / f"{i}.png")
    cfg = DataConfig(
        kind=DatasetKind.IMAGEFOLDER,
        train=str(tmp_path / "train"),
        test=str(tmp_path / "test"),
        resize=4,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        val_fraction=0.2,
    )
    splits = open_data(cfg)
    assert splits.info.input_shape == (3, 4, 4)
    assert splits.info.class_names == ("cat", "dog")
    assert splits.info.mean == (0.5, 0.5, 0.5)
    test = splits.split("test")
    assert test.y.tolist() == [0, 0, 1, 1]
    assert float(test.x[0, 0, 0, 0]) == pytest.approx((40 / 255 - 0.5) / 0.25, abs=1e-6)


def test_registry_declares_channel_groups_at_registration() -> None:
    groups = prune_groups("simple_cnn")
    assert [g.width for g in groups] == ["conv_channels", "hidden"]
    assert prune_groups("tiny_cnn") == groups
    assert [g.norm for g in prune_groups("bn_cnn")] == ["bn1", "bn2", None]
    with pytest.raises(ModelsError, match="declares no structured-pruning channel groups"):
        prune_groups("nope")
