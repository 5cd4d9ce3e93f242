"""The stages of `onnxship run`, in the order they run: `plan(cfg)`.

Adding a stage is a module under `onnxship/stages/` whose `stage(...)` returns a `Stage`
(inputs, outputs, config, the function that produces its artifact) and one line here. A stage
that adds an `.onnx` artifact (`Stage.onnx`) before eval is evaluated, benchmarked and entered
in the manifest like the others.
"""

from __future__ import annotations

from onnxship.stages import (
    bench,
    data,
    distill,
    export,
    fp16,
    manifest,
    prune,
    quantize,
    search,
    train,
)
from onnxship.stages import eval as evaluate
from onnxship.stages.base import Stage
from onnxship.stages.config import PipelineConfig


def plan(cfg: PipelineConfig) -> list[Stage]:
    teacher = train.stage(cfg)  # checkpoints/teacher.pt
    teacher_fp32 = export.stage(cfg, teacher, "teacher")  # artifacts/teacher-fp32.onnx
    pruned = prune.stage(cfg, teacher)  # checkpoints/student-pruned.pt
    student = distill.stage(cfg, pruned, teacher)  # checkpoints/student.pt
    student_fp32 = export.stage(cfg, student, "student")  # artifacts/student-fp32.onnx
    stages = [
        *data.stages(cfg),  # data/val.npz, data/test.npz (MNIST or own data)
        teacher,
        teacher_fp32,
        pruned,
        student,
        student_fp32,
        quantize.stage(cfg, student_fp32, "quantize"),  # artifacts/student-int8.onnx
        fp16.stage(cfg, student_fp32, "fp16"),  # artifacts/student-fp16.onnx
    ]
    if cfg.extra.teacher_int8:
        stages.append(quantize.stage(cfg, teacher_fp32, "quantize-teacher"))
    if cfg.extra.teacher_fp16:
        stages.append(fp16.stage(cfg, teacher_fp32, "fp16-teacher"))
    if cfg.search.enabled:  # the latency-searched student and its INT8 and FP16
        searched = search.stage(cfg, teacher, student, teacher_fp32)  # checkpoints/searched.pt
        searched_fp32 = export.stage(cfg, searched, "searched")
        stages += [
            searched,
            searched_fp32,
            quantize.stage(cfg, searched_fp32, "quantize-searched"),
            fp16.stage(cfg, searched_fp32, "fp16-searched"),
        ]
    made = [s for s in stages if s.onnx is not None]
    return [
        *stages,
        evaluate.stage(cfg, made),  # results/eval.json: every artifact's test top-1
        bench.stage(cfg, made),  # results/bench.json: every artifact on every EP
        manifest.stage(cfg, made, teacher),  # manifest.json, report.md, plots/
    ]
