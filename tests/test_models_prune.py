"""Structured and unstructured pruning on small random models (and one real checkpoint)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from onnxship.models.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from onnxship.models.errors import ModelsError
from onnxship.models.flops import count_macs, count_params
from onnxship.models.prune import (
    Importance,
    PruneConfig,
    PruneMethod,
    PruneScope,
    channel_importance,
    gzip_state_bytes,
    prune_model_structured,
    prune_model_unstructured,
    prune_spec,
    prune_structured,
    pruned_from_checkpoint,
    select_channels,
    sparsity_report,
    widths_for_macs_budget,
    widths_for_ratios,
)
from onnxship.models.registry import create_model

ARCHS = ["simple_cnn", "bn_cnn"]


def random_model(arch: str, seed: int = 0, **widths: int) -> nn.Module:
    """A model with random weights and, for BN, random non-trivial running statistics."""
    torch.manual_seed(seed)
    model = create_model(arch, **widths)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def zero_removed(model: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
    """The oracle: the original model with the removed channels' outputs forced to zero (producer
    rows and bias; behind a BatchNorm, its gamma and beta too)."""
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for group in prune_spec(zeroed.arch_name):
            removed = torch.ones(zeroed.widths()[group.width], dtype=torch.bool)
            removed[keep[group.width]] = False
            producer = zeroed.get_submodule(group.producer)
            producer.weight[removed] = 0
            if producer.bias is not None:
                producer.bias[removed] = 0
            if group.norm is not None:
                bn = zeroed.get_submodule(group.norm)
                bn.weight[removed] = 0
                bn.bias[removed] = 0
    return zeroed


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("importance", [Importance.L1, Importance.L2])
def test_prune_structured_equals_zeroing_removed_channels_in_eval(
    arch: str, importance: Importance
) -> None:
    model = random_model(arch)
    widths = widths_for_macs_budget(model, 0.1)
    keep = select_channels(model, widths, importance)
    pruned = prune_structured(model, keep).eval()
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = zero_removed(model, keep)(x)
        got = pruned(x)
        original = model(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert (got - original).abs().max() > 1e-3  # the oracle is not trivially the original


@pytest.mark.parametrize("arch", ARCHS)
def test_prune_structured_gives_dense_model_of_requested_widths(arch: str, tmp_path: Path) -> None:
    model = random_model(arch)
    target = widths_for_ratios(model, 0.5)
    pruned = prune_structured(model, select_channels(model, target, Importance.L1))
    assert pruned.arch_name == arch and pruned.widths() == target
    fresh = create_model(arch, **target)
    assert {k: v.shape for k, v in pruned.state_dict().items()} == {
        k: v.shape for k, v in fresh.state_dict().items()
    }
    assert count_params(pruned) == count_params(fresh)
    # The checkpoint records the widths: it reloads (weights_only) into the right shape.
    save_checkpoint(pruned, tmp_path / "p.pt", stage="prune")
    reloaded, meta = load_checkpoint(tmp_path / "p.pt")
    assert meta.widths == target
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(reloaded(x), pruned.eval()(x), atol=0, rtol=0)


def test_prune_structured_does_not_modify_the_source() -> None:
    model = random_model("bn_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune_structured(model, select_channels(model, widths_for_ratios(model, 0.5), Importance.L1))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("budget", [0.05, 0.1, 0.25, 0.5])
def test_widths_for_macs_budget_fits_budget_and_leaves_no_room(arch: str, budget: float) -> None:
    model = random_model(arch)
    src = count_macs(model)
    widths = widths_for_macs_budget(model, budget)
    macs = count_macs(create_model(arch, **widths))
    assert macs <= budget * src
    # Greedy fill: no single width can grow by one without breaking the budget.
    for name, value in widths.items():
        if value < model.widths()[name]:
            grown = dict(widths, **{name: value + 1})
            assert count_macs(create_model(arch, **grown)) > budget * src, name


def test_widths_for_macs_budget_simple_cnn_ten_percent() -> None:
    widths = widths_for_macs_budget(create_model("simple_cnn"), 0.1)
    assert widths == {"conv_channels": 7, "hidden": 38}
    assert count_macs(create_model("simple_cnn", **widths)) == 87_922  # <= 88,819.2


def test_widths_for_ratios_rounds_each_width() -> None:
    model = create_model("bn_cnn")
    assert widths_for_ratios(model, 0.25) == {
        "conv1_channels": 4,
        "conv2_channels": 8,
        "hidden": 32,
    }
    assert widths_for_ratios(model, {"hidden": 0.5}) == {
        "conv1_channels": 16,
        "conv2_channels": 32,
        "hidden": 64,
    }


def test_select_channels_keeps_highest_norm_filters_l1_vs_l2() -> None:
    model = create_model("tiny_cnn", conv_channels=3, hidden=8)
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.weight[0].view(-1)[0] = 3.0  # L1 3, L2 3
        model.conv1.weight[1].view(-1)[:4] = 1.0  # L1 4, L2 2
        model.conv1.weight[2].view(-1)[0] = 0.5
    widths = {"conv_channels": 1, "hidden": 8}
    assert select_channels(model, widths, Importance.L1)["conv_channels"].tolist() == [1]
    assert select_channels(model, widths, Importance.L2)["conv_channels"].tolist() == [0]


def test_channel_importance_folds_batchnorm_scale() -> None:
    model = random_model("bn_cnn")
    with torch.no_grad():
        model.conv1.weight.fill_(1.0)  # identical filters: only BN's scale tells them apart
        model.bn1.running_var.fill_(1.0)
        model.bn1.weight.fill_(1.0)
        model.bn1.weight[5] = 1e-3
    scores = channel_importance(model, Importance.L1)["conv1_channels"]
    assert int(scores.argmin()) == 5
    keep = select_channels(model, {"conv1_channels": 15}, Importance.L1)["conv1_channels"]
    assert 5 not in keep.tolist()


def test_prune_model_structured_iterative_schedule_reaches_goal() -> None:
    model = random_model("simple_cnn")
    cfg = PruneConfig(macs_budget=0.1, steps=3)
    pruned, metrics = prune_model_structured(model, cfg)
    assert pruned.widths() == {"conv_channels": 7, "hidden": 38}
    widths = [step["widths"] for step in metrics["schedule"]]
    assert len(widths) == 3 and widths[-1] == pruned.widths()
    for earlier, later in zip(widths, widths[1:], strict=False):
        assert all(later[k] <= earlier[k] for k in earlier)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width_ratios": 0.0},
        {"width_ratios": 1.0},
        {"width_ratios": 1.5},
        {"width_ratios": {"hidden": -0.2}},
        {"macs_budget": 0.0},
        {"macs_budget": 1.0},
        {"method": PruneMethod.UNSTRUCTURED, "sparsity": 1.0},
    ],
)
def test_prune_config_refuses_fraction_outside_open_unit_interval(kwargs: dict) -> None:
    with pytest.raises(ModelsError, match=r"outside \(0, 1\)"):
        PruneConfig(**kwargs).validate()


def test_prune_config_refuses_ratios_and_budget_together() -> None:
    with pytest.raises(ModelsError, match="not both"):
        PruneConfig(width_ratios=0.5, macs_budget=0.1).validate()


def test_widths_for_macs_budget_refuses_budget_that_removes_every_channel() -> None:
    model = create_model("simple_cnn")
    with pytest.raises(ModelsError, match=r"would remove every channel of conv1 \(conv_channels\)"):
        widths_for_macs_budget(model, 0.001)


def test_widths_for_ratios_refuses_ratio_that_removes_every_channel() -> None:
    model = create_model("bn_cnn")
    with pytest.raises(ModelsError, match=r"remove every channel of conv1 \(conv1_channels\)"):
        widths_for_ratios(model, {"conv1_channels": 0.01})


def test_widths_for_ratios_refuses_unknown_width_name() -> None:
    with pytest.raises(ModelsError, match="unknown width.*hiden.*conv_channels, hidden"):
        widths_for_ratios(create_model("simple_cnn"), {"hiden": 0.5})


def test_prune_structured_refuses_empty_keep() -> None:
    model = create_model("tiny_cnn")
    with pytest.raises(ModelsError, match="remove every channel of fc1"):
        prune_structured(model, {"hidden": torch.tensor([], dtype=torch.long)})


@pytest.mark.parametrize("scope", [PruneScope.GLOBAL, PruneScope.PER_LAYER])
def test_prune_model_unstructured_reaches_target_sparsity_and_bakes_masks(
    scope: PruneScope,
) -> None:
    model = random_model("simple_cnn")
    cfg = PruneConfig(method=PruneMethod.UNSTRUCTURED, sparsity=0.75, scope=scope)
    pruned, metrics = prune_model_unstructured(model, cfg)
    report = metrics["sparsity_per_layer"]
    assert report == sparsity_report(pruned)
    assert report["total"] == pytest.approx(0.75, abs=1e-3)
    if scope is PruneScope.PER_LAYER:
        for name in ("conv1", "fc1", "fc2"):
            assert report[name] == pytest.approx(0.75, abs=0.01), name
    # prune.remove semantics: a plain `weight` parameter, no masks or hooks left behind.
    keys = set(pruned.state_dict())
    assert "fc1.weight" in keys and not any(k.endswith(("_orig", "_mask")) for k in keys)
    assert not pruned.fc1._forward_pre_hooks
    assert pruned.widths() == model.widths() and count_macs(pruned) == count_macs(model)
    # The honest benefit: the compressed state dict shrinks.
    assert gzip_state_bytes(pruned) < 0.6 * gzip_state_bytes(model)
    assert float((model.fc1.weight != 0).float().mean()) == 1.0  # source untouched


def test_prune_model_unstructured_threshold_zeroes_small_weights() -> None:
    model = random_model("tiny_cnn")
    cfg = PruneConfig(method=PruneMethod.UNSTRUCTURED, threshold=0.05)
    pruned, _ = prune_model_unstructured(model, cfg)
    for name in ("conv1", "fc1", "fc2"):
        before = model.get_submodule(name).weight
        after = pruned.get_submodule(name).weight
        small = before.abs() <= 0.05
        assert torch.all(after[small] == 0) and torch.equal(after[~small], before[~small])


def test_prune_model_unstructured_iterative_steps_reach_target() -> None:
    cfg = PruneConfig(method=PruneMethod.UNSTRUCTURED, sparsity=0.9, steps=3)
    pruned, metrics = prune_model_unstructured(random_model("simple_cnn"), cfg)
    sparsities = [s["sparsity"] for s in metrics["schedule"]]
    assert sparsities == pytest.approx([0.3, 0.6, 0.9], abs=1e-3)
    assert metrics["sparsity"] == pytest.approx(0.9, abs=1e-3)


@pytest.mark.slow
def test_pruned_from_checkpoint_on_real_mnist(
    trained_checkpoint: Path, mnist_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "student.pt"
    artifact = pruned_from_checkpoint(trained_checkpoint, PruneConfig(), out, data_dir=mnist_root)
    m = artifact.metrics
    assert m["macs_before"] == 888_192 and m["macs_after"] == 87_922
    assert m["macs_after"] <= 0.1 * m["macs_before"]
    assert m["params_after"] < m["params_before"]
    assert m["widths_after"] == {"conv_channels": 7, "hidden": 38}
    assert m["val_top1_before"] > 0.9  # 0.3-epoch teacher (~97 %)
    assert 0.0 <= m["val_top1_pruned"] <= 1.0
    meta = read_checkpoint_meta(out)
    assert meta.widths == {"conv_channels": 7, "hidden": 38}
    assert meta.parent_sha256 == artifact.parent_sha256
    model, _ = load_checkpoint(out)
    assert count_macs(model) == 87_922
