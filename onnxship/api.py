"""The Python API: one path-in/path-out function per stage, with typed configs.

These are the functions the CLI calls (the CLI only parses flags into the same configs), so a
script and a shell user get the same files, records and errors. A stage's record holds the same
config, inputs and metrics as the one `onnxship run` writes for it: the pipeline's stage
modules (`onnxship.stages`) call the same library functions, train and distill through the
same wrappers (which add the model's `macs` and `params`), and `run` executes `plan(cfg)` with
the one runner (`onnxship.stages.runner`). Every function writes its outputs atomically and
returns what it made; failures raise `OnnxshipError` subclasses whose one-line message names
the file, what was expected and the fix (`exc.exit_code` is the CLI's).

    from pathlib import Path
    from onnxship import api
    from onnxship.calibrate.quantize import QuantizeConfig
    from onnxship.runtime_bench.bench import BenchConfig

    fp32 = api.export(Path("runs/a/checkpoints/student.pt"), Path("out"), name="student-fp32")
    int8 = api.quantize(fp32.path, Path("out"), QuantizeConfig(max_drop=0.003))
    table = api.bench([fp32.path, int8.path], BenchConfig(provider="cpu", batch_sizes=(1, 64)))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxship.core.artifact import Artifact
from onnxship.errors import PipelineError
from onnxship.stage_run import checkpoint_inputs, mnist_inputs, run_stage

if TYPE_CHECKING:  # the configs' modules import torch or onnx; import them only when called
    from onnxship.calibrate.quantize import QuantizeConfig
    from onnxship.export.fp16 import Fp16Config
    from onnxship.export.onnx_export import ExportConfig
    from onnxship.gate import GateCase
    from onnxship.models.distill import DistillConfig
    from onnxship.models.prune import PruneConfig
    from onnxship.models.train import TrainConfig
    from onnxship.pipeline import PipelineConfig, PipelineResult
    from onnxship.runtime_bench.bench import BenchConfig
    from onnxship.verify import VerifyReport

PathLike = str | os.PathLike[str]

__all__ = [
    "bench", "distill", "eval", "evaluate", "export", "fp16", "gate", "prune", "quantize", "run",
    "train", "verify",
]  # fmt: skip


def output_path(out_dir: PathLike, subdir: str, filename: str) -> Path:
    """`out_dir/subdir/filename`, creating the folder; a one-line error if it cannot be made."""
    folder = Path(out_dir) / subdir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PipelineError(
            f"cannot create the output folder {folder}: {exc.strerror or exc}; choose a "
            "writable --out"
        ) from exc
    return folder / filename


def default_artifact_name(model: PathLike, suffix: str) -> str:
    """`student-fp32.onnx` -> `student-<suffix>`; any other stem gets `-<suffix>` appended."""
    stem = Path(model).stem
    return f"{stem.removesuffix('-fp32')}-{suffix}"


def train(
    out_dir: PathLike,
    cfg: TrainConfig | None = None,
    *,
    name: str = "teacher",
    data_dir: PathLike | None = None,
    ranks: Any = None,
) -> Artifact:
    """Train `cfg.arch` from scratch on MNIST -> `out_dir/checkpoints/<name>.pt` (+ .json).

    `ranks` (a `models.distributed.Ranks`, under torchrun): every rank trains its shard of
    each batch, rank 0 alone writes."""
    from onnxship.models.train import TrainConfig
    from onnxship.models.training_data import ensure_mnist
    from onnxship.stages.train import trained_checkpoint

    cfg = cfg or TrainConfig()
    cfg.validate()
    root = (
        ensure_mnist(data_dir) if ranks is None else ranks.on_main(lambda: ensure_mnist(data_dir))
    )
    checkpoint = Path(out_dir) / "checkpoints" / f"{name}.pt"
    return run_stage(
        out_dir,
        "train",
        stage="train",
        config=cfg,
        inputs=mnist_inputs(root),
        produce=lambda: trained_checkpoint(cfg, checkpoint, data_dir=root, ranks=ranks),
        extra_outputs=[checkpoint.with_suffix(".json")],
        ranks=ranks,
    )


def prune(
    checkpoint: PathLike,
    out_dir: PathLike,
    cfg: PruneConfig | None = None,
    *,
    name: str = "student-pruned",
    data_dir: PathLike | None = None,
) -> Artifact:
    """Checkpoint -> a pruned `out_dir/checkpoints/<name>.pt` (+ .json with the new widths)."""
    from onnxship.models.errors import ModelsError
    from onnxship.models.prune import PruneConfig, pruned_from_checkpoint

    cfg = cfg or PruneConfig()
    cfg.validate()
    src = Path(checkpoint)
    if not src.is_file():
        raise ModelsError(f"checkpoint {src} does not exist; train one with `onnxship train`")
    target = output_path(out_dir, "checkpoints", f"{name}.pt")
    return run_stage(
        out_dir,
        "prune",
        stage="prune",
        config=cfg,
        inputs=checkpoint_inputs(src),
        produce=lambda: pruned_from_checkpoint(src, cfg, target, data_dir=data_dir),
        extra_outputs=[target.with_suffix(".json")],
    )


def distill(
    student: PathLike,
    teacher: PathLike,
    out_dir: PathLike,
    cfg: DistillConfig | None = None,
    *,
    name: str = "student",
    data_dir: PathLike | None = None,
    ranks: Any = None,
) -> Artifact:
    """Fine-tune `student` (a pruned checkpoint) against `teacher` with knowledge distillation,
    and the same steps without it (the ablation) -> `out_dir/checkpoints/<name>.pt` (+ .json).
    `ranks` as in `train`."""
    from onnxship.models.distill import DistillConfig, distilled_from_checkpoints
    from onnxship.stages.distill import student_complexity

    cfg = cfg or DistillConfig()
    cfg.validate()
    s, t = Path(student), Path(teacher)

    def target_path() -> Path:
        return output_path(out_dir, "checkpoints", f"{name}.pt")

    target = target_path() if ranks is None else ranks.on_main(target_path)
    return run_stage(
        out_dir,
        "distill",
        stage="distill",
        config=cfg,
        inputs=[*checkpoint_inputs(s), *checkpoint_inputs(t)],
        produce=lambda: student_complexity(
            distilled_from_checkpoints(s, t, cfg, target, data_dir=data_dir)
        ),
        extra_outputs=[target.with_suffix(".json")],
        ranks=ranks,
    )


def export(
    checkpoint: PathLike,
    out_dir: PathLike,
    cfg: ExportConfig | None = None,
    *,
    name: str | None = None,
    record_name: str = "export",
    data_dir: PathLike | None = None,
) -> Artifact:
    """Checkpoint (.pt + .json sidecar) -> `out_dir/artifacts/<name>.onnx`, parity-checked."""
    from onnxship.export.errors import ExportError
    from onnxship.export.onnx_export import ExportConfig, onnx_from_checkpoint

    cfg = cfg or ExportConfig()
    cfg.validate()
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise ExportError(
            f"checkpoint {ckpt} does not exist; pass the .pt written by train/distill"
        )
    target = output_path(out_dir, "artifacts", f"{name or ckpt.stem + '-fp32'}.onnx")
    return run_stage(
        out_dir,
        record_name,
        stage="export",
        config=cfg,
        inputs=checkpoint_inputs(ckpt),
        produce=lambda: onnx_from_checkpoint(ckpt, cfg, target, data_dir=data_dir),
    )


def fp16(
    model: PathLike,
    out_dir: PathLike,
    cfg: Fp16Config | None = None,
    *,
    name: str | None = None,
    record_name: str = "fp16",
    data_dir: PathLike | None = None,
    data: PathLike | None = None,
) -> Artifact:
    """FP32 `.onnx` -> `out_dir/artifacts/<name>.onnx` in FP16, parity-checked against FP32
    on MNIST's test set, or on `data` (a dataset `.npz`, for any model)."""
    from onnxship.export.errors import ExportError
    from onnxship.export.fp16 import Fp16Config, fp16_from_onnx

    cfg = cfg or Fp16Config()
    cfg.validate()
    src = Path(model)
    if not src.is_file():
        raise ExportError(
            f"ONNX model {src} does not exist; pass the FP32 .onnx from `onnxship export`"
        )
    target = output_path(out_dir, "artifacts", f"{name or default_artifact_name(src, 'fp16')}.onnx")
    return run_stage(
        out_dir,
        record_name,
        stage="fp16",
        config=cfg,
        inputs=[src, *([Path(data)] if data is not None else [])],
        produce=lambda: fp16_from_onnx(src, cfg, target, data_dir=data_dir, data=data),
    )


def quantize(
    model: PathLike,
    out_dir: PathLike,
    cfg: QuantizeConfig | None = None,
    *,
    name: str | None = None,
    calib_npz: PathLike | None = None,
    data_dir: PathLike | None = None,
    progress: bool = False,
    val_npz: PathLike | None = None,
    calib_from_val: bool = False,
) -> Artifact:
    """FP32 `.onnx` -> static INT8 `out_dir/artifacts/<name>.onnx` (+ its calibration npz).

    calib_npz / val_npz: your own dataset `.npz` files to calibrate on and to measure the
    accuracy budget on (top-1 with labels, fidelity to FP32 without); MNIST otherwise.
    calib_from_val: draw the calibration set from the labelled `val_npz` and measure the
    budget on its other rows (what `onnxship run` does with its data/val.npz on MNIST)."""
    from onnxship.calibrate.quantize import STAGE, QuantizeConfig, int8_from_onnx

    cfg = cfg or QuantizeConfig()
    cfg.validate()  # fail on bad input before creating any folder
    src = Path(model)
    name = name or default_artifact_name(src, "int8")
    target = output_path(out_dir, "artifacts", f"{name}.onnx")
    calib_path = output_path(out_dir, "calibration", f"{name}-calib.npz")
    calib = Path(calib_npz) if calib_npz is not None else None
    val = Path(val_npz) if val_npz is not None else None
    return run_stage(
        out_dir,
        STAGE,
        stage=STAGE,
        config=cfg,
        inputs=[src, *([calib] if calib else []), *([val] if val else [])],
        produce=lambda: int8_from_onnx(
            src,
            cfg,
            target,
            data_dir=data_dir,
            calib_npz=calib,
            calib_out=calib_path,
            progress=progress,
            val_npz=val,
            calib_from_val=calib_from_val,
        ),
        extra_outputs=[calib_path],
    )


def evaluate(
    model: PathLike,
    *,
    data_dir: PathLike | None = None,
    split: str | None = None,
    batch_size: int = 1000,
    provider: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    data: PathLike | None = None,
    reference: PathLike | None = None,
    session_config: PathLike | None = None,
) -> dict[str, Any]:
    """Top-1 of an `.onnx` file measured in ONNX Runtime (torch-free).

    session_config: a session-config file (`onnxship bench --tune-session`); the model runs
    with exactly its options and on its EP (`provider` must then be None or the same EP).

    data: a dataset `.npz` (CONTRACT.md; preprocessed, fed as is) instead of MNIST; without
    labels, `reference` (the FP32 model) gives fidelity instead (top-1 agreement or SQNR)."""
    from onnxship.core.env import integer_class_record
    from onnxship.runtime_bench.accuracy import evaluate_npz, evaluate_onnx
    from onnxship.runtime_bench.errors import BenchError
    from onnxship.runtime_bench.session_options import session_and_provider

    session, provider = session_and_provider(session_config, provider)
    if data is not None:
        given = [f for f, v in (("--split", split), ("--mean", mean), ("--std", std)) if v]
        if given:
            raise BenchError(
                f"{', '.join(given)} apply to MNIST, not to --data {data}: an npz holds "
                "preprocessed inputs and is fed as is; drop them"
            )
        result = evaluate_npz(
            model,
            data,
            reference=reference,
            batch_size=batch_size,
            provider=provider,
            session=session,
        )
        return {**result, **integer_class_record()}
    if reference is not None:
        raise BenchError(
            "--reference compares two models on your own data: pass it with --data FILE.npz"
        )
    result = evaluate_onnx(
        model,
        data_dir=data_dir,
        split=split or "test",
        batch_size=batch_size,
        provider=provider,
        mean=mean,
        std=std,
        session=session,
    )
    return {**result, **integer_class_record()}  # the CPU class the accuracy was measured on


eval = evaluate  # noqa: A001 - the stage is called `eval` on the command line


def bench(models: Sequence[PathLike], cfg: BenchConfig) -> dict[str, Any]:
    """Latency of each model on one EP (`onnxship bench`'s JSON document; torch-free)."""
    from onnxship.runtime_bench.bench import benchmark_models

    return benchmark_models([Path(m) for m in models], cfg)


def verify(
    bundle: PathLike, *, data_dir: PathLike | None = None, check_accuracy: bool = True
) -> VerifyReport:
    """Is this bundle what its manifest says? (torch-free)"""
    from onnxship.verify import verify_bundle

    return verify_bundle(bundle, data_dir=data_dir, check_accuracy=check_accuracy)


def gate(manifest: PathLike, baseline: PathLike, *, check_latency: bool = False) -> list[GateCase]:
    """One case per baseline artifact; a case that is not `ok` fails the build."""
    from onnxship.gate import gate as gate_cases

    return gate_cases(manifest, baseline, check_latency=check_latency)


def run(
    cfg: PipelineConfig,
    out_dir: PathLike,
    *,
    force: bool = False,
    progress: Any = None,
) -> PipelineResult:
    """The whole pipeline into one bundle folder (resumable): the stages of
    `onnxship.stages.plan.plan(cfg)`, run by the runner `onnxship run` uses."""
    from onnxship.pipeline import run_pipeline

    return run_pipeline(cfg, out_dir, force=force, progress=progress or (lambda msg: None))
