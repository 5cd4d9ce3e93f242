"""Run one stage function and write its record: the seam shared by the single-stage commands
(through `onnxship.api`) and the pipeline's runner (`onnxship.stages.runner`); and the stage
cache (`cached_stage`), which reuses a finished stage whose config, inputs' sha256 and onnxship
version are unchanged.

For the same stage on the same files both write the same record: the stage's config as
`config`, the same `inputs` (`checkpoint_inputs`, `mnist_inputs`) and the metrics of the same
library function; the pipeline's record adds its `cache_key` and `onnxship_version`.
Timestamps, wall time and the paths' folders differ; tests/test_fault_matrix.py compares the
records of one bundle's stages."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from onnxship.core.artifact import (
    Artifact,
    config_hash,
    jsonable,
    sha256_file,
    utc_now,
    write_stage_record,
)
from onnxship.core.version import __version__

log = logging.getLogger(__name__)


def checkpoint_inputs(checkpoint: str | os.PathLike[str]) -> list[Path]:
    """A checkpoint as a stage input: its weights file. The `.json` sidecar is read too, but
    it also holds the stage's metrics and wall times, which differ between two runs that
    write the same weights; as an input it would make every later stage rerun after a stage
    was redone with the same result."""
    return [Path(checkpoint)]


def mnist_inputs(data_root: str | os.PathLike[str]) -> list[Path]:
    """MNIST's four files under `data_root` as a stage's inputs (train reads all four)."""
    from onnxship.core import mnist

    return [mnist.raw_dir(data_root) / name for name in mnist.MNIST_FILES]


def run_stage(
    out_dir: str | os.PathLike[str],
    record_name: str,
    *,
    stage: str,
    config: Any,
    inputs: Sequence[str | os.PathLike[str]],
    produce: Callable[[], Artifact],
    extra_outputs: Sequence[str | os.PathLike[str]] = (),
    extra_record: Mapping[str, Any] | None = None,
    ranks: Any = None,
) -> Artifact:
    """Call `produce()`, then write `out_dir/stages/<record_name>.json` with the artifact's
    metrics, the input and output files with their sha256, timestamps and wall time.

    `ranks` (a `models.distributed.Ranks`, under torchrun): every rank calls `produce()` (a
    data-parallel stage), only rank 0 writes the record."""
    started = utc_now()
    t0 = time.perf_counter()
    artifact = produce()
    wall_s = time.perf_counter() - t0
    if ranks is not None and not ranks.is_main:
        return artifact
    write_stage_record(
        out_dir,
        record_name,
        stage=stage,
        config=config,
        inputs=[Path(p) for p in inputs],
        outputs=[artifact.path, *[Path(p) for p in extra_outputs]],
        metrics=artifact.metrics,
        started=started,
        wall_s=wall_s,
        extra=extra_record,
    )
    log.info("stage %s done in %.1f s -> %s", record_name, wall_s, artifact.path)
    return artifact


# --------------------------------------------------------------------------------------------
# Stage caching


@dataclass
class RunContext:
    """Where a run writes and what it did: the state `cached_stage` needs, nothing more."""

    out_dir: Path
    force: bool
    data_dir: str | None
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    progress: Callable[[str], None] = lambda msg: None
    # `models.distributed.Ranks` under torchrun (None: one process). Stages run on rank 0
    # only, while the others wait, except those `cached_stage(..., distributed=True)` runs.
    ranks: Any = None

    def path(self, *parts: str) -> Path:
        return self.out_dir.joinpath(*parts)


def _cache_key(stage: str, config: Any, inputs: Sequence[Path]) -> str:
    return config_hash(
        {
            "stage": stage,
            "config": jsonable(config),
            "inputs": [sha256_file(p) for p in inputs],
            "onnxship": __version__,
        }
    )


def _reuse(record_path: Path, key: str, outputs: Sequence[Path]) -> Artifact | None:
    """The artifact of a finished stage whose key matches and whose outputs are intact."""
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except ValueError:
        return None
    if record.get("cache_key") != key:
        return None
    recorded = {Path(o["path"]).name: o for o in record.get("outputs", [])}
    for out in outputs:
        entry = recorded.get(out.name)
        if entry is None or not out.is_file() or sha256_file(out) != entry["sha256"]:
            return None
    primary = outputs[0]
    return Artifact(
        path=primary,
        sha256=recorded[primary.name]["sha256"],
        bytes=primary.stat().st_size,
        stage=record["stage"],
        config=record.get("config", {}),
        metrics=record.get("metrics", {}),
    )


@dataclass(frozen=True)
class _Call:
    """One stage to reuse or run: its record name, stage kind, config, input and output files
    (the first output is the artifact) and the function that produces it."""

    record_name: str
    stage: str
    config: Any
    inputs: Sequence[Path]
    outputs: Sequence[Path]
    produce: Callable[[], Artifact]


def cached_stage(
    ctx: RunContext,
    record_name: str,
    *,
    stage: str,
    config: Any,
    inputs: Sequence[Path],
    outputs: Sequence[Path],
    produce: Callable[[], Artifact],
    distributed: bool = False,
) -> Artifact:
    """Reuse the stage's finished outputs, or run `produce()` and write the record.

    Under torchrun (`ctx.ranks` with world size > 1) rank 0 alone decides whether to reuse,
    and the others follow; a `distributed` stage's `produce()` then runs on every rank (rank 0
    writes), any other stage runs on rank 0 alone while the others wait for its artifact."""
    call = _Call(record_name, stage, config, inputs, outputs, produce)
    ranks = ctx.ranks
    if ranks is None or not ranks.enabled:
        return _cached_stage_here(ctx, call)
    if not distributed:
        return ranks.on_main(
            lambda: _cached_stage_here(ctx, call), what=f"stage {record_name} on rank 0"
        )
    key, reused = ranks.on_main(
        lambda: _decide(ctx, call), what=f"the cache decision for {record_name}"
    )
    if reused is not None:
        ctx.skipped.append(record_name)
        return reused
    if ranks.is_main:
        ctx.progress(f"[run ] {record_name} ({ranks.world_size} ranks) ...")
    return _run_recorded(ctx, call, key, ranks)


def _decide(ctx: RunContext, call: _Call) -> tuple[str, Artifact | None]:
    """(cache key, the finished stage's artifact or None when it has to run)."""
    key = _cache_key(call.stage, call.config, call.inputs)
    if ctx.force:
        return key, None
    reused = _reuse(ctx.path("stages", f"{call.record_name}.json"), key, call.outputs)
    if reused is not None:
        ctx.progress(f"[skip] {call.record_name}: finished earlier, inputs and config unchanged")
    return key, reused


def _cached_stage_here(ctx: RunContext, call: _Call) -> Artifact:
    key, reused = _decide(ctx, call)
    if reused is not None:
        ctx.skipped.append(call.record_name)
        return reused
    ctx.progress(f"[run ] {call.record_name} ...")
    return _run_recorded(ctx, call, key, None)


def _run_recorded(ctx: RunContext, call: _Call, key: str, ranks: Any) -> Artifact:
    """Run the stage and write its record with the cache key (one rank or many)."""
    record_path = ctx.path("stages", f"{call.record_name}.json")
    try:
        artifact = run_stage(
            ctx.out_dir,
            call.record_name,
            stage=call.stage,
            config=call.config,
            inputs=call.inputs,
            produce=call.produce,
            extra_outputs=list(call.outputs[1:]),
            extra_record={"cache_key": key, "onnxship_version": __version__},
            ranks=ranks,
        )
    except BaseException:
        # A stage with several outputs (weights + sidecar, INT8 model + calibration set) that
        # fails between them, or whose record cannot be written, leaves complete files that no
        # record vouches for; remove them so the bundle holds only what a record describes.
        # Only the writer (rank 0) cleans up.
        if ranks is None or ranks.is_main:
            _remove_unvouched(record_path, call.outputs)
        raise
    ctx.ran.append(call.record_name)
    if ranks is None or ranks.is_main:
        artifact = _as_recorded(record_path, artifact)
    return artifact


def _as_recorded(record_path: Path, artifact: Artifact) -> Artifact:
    """The artifact with the stage, config and metrics its record holds (the record's config
    is the one the cache key was made of; its metrics add the CPU's integer class), so a stage
    that ran returns what a reused one does."""
    record = json.loads(record_path.read_text())
    return replace(
        artifact,
        stage=record["stage"],
        config=record.get("config", {}),
        metrics=record.get("metrics", {}),
    )


def _remove_unvouched(record_path: Path, outputs: Sequence[Path]) -> None:
    recorded: dict[str, str] = {}
    try:
        record = json.loads(record_path.read_text())
        recorded = {Path(o["path"]).name: o["sha256"] for o in record.get("outputs", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    for out in outputs:
        try:
            if out.is_file() and recorded.get(out.name) != sha256_file(out):
                out.unlink()
                log.info("removed %s: its stage did not finish, no record vouches for it", out)
        except OSError as exc:  # cleanup must not mask the stage's own error
            log.warning("could not remove %s after a failed stage: %s", out, exc)
