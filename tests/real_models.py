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


def synthetic_task(n: int, size: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` image-like samples of a `classes`-way task: each class is a fixed smooth pattern
    (the same for every seed), a sample is its pattern plus smooth and fine noise."""
    import torch

    low_res = max(size // 16, 2)
    protos = torch.randn(classes, 3, low_res, low_res, generator=torch.Generator().manual_seed(99))
    gen = torch.Generator().manual_seed(seed)
    y = torch.randperm(n, generator=gen) % classes
    low = protos[y] + 0.8 * torch.randn(n, 3, low_res, low_res, generator=gen)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")
    x = x + 0.3 * torch.randn(n, 3, size, size, generator=gen)
    return x.numpy().astype(np.float32), y.numpy().astype(np.int64)


def fit_head(model, arch: str, size: int, classes: int, n_fit: int = 256):  # -> nn.Module
    """Replace the 1000-way head by a `classes`-way linear head fitted (ridge regression, closed
    form) to the frozen features on `synthetic_task` samples."""
    import torch

    head_parent, key = (model, "fc") if arch == "resnet18" else (model.classifier, "1")
    old = getattr(head_parent, key) if key == "fc" else head_parent[1]
    if key == "fc":
        model.fc = torch.nn.Identity()
    else:
        model.classifier[1] = torch.nn.Identity()
    x, y = synthetic_task(n_fit, size, classes, seed=5)
    with torch.no_grad():
        feats = torch.cat([model(torch.from_numpy(x[i : i + 32])) for i in range(0, n_fit, 32)])
    f = torch.cat([feats, torch.ones(n_fit, 1)], dim=1).double()
    target = torch.nn.functional.one_hot(torch.from_numpy(y), classes).double()
    w = torch.linalg.solve(f.T @ f + 1e-2 * torch.eye(f.shape[1], dtype=f.dtype), f.T @ target)
    head = torch.nn.Linear(old.in_features, classes)
    with torch.no_grad():
        head.weight.copy_(w[:-1].T.float())
        head.bias.copy_(w[-1].float())
    if key == "fc":
        model.fc = head
    else:
        model.classifier[1] = head
    return model


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


def export(
    arch: str, size: int, out_dir: Path, *, n_calib: int, n_val: int, classes: int = 0
) -> dict[str, Path]:
    """Write OUT/ARCH.onnx, OUT/ARCH-calib.npz ('x') and OUT/ARCH-val.npz ('x', no labels).
    With `classes`, the head is fitted to `synthetic_task` and the validation set is labelled
    ('x', 'y'), so the budget is top-1 against labels."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    model = build(arch, size)
    if classes:
        model = fit_head(model, arch, size, classes)
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
    if classes:
        np.savez(calib, x=synthetic_task(n_calib, size, classes, seed=11)[0])
        xv, yv = synthetic_task(n_val, size, classes, seed=12)
        np.savez(val, x=xv, y=yv)
    else:
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
    parser.add_argument("--classes", type=int, default=0, help="fit a N-way head (labelled val)")
    args = parser.parse_args(argv)
    for arch in args.arch or ARCHS:
        paths = export(
            arch, args.size, args.out, n_calib=args.calib, n_val=args.val, classes=args.classes
        )
        print(arch, {k: str(v) for k, v in paths.items()})
    return 0


# --------------------------------------------------------------------------------------------
# Benchmark: onnxship's INT8 vs ORT's quantize_static recipes (a command, not a test)


def ort_quantize(src: Path, calib_npz: Path, out: Path, *, per_channel: bool) -> dict:
    """ORT's documented path: quant_pre_process, then quantize_static QDQ U8S8 MinMax
    (per-tensor = its defaults' granularity); wall seconds and this process's peak RSS."""
    import resource
    import tempfile
    import time

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    x = np.load(calib_npz)["x"]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": x[i : i + 8]} for i in range(0, len(x), 8)])

        def get_next(self):  # noqa: ANN202
            return next(self.it, None)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        t1 = time.perf_counter()
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)  # fmt: skip
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"pre_process_s": round(t1 - t0, 1), "quantize_s": round(t2 - t1, 1),
            "peak_rss_mb": round(peak)}  # fmt: skip


def compare(models: dict[str, Path], val_npz: Path, budget_s: float) -> dict:
    """Top-1 on the labelled val set and speed-ups over 'fp32' at batch 1 and 8, all models
    timed in one block-interleaved run per batch size (the timing engine), one thread."""
    import onnxruntime as ort

    from onnxship.runtime_bench.timing import TimingConfig, time_blocks

    data = np.load(val_npz)
    x, y = data["x"], data["y"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
            for k, p in models.items()}  # fmt: skip
    out: dict = {"top1": {}, "speedup": {}}
    for k, s in sess.items():
        pred = np.concatenate([s.run(None, {"input": x[i : i + 8]})[0].argmax(1)
                               for i in range(0, len(x), 8)])  # fmt: skip
        out["top1"][k] = float((pred == y).mean())
    for batch in (1, 8):
        feed = {"input": x[:batch]}
        fns = {k: (lambda s=s, f=feed: s.run(None, f)) for k, s in sess.items()}
        res = time_blocks(fns, TimingConfig(budget_s=budget_s, statistic="min"), reference="fp32")
        out["speedup"][batch] = {k: [round(r.ratio, 3), [round(c, 3) for c in r.ci]]
                                 for k, r in res.ratios.items()}  # fmt: skip
        out["speedup"][batch]["rounds"] = res.models["fp32"].n_rounds
    return out


def bench_main(argv: list[str]) -> int:
    """`python tests/real_models.py bench DIR ARCH INT8.onnx`: ORT recipes vs onnxship's INT8."""
    import json
    import subprocess

    folder, arch, ours = Path(argv[0]), argv[1], Path(argv[2])
    src, calib, val = (
        folder / f"{arch}.onnx",
        folder / f"{arch}-calib.npz",
        folder / f"{arch}-val.npz",
    )
    models = {"fp32": src, "onnxship": ours}
    for pc in (False, True):
        name = "ort-perchannel" if pc else "ort-default"
        dst = folder / f"{arch}-{name}.onnx"
        code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                "import real_models as r; from pathlib import Path as P; "
                f"print(json.dumps(r.ort_quantize(P({str(src)!r}), P({str(calib)!r}), "
                f"P({str(dst)!r}), per_channel={pc})))")  # fmt: skip
        res = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        print(name, res.stdout.strip().splitlines()[-1], flush=True)
        models[name] = dst
    print(json.dumps(compare(models, val, budget_s=float(argv[3]) if len(argv) > 3 else 30.0)))
    return 0


if __name__ == "__main__":
    sys.exit(bench_main(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else main())
