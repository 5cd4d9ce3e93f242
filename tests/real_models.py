"""Real-size torchvision networks as FP32 `.onnx` + calibration / validation `.npz` files.

`resnet18` (residual adds, BatchNorm) and `mobilenet_v2` (depthwise convolutions, ReLU6) are
built with `weights=None` (no download); their BatchNorm statistics are re-estimated on a few
batches of image-like random data (smooth noise: low-resolution noise upsampled), so that the
activations have the scale of a trained network instead of the init's running mean 0 / var 1.
They are exported with plain `torch.onnx.export`, as a user would.

Used by tests/test_real_models.py (small inputs) and, at 224x224, as a benchmark (the issue's
numbers; minutes of CPU, not a test):

    python tests/real_models.py DIR --size 224 --calib 64 --val 64 --classes 10
    python tests/real_models.py bench DIR --budget-s 60     # -> DIR/bench-ARCH.json

`bench` runs `onnxship quantize` with its defaults and ORT's `quant_pre_process` +
`quantize_static` (defaults: QDQ U8S8 per-tensor MinMax; and per-channel), each in a child
process whose wall time, CPU time and peak RSS are measured, then scores every INT8 file
against FP32 (top-1 agreement; top-1 where the val set has labels) and times them all with
FP32 in one block-interleaved run per batch size (1 and 8, one thread; speed-ups with paired
bootstrap CIs of the minimum latency).

mobilenet_v2 without training is no INT8 benchmark for accuracy: its random network amplifies
small perturbations (at 64x64, an 8-bit rounding of only the first block's output leaves ~10
dB SQNR at the logits, INT8 weights alone ~7 dB; at 224x224 ORT's INT8 files give ~1 dB and
~27 % top-1 agreement with FP32), and its features do not separate `synthetic_task` (a fitted
head scores chance). Its latencies are real (the graph is); its accuracy numbers are not, and
`quantize` rightly finds no recipe within the budget (exit 1).
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
    arch: str,
    size: int,
    out_dir: Path,
    *,
    n_calib: int,
    n_val: int,
    classes: int = 0,
    labelled: bool = True,
) -> dict[str, Path]:
    """Write OUT/ARCH.onnx, OUT/ARCH-calib.npz ('x') and OUT/ARCH-val.npz ('x', no labels).
    With `classes`, the head is fitted to `synthetic_task` and the validation set is labelled
    ('x', 'y'), so the budget is top-1 against labels; `labelled=False` keeps the fitted head
    but leaves 'y' out, so the budget is top-1 agreement with FP32."""
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
        np.savez(val, **({"x": xv, "y": yv} if labelled else {"x": xv}))
    else:
        np.savez(calib, x=image_like(n_calib, size, seed=11))
        np.savez(val, x=image_like(n_val, size, seed=12))
    return {"onnx": onnx_path, "calib": calib, "val": val}


# `onnxship run` with the real architecture: the bundle `verify` and `gate` read. The teacher is
# the network as torchvision builds it (`factory`), its weights the re-estimated BatchNorm and
# fitted head (`state_dict`: the train stage loads them instead of training); prune, distill,
# export, INT8, FP16, eval and bench run with their budgets cut to seconds. A bundle test,
# not an accuracy test: the quantize budget is wide and FP16 agreement 90 % (64 test images).
BUNDLE_CONFIG: dict = {
    "data": {"kind": "npz", "train": "data/train.npz", "test": "data/test.npz",
             "val_fraction": 0.4},  # 64 validation rows: 32 calibrate, 32 measure the budget
    "prune": {"macs_budget": 0.5},
    "distill": {"sgd": {"epochs": 1.0, "batch_size": 64}},
    "export": {"exporter": "torchscript", "parity_samples": 1000},
    "fp16": {"min_agreement": 0.9},
    "quantize": {
        "recipe": "qdq-u8s8-perchannel-minmax", "max_drop": 0.5,
        "calibration": {"size": 32, "batch_size": 8},
        "latency": {"batch_sizes": [1], "seconds_per_batch_size": 0.2, "min_iterations": 2,
                    "max_iterations": 5},
    },
    "bench": {"batch_sizes": [1], "warmup": 1, "iterations": 3, "budget_s": 1.0},
    "extra": {"teacher_int8": False, "teacher_fp16": False},
    "search": {"enabled": False},
}  # fmt: skip


def write_project(
    folder: Path, arch: str, size: int, *, n_train: int = 160, n_test: int = 64, classes: int = 10
) -> Path:
    """A user's project for `onnxship run --config FOLDER/run.toml`: the `classes`-way network
    (`torchvision.models.ARCH` as the factory, weights = `build` + `fit_head` saved as a
    state_dict), `synthetic_task` train/test npz files; returns the config's path."""
    import torch

    from onnxship.configio import to_toml

    (folder / "data").mkdir(parents=True, exist_ok=True)
    model = fit_head(build(arch, size), arch, size, classes)
    torch.save(model.state_dict(), folder / "weights.pt")
    for split, n, seed in (("train", n_train, 21), ("test", n_test, 22)):
        x, y = synthetic_task(n, size, classes, seed=seed)
        np.savez(folder / "data" / f"{split}.npz", x=x, y=y)
    model_table = {"factory": f"torchvision.models:{arch}", "kwargs": {"num_classes": classes},
                   "state_dict": "weights.pt"}  # fmt: skip
    config = folder / "run.toml"
    config.write_text(to_toml({"model": model_table, **BUNDLE_CONFIG}))
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--arch", choices=ARCHS, action="append")
    parser.add_argument("--classes", type=int, default=0, help="fit a N-way head (labelled val)")
    parser.add_argument("--unlabelled", choices=ARCHS, action="append", default=[],
                        help="with --classes: write this architecture's val without labels "
                        "(its budget is top-1 agreement with FP32)")  # fmt: skip
    args = parser.parse_args(argv)
    for arch in args.arch or ARCHS:
        paths = export(
            arch,
            args.size,
            args.out,
            n_calib=args.calib,
            n_val=args.val,
            classes=args.classes,
            labelled=arch not in args.unlabelled,
        )
        print(arch, {k: str(v) for k, v in paths.items()})
    return 0


# --------------------------------------------------------------------------------------------
# Benchmark: onnxship's INT8 vs ORT's quantize_static recipes (a command, not a test)


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run `cmd` as a child process (output to `log`): wall seconds, the child's CPU seconds
    (user + system) and its peak RSS (MiB), from wait4's rusage."""
    import os
    import subprocess
    import time

    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}  # fmt: skip


def ort_quantize(src: Path, calib_npz: Path, out: Path, *, per_channel: bool) -> dict:
    """ORT's documented path: quant_pre_process, then quantize_static with its defaults (QDQ,
    U8 activations, S8 weights, MinMax, per-tensor) or per-channel; seconds of each step."""
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
    return {"pre_process_s": round(t1 - t0, 1), "quantize_s": round(t2 - t1, 1)}


def fidelity(models: dict[str, Path], val_npz: Path) -> dict:
    """Per model: top-1 agreement with 'fp32' on the val set, and top-1 when it has labels."""
    import onnxruntime as ort

    data = np.load(val_npz)
    x = data["x"]
    out: dict = {}
    ref = None
    for name, path in models.items():  # fp32 first
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        pred = np.concatenate([sess.run(None, {"input": x[i : i + 8]})[0].argmax(1)
                               for i in range(0, len(x), 8)])  # fmt: skip
        ref = pred if ref is None else ref
        out[name] = {"agreement": float((pred == ref).mean())}
        if "y" in data:
            out[name]["top1"] = float((pred == data["y"]).mean())
    return out


def bench_arch(folder: Path, arch: str, budget_s: float) -> dict:
    """`onnxship quantize` with its defaults and ORT's two recipes on FOLDER/ARCH.onnx (each
    in its own measured process), then all INT8 files and FP32 timed in one block-interleaved
    run per batch size (`benchmark_models_interleaved`, the engine of `onnxship run`'s bench
    stage) on one thread, with paired bootstrap CIs of the speed-ups over FP32."""
    import json

    from onnxship.runtime_bench.bench import BenchConfig, benchmark_models_interleaved

    src, calib, val = (folder / f"{arch}.onnx", folder / f"{arch}-calib.npz",
                       folder / f"{arch}-val.npz")  # fmt: skip
    exe = str(Path(sys.executable).with_name("onnxship"))
    runs = folder / f"{arch}-runs"
    runs.mkdir(exist_ok=True)
    report: dict = {"arch": arch}
    ours = runs / "artifacts" / f"{arch}-onnxship.onnx"
    ours.unlink(missing_ok=True)  # exit 1 writes nothing: never time an earlier run's file
    report["onnxship"] = run_measured(
        [exe, "quantize", str(src), "--out", str(runs), "--name", ours.stem,
         "--calib-npz", str(calib), "--val-npz", str(val)], runs / "onnxship-quantize.log")  # fmt: skip
    print(arch, "onnxship quantize", report["onnxship"], flush=True)
    if report["onnxship"]["rc"] == 0:
        m = json.loads((runs / "stages" / "quantize.json").read_text())["metrics"]
        report["onnxship"].update(
            recipe=m["recipe"]["name"], budget=m["budget"]["metric"],
            fp32_val=m["fp32_val_top1"], int8_val=m["int8_val_top1"],
            passes=m["search"]["calibration_passes"], calibrate_s=m["search"]["calibrate_s"],
            score_s=m["search"]["score_s"],
            latency_s=(m["search"].get("latency") or {}).get("wall_s"),
            confirm=m["latency"]["by_batch"],
            timed=m["search"]["timed"], skipped=(m["search"].get("latency") or {}).get("skipped"),
        )  # fmt: skip
    models = {"fp32": src}
    if ours.is_file():
        models["onnxship"] = ours
    for pc in (False, True):
        name = "ort-perchannel" if pc else "ort-default"
        dst = runs / f"{arch}-{name}.onnx"
        code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                "import real_models as r; from pathlib import Path as P; "
                f"print(json.dumps(r.ort_quantize(P({str(src)!r}), P({str(calib)!r}), "
                f"P({str(dst)!r}), per_channel={pc})))")  # fmt: skip
        log = runs / f"{name}.log"
        report[name] = run_measured([sys.executable, "-c", code], log)
        report[name].update(json.loads(log.read_text().strip().splitlines()[-1]))
        print(arch, name, report[name], flush=True)
        models[name] = dst
    report["fidelity"] = fidelity(models, val)
    print(arch, "fidelity", report["fidelity"], flush=True)
    # one interleaved run; file stems name the rows, FP32 (the source's stem) is the reference
    cfg = BenchConfig(batch_sizes=(1, 8), threads=1, warmup=1, iterations=100_000,
                      time_budget_s=budget_s, interleave_block=4, reference=src.stem,
                      statistic="min", npz=val, progress=False)  # fmt: skip
    doc = benchmark_models_interleaved(list(models.values()), cfg)
    (runs / "bench.json").write_text(json.dumps(doc, indent=1))
    stem_to_name = {p.stem: k for k, p in models.items()}
    report["speedup"] = {}
    for r in doc["ratios"]:
        cell = report["speedup"].setdefault(stem_to_name[r["name"]], {})
        cell[str(r["batch_size"])] = [round(r["ratio"], 3), [round(c, 3) for c in r["ci"]]]
    report["p50_ms"] = {f"{stem_to_name[Path(r['model']).stem]}@{r['batch_size']}": r["p50_ms"]
                        for r in doc["results"]}  # fmt: skip
    if "onnxship" in models:  # onnxship's INT8 over ORT's default recipe, paired over rounds
        report["onnxship_vs_ort_default"] = vs_ort_default(doc, models)
    report["timing_runs"] = doc["timing_runs"]
    print(json.dumps(report), flush=True)
    return report


def vs_ort_default(doc: dict, models: dict[str, Path]) -> dict:
    """Per batch size: ORT-default time / onnxship time (> 1: onnxship faster), from the same
    interleaved rounds as the FP32 ratios (paired bootstrap CI, the engine's statistic)."""
    from onnxship.runtime_bench.timing import TimingConfig, ratio_from_rounds

    rounds = {(Path(r["model"]).stem, r["batch_size"]): r["round_stats_ms"] for r in doc["results"]}
    cfg = TimingConfig(statistic=doc["config"]["statistic"])
    out = {}
    for batch in doc["config"]["batch_sizes"]:
        ours, ort = (
            rounds[(models["onnxship"].stem, batch)],
            rounds[(models["ort-default"].stem, batch)],
        )
        r = ratio_from_rounds("onnxship", "ort-default", ours, ort, cfg)
        out[str(batch)] = [round(r.ratio, 3), [round(c, 3) for c in r.ci]]
    return out


def bench_main(argv: list[str]) -> int:
    """`python tests/real_models.py bench DIR [--arch A] [--budget-s S]`: for each
    architecture exported into DIR (`main`), onnxship's INT8 vs ORT's recipes; the reports go
    to DIR/bench-ARCH.json."""
    import json

    parser = argparse.ArgumentParser(prog="real_models.py bench")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--arch", choices=ARCHS, action="append")
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="interleaved timing budget per batch size (seconds)")  # fmt: skip
    args = parser.parse_args(argv)
    for arch in args.arch or ARCHS:
        report = bench_arch(args.folder, arch, args.budget_s)
        (args.folder / f"bench-{arch}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(bench_main(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else main())
