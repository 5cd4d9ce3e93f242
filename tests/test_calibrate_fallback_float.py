"""The accuracy fallback never ships a float model as INT8.

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
from onnxship.calibrate.quantize import LatencyConfig, QuantizeConfig, int8_from_onnx
from onnxship.calibrate.recipes import exact_recipe_on
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
