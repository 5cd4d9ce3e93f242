"""Student search spaces (`models.search_space`): the registry, the built-in spaces, width
multipliers, and the patch_cnn architecture the MNIST space draws from."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from onnxship.models.checkpoint import load_checkpoint, save_checkpoint
from onnxship.models.errors import ModelsError
from onnxship.models.flops import count_macs
from onnxship.models.registry import create_model
from onnxship.models.search_space import (
    PRUNED,
    StudentCandidate,
    TeacherInfo,
    WidthMultiplierSpace,
    default_space,
    list_spaces,
    register_space,
    scale_widths,
    space_candidates,
)

MNIST_TEACHER = TeacherInfo("simple_cnn", {"conv_channels": 32, "hidden": 128})


def test_patch_cnn_gives_logits_and_rebuilds_from_its_widths() -> None:
    model = create_model("patch_cnn", kernel=4, stride=4, conv_channels=16, hidden=64).eval()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert model.fc1.in_features == 16 * 7 * 7
    rebuilt = create_model("patch_cnn", **model.widths())
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


def test_patch_cnn_counts_conv_and_linear_macs() -> None:
    model = create_model("patch_cnn", kernel=4, stride=4, conv_channels=16, hidden=64)
    assert count_macs(model) == 7 * 7 * 16 * 16 + 16 * 49 * 64 + 64 * 10


def test_patch_cnn_refuses_a_stride_larger_than_its_kernel() -> None:
    with pytest.raises(ModelsError, match="stride <= kernel"):
        create_model("patch_cnn", kernel=2, stride=4)


def test_patch_cnn_checkpoint_round_trips_by_name_and_widths(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("patch_cnn", kernel=6, stride=4, conv_channels=8, hidden=16)
    save_checkpoint(model, tmp_path / "s.pt", stage="search")
    loaded, meta = load_checkpoint(tmp_path / "s.pt")
    assert meta.arch == "patch_cnn"
    assert meta.widths == {"kernel": 6, "stride": 4, "conv_channels": 8, "hidden": 16}
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_space_registry_holds_the_builtin_spaces_and_refuses_a_second_registration() -> None:
    assert {"mnist_students", "width_multipliers"} <= set(list_spaces())
    with pytest.raises(ModelsError, match="registered twice"):
        register_space("mnist_students")(lambda teacher: [])


def test_register_space_adds_a_space_in_one_registration() -> None:
    @register_space("test_one_candidate")
    def one(teacher: TeacherInfo) -> list[StudentCandidate]:
        return [StudentCandidate("tiny", "tiny_cnn", {"conv_channels": 2, "hidden": 4})]

    (cand,) = space_candidates("test_one_candidate", MNIST_TEACHER)
    assert cand.build()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_space_candidates_lists_known_spaces_when_name_is_unknown() -> None:
    with pytest.raises(ModelsError, match="unknown search space 'nope'.*mnist_students") as info:
        space_candidates("nope", MNIST_TEACHER)
    assert info.value.exit_code == 2


def test_mnist_space_has_the_pruned_teacher_and_strided_stems() -> None:
    assert default_space(MNIST_TEACHER) == "mnist_students"
    cands = space_candidates("auto", MNIST_TEACHER)
    assert [c.origin for c in cands].count(PRUNED) == 1
    stems = {(c.widths["kernel"], c.widths["stride"]) for c in cands if c.arch == "patch_cnn"}
    assert (4, 4) in stems and any(k > s for k, s in stems)
    for cand in cands:
        if cand.origin != PRUNED:
            assert cand.build()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_width_multipliers_is_the_default_for_other_models() -> None:
    teacher = TeacherInfo("bn_cnn", {"conv1_channels": 16, "conv2_channels": 32, "hidden": 128})
    assert default_space(teacher) == "width_multipliers"
    cands = space_candidates("auto", teacher)
    half = next(c for c in cands if c.name == "width x0.5")
    assert half.widths == {"conv1_channels": 8, "conv2_channels": 16, "hidden": 64}
    assert half.build()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_scale_widths_scales_only_width_like_integers() -> None:
    scaled = scale_widths({"width": 16, "hidden_dim": 30, "depth": 4, "dropout": 0.5}, 0.5)
    assert scaled == {"width": 8, "hidden_dim": 15, "depth": 4, "dropout": 0.5}
    assert scale_widths({"channels": 3}, 0.1) == {"channels": 1}


def test_scale_widths_leaves_the_inputs_and_the_classes_alone() -> None:
    """in_channels / input_dim / in_features are the data's, classes the task's: scaling them
    would build a model that no longer takes the data (3 RGB channels -> 1)."""
    kwargs = {"in_channels": 3, "input_dim": 64, "in_features": 32, "num_classes": 10,
              "out_features": 10, "channels": 32, "hidden_dim": 128}  # fmt: skip
    scaled = scale_widths(kwargs, 0.25)
    assert scaled == {**kwargs, "channels": 8, "hidden_dim": 32}


def test_width_multiplier_space_builds_from_a_create_model_style_callable() -> None:
    factory = functools.partial(create_model, "simple_cnn")
    space = WidthMultiplierSpace(factory, {"conv_channels": 32, "hidden": 128}, (0.25, 0.5))
    cands = space.candidates()
    assert [c.widths for c in cands] == [
        {"conv_channels": 8, "hidden": 32},
        {"conv_channels": 16, "hidden": 64},
    ]
    model = cands[0].build()
    assert model.widths() == {"conv_channels": 8, "hidden": 32}


def test_width_multiplier_space_names_the_fix_when_nothing_is_width_like() -> None:
    space = WidthMultiplierSpace(functools.partial(create_model, "simple_cnn"), {"depth": 3})
    with pytest.raises(ModelsError, match="width_keys"):
        space.candidates()


def test_width_multipliers_space_keeps_the_pruned_teacher_when_nothing_is_width_like(
    caplog: pytest.LogCaptureFixture,
) -> None:
    teacher = TeacherInfo("pkg.mod:tiny", {"classes": 2}, task="custom",
                          build=lambda **kw: create_model("tiny_cnn"))  # fmt: skip
    with caplog.at_level("WARNING"):
        cands = space_candidates("auto", teacher)
    assert [c.origin for c in cands] == [PRUNED]
    assert "width = 16" in caplog.text


def test_width_multiplier_space_imports_a_module_function_factory() -> None:
    space = WidthMultiplierSpace(
        "onnxship.models.registry:simple_cnn", {"conv_channels": 32, "hidden": 128}, (0.5,)
    )
    (cand,) = space.candidates()
    assert cand.build().widths() == {"conv_channels": 16, "hidden": 64}


def test_dominates_compares_widths_of_one_stem_only() -> None:
    wide = StudentCandidate(
        "w", "patch_cnn", {"kernel": 4, "stride": 4, "conv_channels": 32, "hidden": 64}
    )
    narrow = StudentCandidate(
        "n", "patch_cnn", {"kernel": 4, "stride": 4, "conv_channels": 16, "hidden": 64}
    )
    other_stem = StudentCandidate(
        "o", "patch_cnn", {"kernel": 7, "stride": 7, "conv_channels": 16, "hidden": 64}
    )
    assert wide.dominates(narrow)
    assert not narrow.dominates(wide)
    assert not wide.dominates(other_stem)
