"""The train stage: config validation, AMP refusal, shift augmentation, determinism."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from onnxship.core.env import NATIVE_BF16_FLAGS, has_native_bf16
from onnxship.models.checkpoint import load_checkpoint, sidecar_path
from onnxship.models.errors import ModelsError
from onnxship.models.loop import AmpMode, LrSchedule, SgdConfig
from onnxship.models.train import (
    DEFAULT_SGD,
    Augment,
    TrainConfig,
    check_amp,
    shift_batch,
    trained_from_data,
)

NO_BF16_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})  # a Zen 2 / Haswell box
WITH_BF16_FLAGS = NO_BF16_FLAGS | {"avx512f", "avx512_bf16"}

# ~0.02 epoch of tiny_cnn: 9 steps of batch 128 on the 55,000 'fit' images.
TINY = TrainConfig(
    arch="tiny_cnn",
    sgd=replace(DEFAULT_SGD, epochs=0.02, batch_size=128, lr=0.05),
    seed=3,
    augment=Augment.SHIFT,
)


def test_train_config_accepts_widths_mapping_and_enum_values_as_strings() -> None:
    cfg = TrainConfig(arch="simple_cnn", widths={"hidden": 64, "conv_channels": 8}, augment="none")
    assert cfg.widths == (("conv_channels", 8), ("hidden", 64))
    assert cfg.widths_dict == {"conv_channels": 8, "hidden": 64}
    assert cfg.augment is Augment.NONE and cfg.amp is AmpMode.OFF
    hash(cfg)  # frozen and hashable
    record = cfg.to_json()
    assert record["widths"] == {"conv_channels": 8, "hidden": 64}
    assert record["sgd"]["schedule"] == "onecycle" and record["augment"] == "none"
    json.dumps(record)


def test_train_config_from_dict_reads_flat_sgd_keys_and_refuses_unknown_ones() -> None:
    cfg = TrainConfig.from_dict(
        {"arch": "bn_cnn", "epochs": 2, "lr": 0.02, "schedule": "cosine", "augment": "shift"}
    )
    assert cfg.arch == "bn_cnn" and cfg.sgd.epochs == 2 and cfg.sgd.lr == 0.02
    assert cfg.sgd.schedule is LrSchedule.COSINE
    assert cfg.sgd.batch_size == DEFAULT_SGD.batch_size
    with pytest.raises(ModelsError, match="unknown key 'epoch'.*epochs"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(
        ModelsError, match="schedule='step' is not one of onecycle, cosine, constant"
    ):
        TrainConfig.from_dict({"schedule": "step"})


@pytest.mark.parametrize("epochs", [0, -1, float("nan")])
def test_train_config_validate_refuses_epochs_when_not_positive(epochs: float) -> None:
    cfg = replace(TINY, sgd=replace(TINY.sgd, epochs=epochs))
    with pytest.raises(ModelsError, match="epochs must be > 0") as info:
        cfg.validate()
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (
            {"arch": "lenet"},
            "unknown architecture 'lenet'; known architectures: bn_cnn, patch_cnn, simple_cnn",
        ),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"sgd": SgdConfig(batch_size=0)}, "batch size must be >= 1"),
        ({"sgd": SgdConfig(lr=-0.1)}, "learning rate must be > 0"),
        ({"widths": {"hidden": 0}}, "width hidden=0 must be a positive integer"),
        ({"device": "tpu"}, "device 'tpu' is not"),
    ],
)
def test_train_config_validate_names_the_bad_value(change: dict, pattern: str) -> None:
    with pytest.raises(ModelsError, match=pattern):
        replace(TINY, **change).validate()


def test_train_config_refuses_unknown_augment_listing_choices() -> None:
    with pytest.raises(ModelsError, match="augment='flip' is not one of none, shift"):
        TrainConfig(augment="flip")


def test_check_amp_refuses_bf16_when_cpu_lacks_native_bf16() -> None:
    with pytest.raises(ModelsError) as info:
        check_amp(AmpMode.BF16, "cpu", cpu_flags=NO_BF16_FLAGS)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "37x slower" in message
    assert all(flag in message for flag in NATIVE_BF16_FLAGS)
    assert "drop --amp" in message and "--device cuda" in message


def test_check_amp_allows_bf16_when_cpu_has_native_bf16() -> None:
    check_amp(AmpMode.BF16, "cpu", cpu_flags=WITH_BF16_FLAGS)
    check_amp(AmpMode.BF16, "cpu", cpu_flags={"amx_bf16"})
    check_amp(AmpMode.OFF, "cpu", cpu_flags=NO_BF16_FLAGS)


def test_check_amp_refuses_fp16_on_cpu() -> None:
    with pytest.raises(ModelsError, match="fp16 on the CPU is not supported"):
        check_amp(AmpMode.FP16, "cpu", cpu_flags=WITH_BF16_FLAGS)


def test_trained_from_data_refuses_amp_before_reading_data_when_cpu_lacks_bf16(
    tmp_path: Path,
) -> None:
    cfg = replace(TINY, amp=AmpMode.BF16)
    with pytest.raises(ModelsError, match="37x slower"):
        # A data folder that does not exist: the refusal must come first.
        trained_from_data(
            cfg, tmp_path / "ck" / "m.pt", data_dir=tmp_path / "no-data", cpu_flags=NO_BF16_FLAGS
        )
    assert list(tmp_path.iterdir()) == []


def test_shift_batch_moves_each_image_by_at_most_two_pixels_filling_background() -> None:
    gen = torch.Generator().manual_seed(0)
    fill = -5.0
    x = torch.zeros(64, 1, 28, 28)
    x[:, 0, 10:18, 10:18] = torch.arange(64, dtype=torch.float32).view(64, 1, 1) + 1
    out = shift_batch(x, gen, max_shift=2, fill=fill)
    assert out.shape == x.shape
    shifts = set()
    for i in range(64):
        # Re-derive the shift from where the square landed and compare with a naive shift.
        rows = torch.nonzero(out[i, 0] == i + 1)
        dy, dx = int(rows[:, 0].min()) - 10, int(rows[:, 1].min()) - 10
        assert abs(dy) <= 2 and abs(dx) <= 2
        shifts.add((dy, dx))
        padded = torch.nn.functional.pad(x[i : i + 1], (2, 2, 2, 2), value=fill)
        expected = padded[:, :, 2 - dy : 30 - dy, 2 - dx : 30 - dx]
        torch.testing.assert_close(out[i : i + 1], expected, rtol=0, atol=0)
    assert len(shifts) > 10  # per-sample shifts, not one shift for the whole batch


def test_shift_batch_is_reproducible_for_a_seeded_generator() -> None:
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    a = shift_batch(x, torch.Generator().manual_seed(5))
    b = shift_batch(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
def test_trained_from_data_same_seed_gives_same_sha256_and_other_seed_differs(
    tmp_path: Path, mnist_root: Path
) -> None:
    first = trained_from_data(TINY, tmp_path / "a.pt", data_dir=mnist_root, progress=False)
    second = trained_from_data(TINY, tmp_path / "b.pt", data_dir=mnist_root, progress=False)
    other = trained_from_data(
        replace(TINY, seed=4), tmp_path / "c.pt", data_dir=mnist_root, progress=False
    )
    assert first.sha256 == second.sha256
    assert other.sha256 != first.sha256

    m = first.metrics
    for key in ("test_top1", "val_top1", "epochs", "steps", "train_wall_s", "threads"):
        assert key in m
    assert m["steps"] == 9 and m["epochs"] == 0.02
    assert m["threads"] == torch.get_num_threads()
    assert 0.0 <= m["test_top1"] <= 1.0 and 0.0 <= m["val_top1"] <= 1.0
    assert first.stage == "train" and first.config["arch"] == "tiny_cnn"

    model, meta = load_checkpoint(first.path)
    assert meta.seed == 3 and meta.metrics["steps"] == 9
    assert meta.weights_sha256 == first.sha256
    assert sidecar_path(first.path).is_file()
    assert model.widths() == {"conv_channels": 4, "hidden": 8}


def test_trained_from_data_refuses_checkpoint_path_without_pt_suffix(
    tmp_path: Path, mnist_root: Path
) -> None:
    with pytest.raises(ModelsError, match=r"must end in \.pt"):
        trained_from_data(TINY, tmp_path / "model.json", data_dir=mnist_root)


@pytest.mark.skipif(not has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_trained_from_data_runs_bf16_autocast_when_cpu_has_native_bf16(
    tmp_path: Path, mnist_root: Path
) -> None:
    art = trained_from_data(
        replace(TINY, amp=AmpMode.BF16), tmp_path / "bf16.pt", data_dir=mnist_root, progress=False
    )
    assert art.metrics["amp"] == "bf16" and art.metrics["steps"] == 9
    model, _ = load_checkpoint(art.path)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for torch")
@pytest.mark.parametrize("amp", [AmpMode.OFF, AmpMode.FP16, AmpMode.BF16])
def test_trained_from_data_trains_on_cuda_with_amp(
    tmp_path: Path, mnist_root: Path, amp: AmpMode
) -> None:
    if amp is AmpMode.BF16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    art = trained_from_data(
        replace(TINY, amp=amp, device="cuda"),
        tmp_path / "g.pt",
        data_dir=mnist_root,
        progress=False,
    )
    assert art.metrics["device"].startswith("cuda") and art.metrics["amp"] == amp.value
    model, _ = load_checkpoint(art.path)
    assert next(model.parameters()).device.type == "cpu"


def test_side_by_side_training_gives_the_weights_of_training_in_turn() -> None:
    from onnxship.models.loop import side_by_side, train_sgd
    from onnxship.models.registry import create_model

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 1, 28, 28, generator=gen), torch.randint(0, 10, (512,), generator=gen)
    sgd = SgdConfig(epochs=1.0, batch_size=64, lr=0.05)

    def fresh(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)  # the global RNG: models are built before the threads start
        return create_model("tiny_cnn")

    def job(seed: int, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[int]]:
        train_sgd(model, x, y, sgd, seed=seed, augment=shift_batch, progress=False)
        return model.state_dict(), [torch.get_num_threads()]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums depend on the thread count: compare like with like
    try:
        in_turn = [job(1, fresh(1)), job(2, fresh(2))]
    finally:
        torch.set_num_threads(threads)
    m1, m2 = fresh(1), fresh(2)
    beside = side_by_side([lambda: job(1, m1), lambda: job(2, m2)], workers=2)
    for (a, _), (b, threads) in zip(in_turn, beside, strict=True):
        assert threads == [1]  # one intra-op thread per job when side by side
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not torch.equal(in_turn[0][0]["fc2.weight"], in_turn[1][0]["fc2.weight"])


def test_trained_from_data_saves_contiguous_weights_after_channels_last_training(
    tmp_path: Path, mnist_root: Path
) -> None:
    art = trained_from_data(TINY, tmp_path / "t.pt", data_dir=mnist_root, progress=False)
    assert art.metrics["channels_last"] is True
    assert art.metrics["train_cpu_s"] > 0
    state = torch.load(tmp_path / "t.pt", weights_only=True)
    assert all(t.is_contiguous() for t in state.values())


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8])
def test_train_sgd_onecycle_runs_any_number_of_steps(steps: int) -> None:
    from onnxship.models.loop import train_sgd
    from onnxship.models.registry import create_model

    x, y = torch.randn(16 * steps, 1, 28, 28), torch.randint(0, 10, (16 * steps,))
    stats = train_sgd(create_model("tiny_cnn"), x, y, SgdConfig(epochs=1.0, batch_size=16),
                      seed=0, progress=False)  # fmt: skip
    assert stats["steps"] == steps
