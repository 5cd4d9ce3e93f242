"""Knowledge distillation: the loss by hand, a frozen teacher, the ablation, bad inputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from onnxship.models.checkpoint import load_checkpoint, save_checkpoint
from onnxship.models.distill import (
    DistillConfig,
    distill_student,
    distilled_from_checkpoints,
    kd_loss,
    teacher_logits,
)
from onnxship.models.errors import ModelsError
from onnxship.models.loop import SgdConfig
from onnxship.models.prune import Importance, PruneConfig, pruned_from_checkpoint, select_channels
from onnxship.models.prune import prune_structured as prune_to
from onnxship.models.registry import create_model


def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def test_kd_loss_equals_hand_computed_value() -> None:
    zs = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
    zt = [[2.0, 0.5, -0.5], [0.0, 3.0, 1.0]]
    y = [0, 2]
    T, alpha = 2.0, 0.7
    kl = 0.0
    ce = 0.0
    for s_row, t_row, label in zip(zs, zt, y, strict=True):
        p_t, p_s = _softmax(t_row, T), _softmax(s_row, T)
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
        ce += -math.log(_softmax(s_row, 1.0)[label])
    expected = alpha * T * T * kl / 2 + (1 - alpha) * ce / 2
    got = kd_loss(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), T, alpha)
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_kd_loss_reduces_to_cross_entropy_at_alpha_zero() -> None:
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    y = torch.randint(0, 10, (5,), generator=g)
    torch.testing.assert_close(kd_loss(zs, zt, y, 4.0, 0.0), F.cross_entropy(zs, y))
    # KL(p || p) = 0 up to float32 rounding of log(softmax) vs log_softmax, scaled by T^2 = 16.
    assert float(kd_loss(zt, zt, y, 4.0, 1.0)) == pytest.approx(0.0, abs=1e-4)


def test_kd_loss_sends_no_gradient_to_the_teacher() -> None:
    teacher = create_model("tiny_cnn")
    student = create_model("tiny_cnn", conv_channels=2, hidden=4)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss = kd_loss(student(x), teacher(x), y, 4.0, 0.9)  # teacher logits built WITH a graph
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_distill_student_keeps_teacher_frozen_and_in_eval() -> None:
    torch.manual_seed(0)
    teacher = create_model("bn_cnn", conv1_channels=4, conv2_channels=4, hidden=8).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = prune_to(teacher, select_channels(teacher, {"hidden": 4}, Importance.L1))
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    cfg = DistillConfig(sgd=SgdConfig(epochs=2, batch_size=16, lr=0.05))
    stats = distill_student(student, teacher, x, y, cfg, progress=False)
    assert stats["steps"] == 8
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():  # BN running stats too
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())


def test_distill_student_with_the_teacher_online_equals_cached_logits_without_augmentation() -> (
    None
):
    """The one KD trainer's two teacher modes give the same soft targets when the images are
    not augmented: cached logits (computed once) vs the teacher run on every batch."""
    torch.manual_seed(0)
    teacher = create_model("tiny_cnn", conv_channels=4, hidden=8)
    x, y = torch.randn(96, 1, 28, 28), torch.randint(0, 10, (96,))
    cfg = DistillConfig(sgd=SgdConfig(epochs=2, batch_size=32, lr=0.05))
    students = []
    for online in (False, True):
        torch.manual_seed(1)
        student = create_model("tiny_cnn", conv_channels=2, hidden=4)
        distill_student(student, teacher, x, y, cfg, teacher_online=online, progress=False)
        students.append(student.state_dict())
    for key, value in students[0].items():
        torch.testing.assert_close(value, students[1][key], rtol=1e-4, atol=1e-5)


def test_distill_student_augments_every_batch_with_the_loop_s_generator() -> None:
    """`augment` (the search's +-2 px shifts) runs on every batch with train_sgd's seeded
    generator, so a run stays deterministic; cached logits of the wrong shape are refused."""
    from onnxship.models.train import shift_batch

    torch.manual_seed(0)
    teacher = create_model("tiny_cnn", conv_channels=4, hidden=8)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    cached = teacher_logits(teacher, x)
    cfg = DistillConfig(sgd=SgdConfig(epochs=1, batch_size=32, lr=0.05))
    runs = []
    for _ in range(2):
        calls: list[torch.Generator] = []

        def augment(
            xb: torch.Tensor, generator: torch.Generator, calls: list = calls
        ) -> torch.Tensor:
            calls.append(generator)
            return shift_batch(xb, generator)

        torch.manual_seed(1)
        student = create_model("tiny_cnn", conv_channels=2, hidden=4)
        stats = distill_student(student, teacher, x, y, cfg, cached_logits=cached,
                                augment=augment, progress=False)  # fmt: skip
        assert stats["steps"] == 2 and len(calls) == 2
        runs.append(student.state_dict())
    for key, value in runs[0].items():
        assert torch.equal(value, runs[1][key]), key
    with pytest.raises(ModelsError, match="cached teacher logits"):
        distill_student(student, teacher, x, y, cfg, cached_logits=cached[:10], progress=False)


def test_teacher_logits_builds_no_graph() -> None:
    teacher = create_model("tiny_cnn")
    logits = teacher_logits(teacher, torch.randn(5, 1, 28, 28), batch_size=2)
    assert logits.shape == (5, 10) and not logits.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be a number > 0"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"sgd": SgdConfig(epochs=0)}, "epochs must be > 0"),
    ],
)
def test_distill_config_refuses_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ModelsError, match=message):
        DistillConfig(**kwargs).validate()


def _tiny_pair(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    teacher = create_model("tiny_cnn")
    teacher_path = tmp_path / "teacher.pt"
    save_checkpoint(teacher, teacher_path, stage="train", seed=0)
    student = prune_to(teacher, select_channels(teacher, {"conv_channels": 2}, Importance.L1))
    student_path = tmp_path / "student.pt"
    save_checkpoint(student, student_path, stage="prune", seed=0)
    return student_path, teacher_path


def test_distilled_from_checkpoints_refuses_missing_teacher(tmp_path: Path) -> None:
    student, _ = _tiny_pair(tmp_path)
    with pytest.raises(ModelsError, match="needs a teacher checkpoint and none was given"):
        distilled_from_checkpoints(student, None, DistillConfig(), tmp_path / "out.pt")
    with pytest.raises(ModelsError, match=r"teacher checkpoint .*nope\.pt does not exist"):
        distilled_from_checkpoints(
            student, tmp_path / "nope.pt", DistillConfig(), tmp_path / "o.pt"
        )


def test_distilled_from_checkpoints_refuses_teacher_of_other_architecture(tmp_path: Path) -> None:
    student, _ = _tiny_pair(tmp_path)
    other = tmp_path / "bn.pt"
    save_checkpoint(create_model("bn_cnn"), other, stage="train")
    with pytest.raises(
        ModelsError, match="teacher .*bn.pt is a bn_cnn but student .* is a tiny_cnn"
    ):
        distilled_from_checkpoints(student, other, DistillConfig(), tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_distilled_from_checkpoints_refuses_missing_mnist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    student, teacher = _tiny_pair(tmp_path)
    monkeypatch.setenv("ONNXSHIP_NO_DOWNLOAD", "1")
    empty = tmp_path / "no-data"
    empty.mkdir()
    with pytest.raises(ModelsError, match=r"no-data.*train-images-idx3-ubyte"):
        distilled_from_checkpoints(
            student, teacher, DistillConfig(), tmp_path / "out.pt", data_dir=empty
        )


@pytest.mark.slow
def test_distill_with_ablation_on_real_mnist(
    trained_checkpoint: Path, mnist_root: Path, tmp_path: Path
) -> None:
    """Prune the 0.3-epoch teacher to 10 % of its MACs, distill 0.2 epoch: the plumbing and the
    ablation on real data (accuracies are far from the defaults' at this budget). In one
    process the KD run and the ablation train at once, one core each; both are timed and the
    record says so."""
    pruned = tmp_path / "pruned.pt"
    pruned_from_checkpoint(trained_checkpoint, PruneConfig(), pruned, data_dir=mnist_root)
    # lr 0.02: with a 21-step warm-up to 0.05, a 0.3-epoch teacher's 90 %-pruned student can
    # lose all its ReLUs (measured: 11 % val); the defaults (4 epochs) warm up over 430 steps.
    cfg = DistillConfig(sgd=SgdConfig(epochs=0.2, lr=0.02), seed=3)
    out = tmp_path / "student.pt"
    artifact = distilled_from_checkpoints(
        pruned, trained_checkpoint, cfg, out, data_dir=mnist_root, progress=False
    )
    m = artifact.metrics
    for key in ("test_top1_kd", "test_top1_no_kd", "val_top1_kd", "val_top1_no_kd"):
        assert 0.90 <= m[key] <= 1.0, (key, m[key])  # 86 steps from the pruned weights
    assert m["teacher_test_top1"] > 0.95
    assert m["steps"] == 86  # ceil(55000 / 128) * 0.2, the same for KD and the ablation
    assert m["macs_ratio"] <= 0.1
    assert m["kd_gain_test_pp"] == pytest.approx(
        100 * (m["test_top1_kd"] - m["test_top1_no_kd"]), abs=1e-3
    )
    student, meta = load_checkpoint(out)
    assert meta.widths == {"conv_channels": 7, "hidden": 38}
    assert meta.parent_sha256 == artifact.parent_sha256
    assert m["side_by_side"] is (torch.get_num_threads() > 1)
    assert m["kd_wall_s"] > 0 and m["no_kd_wall_s"] > 0
    assert m["kd_and_ablation_wall_s"] >= max(m["kd_wall_s"], m["no_kd_wall_s"]) - 1e-3
    assert m["kd_and_ablation_cpu_s"] > 0
