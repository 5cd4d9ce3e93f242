"""The accuracy fallback never ships a float model as INT8, and runs when the budget admits
only recipes that cannot be faster (`fallback_needed`).

Found on torchvision mobilenet_v2 at 224x224 (tests/real_models.py): every recipe was outside
the agreement budget, the fallback started from a '-linear' recipe (only the Gemm quantized),
put the Gemm back in float and wrote an "INT8" file with no quantized node at all (0 % of
MACs in integer kernels, which `verify` refuses), exit 0. Such a fallback row is now an error
row, and with nothing else within the budget `quantize` exits 1 as documented.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.latency_race import FP32_ROW, Candidate
from onnxship.calibrate.quantize import (
    LatencyConfig,
    QuantizeConfig,
    fallback_needed,
    int8_from_onnx,
)
from onnxship.calibrate.recipes import exact_recipe_on, parse_recipe
from onnxship.core.env import detected_integer_class

LINEAR = exact_recipe_on("qdq-u8s8-perchannel-minmax-linear", detected_integer_class()).name


def _conv_gemm_onnx(folder: Path) -> Path:
    """Conv -> ReLU -> Flatten -> Linear, output [batch, 4, 2] (not class scores: the budget
    is output SQNR)."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.fc = torch.nn.Linear(4 * 6 * 6, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(torch.relu(self.conv(x)), 1)).reshape(-1, 4, 2)

    torch.manual_seed(0)
    path = folder / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(2, 1, 8, 8),), str(path), input_names=["input"],
                      output_names=["out"], dynamic_axes={"input": {0: "batch"}, "out": {0: "batch"}},
                      opset_version=18, dynamo=False)  # fmt: skip
    return path


def test_fallback_that_leaves_every_quantized_node_in_float_is_not_an_int8_model(
    tmp_path: Path,
) -> None:
    src = _conv_gemm_onnx(tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((32, 1, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "val.npz", x=rng.standard_normal((64, 1, 8, 8)).astype(np.float32))
    # 120 dB: no INT8 Gemm reaches it, so the fallback puts the only quantized node in float
    cfg = QuantizeConfig(recipe=LINEAR, min_sqnr_db=120.0,
                         latency=LatencyConfig(batch_sizes=(1,), seconds_per_batch_size=0.05,
                                               min_iterations=2))  # fmt: skip
    with pytest.raises(CalibrateError) as info:
        int8_from_onnx(src, cfg, tmp_path / "out" / "int8.onnx", calib_npz=tmp_path / "calib.npz",
                       val_npz=tmp_path / "val.npz")  # fmt: skip
    assert info.value.exit_code == 1
    message = str(info.value)
    assert "no INT8 recipe" in message and "+fallback" not in message
    assert f"best found {LINEAR} with" in message
    assert not (tmp_path / "out" / "int8.onnx").exists()


def _row(name: str, val: float, speedup: tuple[float, float, float] | None) -> Candidate:
    """A scored candidate; `speedup` (ratio, CI low, CI high) at batch 1, None: not timed."""
    row = Candidate(parse_recipe(name), name, Path(f"{name}.onnx"), [])
    row.val_top1 = val
    if speedup is not None:
        ratio, lo, hi = speedup
        row.latency = {"1": {"speedup": ratio, "speedup_ci": [lo, hi], "min_ratio": 1 / ratio}}
    return row


def test_fallback_runs_when_only_linear_recipes_within_budget_and_none_is_faster() -> None:
    """ResNet-18 at 224x224 on 64 val images: every full recipe lost an image, the Gemm-only
    ('-linear') recipes held the budget at FP32 speed; the fallback (one conv in float) then
    held it at 3.5x."""
    cfg = QuantizeConfig()
    fp32 = Candidate(None, FP32_ROW, Path("fp32.onnx"), [])
    fp32.val_top1 = 0.9375
    full = _row("qdq-u8s8-perchannel-minmax", 0.921875, None)  # outside: never timed
    linear = _row("qdq-u8s8-perchannel-minmax-linear", 0.9375, (1.0, 0.9, 1.1))
    assert fallback_needed([full, linear], fp32, cfg, 0.003)
    # a linear recipe confidently faster (a model whose MACs are in Gemm/MatMul): no fallback
    fast_linear = _row("qdq-u8s8-perchannel-minmax-linear", 0.9375, (1.8, 1.6, 2.0))
    assert not fallback_needed([full, fast_linear], fp32, cfg, 0.003)
    # a full recipe within the budget, even if not faster: as before, no fallback
    full_within = _row("qdq-u8s8-pertensor-minmax", 0.9375, (1.0, 0.9, 1.1))
    assert not fallback_needed([full_within, linear], fp32, cfg, 0.003)
    # only linear recipes in the grid: nothing to fall back from
    assert not fallback_needed([linear], fp32, cfg, 0.003)
    # nothing within the budget: as before, the fallback runs
    assert fallback_needed([full], fp32, cfg, 0.003)
