"""Real-size torchvision networks as FP32 `.onnx` + calibration / validation `.npz` files.

`resnet18` (residual adds, BatchNorm) and `mobilenet_v2` (depthwise convolutions, ReLU6) are
built with `weights=None` (no download); their BatchNorm statistics are re-estimated on a few
batches of image-like random data (smooth noise: low-resolution noise upsampled), so that the
activations have the scale of a trained network instead of the init's running mean 0 / var 1.
They are exported with plain `torch.onnx.export`, as a user would.

Used by tests/test_real_models.py (small inputs) and, at 224x224, as a benchmark:
`python tests/real_models.py OUT_DIR --size 224 --calib 64 --val 64`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ARCHS = ("resnet18", "mobilenet_v2")


def image_like(n: int, size: int, seed: int) -> np.ndarray:
    """`n` smooth random RGB images (N, 3, size, size), roughly normalised like ImageNet."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, max(size // 16, 2), max(size // 16, 2), generator=gen)
    fine = 0.3 * torch.randn(n, 3, size, size, generator=gen)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear") + fine
    return x.numpy().astype(np.float32)


def build(arch: str, size: int, seed: int = 0):  # -> torch.nn.Module
    """The torchvision network with re-estimated BatchNorm statistics, in eval mode."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=1000)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the re-estimation batches
    model.train()
    with torch.no_grad():
        for i in range(2):
            model(torch.from_numpy(image_like(16, size, seed=1000 + i)))
    return model.eval()


def export(arch: str, size: int, out_dir: Path, *, n_calib: int, n_val: int) -> dict[str, Path]:
    """Write OUT/ARCH.onnx, OUT/ARCH-calib.npz ('x') and OUT/ARCH-val.npz ('x', no labels)."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    model = build(arch, size)
    onnx_path = out_dir / f"{arch}.onnx"
    dummy = torch.from_numpy(image_like(1, size, seed=7))
    torch.onnx.export(
        model,
        (dummy,),
        str(onnx_path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=18,
        dynamo=False,
    )
    calib = out_dir / f"{arch}-calib.npz"
    val = out_dir / f"{arch}-val.npz"
    np.savez(calib, x=image_like(n_calib, size, seed=11))
    np.savez(val, x=image_like(n_val, size, seed=12))
    return {"onnx": onnx_path, "calib": calib, "val": val}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--arch", choices=ARCHS, action="append")
    args = parser.parse_args(argv)
    for arch in args.arch or ARCHS:
        paths = export(arch, args.size, args.out, n_calib=args.calib, n_val=args.val)
        print(arch, {k: str(v) for k, v in paths.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
