"""What a stage of `onnxship run` declares, and what a run hands from one stage to the next.

A `Stage` names its record (`stages/<name>.json`), the files it reads and writes, the config
that goes into its record and cache key, and the function that produces its artifact. The
runner (`onnxship.stages.runner`) resolves the files in the bundle folder, reuses a finished
stage or runs `produce`, and keeps what every stage returned in `Run.artifacts`, where later
stages (the manifest among them) read it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxship.core.artifact import Artifact
from onnxship.stage_run import RunContext

if TYPE_CHECKING:
    from onnxship.models.registry import ModelFactory
    from onnxship.models.training_data import DataSplits
    from onnxship.stages.config import PipelineConfig


@dataclass(frozen=True)
class BundleOnnx:
    """An `.onnx` file a stage adds to the bundle: `artifacts/<name>.onnx`, one manifest entry,
    evaluated and benchmarked with the others."""

    name: str  # "student-int8": the file's stem and the manifest's key
    model: str  # "teacher" | "student" | "searched"
    precision: str  # "fp32" | "fp16" | "int8"
    parent: str | None  # the artifact it was converted from (None: exported from a checkpoint)
    checkpoint_stage: str  # the stage whose checkpoint the graph came from (MACs, params)

    @property
    def path(self) -> str:
        return f"artifacts/{self.name}.onnx"

    def converted(self, precision: str) -> BundleOnnx:
        """The `.onnx` converted from this one to `precision` (same model, this as parent)."""
        name = f"{self.model}-{precision}"
        return BundleOnnx(name, self.model, precision, self.name, self.checkpoint_stage)


@dataclass(frozen=True)
class Work:
    """A stage as it runs: its files as paths in (or outside) the bundle folder and the config
    it records. Picklable: under torchrun rank 0 resolves it and every rank receives it."""

    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]
    config: Any
    detail: Any = None  # what `resolve` learned that `produce` needs (bench: the EPs)


@dataclass(frozen=True)
class Stage:
    """One step of `onnxship run`.

    name: its record `stages/<name>.json` and its name in progress lines ("export-teacher").
    kind: the stage the record names ("export").
    config: what its record holds as `config` (part of the cache key).
    inputs: files it reads: a str is a path inside the bundle (an earlier stage's output), a
      Path a file outside it (the user's data). Their sha256 are part of the cache key.
    outputs: files it writes, inside the bundle; the first is the artifact `produce` returns.
    produce: makes the outputs and returns the artifact (its metrics go into the record).
    distributed: under torchrun `produce` runs on every rank (train, distill); otherwise on
      rank 0 alone while the others wait.
    recorded: False for steps that run every time and write no record (the bundle's data files,
      the manifest).
    onnx: the `.onnx` artifact it adds to the bundle, if any.
    resolve: what is known only when the stage runs, on rank 0 before the cache decision (more
      input files, such as MNIST's once checked; the machine or EPs in the config).
    """

    name: str
    kind: str
    config: Any
    produce: Callable[[Run, Work], Artifact]
    inputs: tuple[str | Path, ...] = ()
    outputs: tuple[str, ...] = ()
    distributed: bool = False
    recorded: bool = True
    onnx: BundleOnnx | None = None
    resolve: Callable[[Run, Work], Work] | None = None


@dataclass(frozen=True)
class OwnRun:
    """A user's own model and data, checked before the bundle folder is touched
    (`stages.data.own_model_and_data`)."""

    splits: DataSplits
    factory: ModelFactory | None
    source: Path | None  # the factory's module file: editing it invalidates the train stage


@dataclass
class Run:
    """One `onnxship run`: its config, where it writes (`ctx`), the user's own model and data
    when there are (`own`), and the artifact every finished stage returned, by stage name."""

    cfg: PipelineConfig
    ctx: RunContext
    own: OwnRun | None = None
    artifacts: dict[str, Artifact] = field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        return self.ctx.out_dir

    @property
    def data_dir(self) -> str | None:
        return self.cfg.data_dir

    @property
    def data(self) -> Any:
        """The user's data config (a `models.training_data.DataConfig`) for the library functions;
        None: MNIST, or what a checkpoint records."""
        return self.own.splits.config if self.own is not None else None

    def file(self, where: str | os.PathLike[str]) -> Path:
        """A declared input or output as a path: a str is inside the bundle folder, a Path a
        file outside it, taken as it is (relative to the working folder if relative)."""
        return self.out_dir / where if isinstance(where, str) else Path(where)


def onnx_conversion_stage(
    fp32: Stage,
    name: str,
    *,
    kind: str,
    precision: str,
    config: Any,
    data: str,
    produce: Callable[[Run, Work], Artifact],
    side_outputs: Callable[[BundleOnnx], tuple[str, ...]] = lambda onnx: (),
) -> Stage:
    """A stage that converts the `.onnx` that `fp32` writes to `precision` (fp16, int8): it
    reads that file and the bundle's `data` file, and writes the converted `.onnx` first, then
    `side_outputs(converted)`; `name` is its record ("quantize-teacher")."""
    assert fp32.onnx is not None, f"{name} converts an .onnx artifact"
    onnx = fp32.onnx.converted(precision)
    return Stage(
        name=name,
        kind=kind,
        config=config,
        inputs=(fp32.onnx.path, data),
        outputs=(onnx.path, *side_outputs(onnx)),
        produce=produce,
        onnx=onnx,
    )


def checkpoint_stage_outputs(name: str) -> tuple[str, str]:
    """A checkpoint stage's outputs in the bundle: the weights, then the sidecar."""
    return (f"checkpoints/{name}.pt", f"checkpoints/{name}.json")


def with_complexity(
    artifact: Artifact, macs: int | None = None, params: int | None = None
) -> Artifact:
    """The checkpoint artifact with `macs` (multiply-accumulates of one sample) and `params`
    in its metrics, so the manifest reads them from the stage's record instead of loading the
    checkpoint again. Counted on the checkpoint unless the stage measured them itself."""
    from dataclasses import replace

    if macs is None or params is None:
        counted = count_complexity(artifact.path)
        macs, params = counted["macs"], counted["params"]
    return replace(artifact, metrics={**artifact.metrics, "macs": macs, "params": params})


def count_complexity(checkpoint: Path) -> dict[str, int]:
    """MACs (batch 1) and parameters of a checkpoint's model, counted in PyTorch."""
    from onnxship.models.checkpoint import load_checkpoint
    from onnxship.models.flops import count_macs, count_params

    model, meta = load_checkpoint(checkpoint)
    return {"macs": count_macs(model, (1, *meta.input_shape)), "params": count_params(model)}
