"""`onnxship run`: the whole pipeline, resumable, into one bundle folder.

The stages, in order, are listed in one place: `onnxship.stages.plan.plan(cfg)` (train ->
export(teacher) -> prune -> distill -> export(student) -> quantize -> fp16 -> ... -> eval ->
bench -> manifest). This module holds the bundle folder (its marker, the lock) and hands the
plan to the one runner, `onnxship.stages.runner.run_plan`; `api.run` calls `run_pipeline`.

With `[model] factory = "pkg.module:function"` and `[data] kind = "npz" | "imagefolder"` the
same stages run on a user's own network and data (ONNX-side stages read the data as npz: the
carved validation split is written to `data/val.npz` for INT8 calibration and its accuracy
budget; the test split is `data/test.npz` for FP16 parity, eval and `verify`). Everything is
checked before the bundle folder is touched: a factory that does not import or build, data
that the model cannot take or whose labels exceed its classes, bad npz files.

Each stage's record carries a cache key: the sha256 of its config, its input files' sha256 and
the onnxship version. A rerun skips a stage whose key matches and whose outputs still hash to
what the record says; `--force` redoes everything. Every file is written atomically and the
record only after its outputs, so a run killed mid-stage (even kill -9) leaves no partial
artifact and the next run redoes just that stage.

Under torchrun every rank runs the plan: train and distill are data-parallel, every other
stage runs on rank 0 while the others wait (`stage_run.cached_stage`, `Ranks.on_main`), and
only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from onnxship import __version__
from onnxship.core.artifact import atomic_write_json, config_hash, jsonable, utc_now
from onnxship.errors import PipelineError
from onnxship.models import distributed
from onnxship.stage_run import RunContext
from onnxship.stages.base import Run
from onnxship.stages.config import (  # re-exported: the config's long-standing import path
    CONFIG_PATH_KEYS,
    ExtraArtifacts,
    ModelConfig,
    PipelineConfig,
    config_to_toml,
    load_config,
)
from onnxship.stages.data import own_model_and_data
from onnxship.stages.plan import plan
from onnxship.stages.runner import run_plan

__all__ = [
    "CONFIG_PATH_KEYS", "ExtraArtifacts", "ModelConfig", "PipelineConfig", "PipelineResult",
    "bundle_lock", "config_to_toml", "load_config", "run_pipeline",
]  # fmt: skip

log = logging.getLogger(__name__)

RUN_MARKER = ".onnxship-run.json"
RUN_LOCK = ".onnxship-run.lock"
BUNDLE_DIRS = ("artifacts", "checkpoints", "calibration", "stages", "results", "plots", "data")


# --------------------------------------------------------------------------------------------
# The bundle folder


def _prepare_out_dir(out_dir: Path, cfg: PipelineConfig, force: bool) -> None:
    """Refuse a folder holding another run's bundle (different config) unless --force."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PipelineError(f"--out {out_dir} is a file; pass a folder")
    marker = out_dir / RUN_MARKER
    key = config_hash(jsonable(cfg))
    previous = None
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text()).get("config_hash")
        except ValueError:
            previous = None
    holds_bundle = marker.is_file() or (out_dir / "manifest.json").is_file()
    if holds_bundle and previous != key and not force:
        raise PipelineError(
            f"{out_dir} holds another run's bundle made with a different config; pass "
            "--force to replace it, or choose another --out"
        )
    if holds_bundle and force:
        # Only folders onnxship itself creates are removed, never the user's other files.
        for name in BUNDLE_DIRS:
            shutil.rmtree(out_dir / name, ignore_errors=True)
        (out_dir / "manifest.json").unlink(missing_ok=True)
        (out_dir / "report.md").unlink(missing_ok=True)
    for name in BUNDLE_DIRS:
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        # Temporary files of a run that was killed mid-write (atomic_output's ".<name>.*.tmp").
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    atomic_write_json(
        marker, {"config_hash": key, "onnxship_version": __version__, "created": utc_now()}
    )


@contextlib.contextmanager
def bundle_lock(out_dir: Path) -> Iterator[None]:
    """Hold an advisory lock (`fcntl.flock` on OUT/.onnxship-run.lock) for the whole run, so a
    second `onnxship run` on the same bundle refuses (exit 2) instead of interleaving writes.
    The kernel drops the lock when the process ends, even on kill -9: no stale lock."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PipelineError(f"--out {out_dir} is a file; pass a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RUN_LOCK
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise PipelineError(
                f"{out_dir} is in use by another onnxship run ({holder}); wait for it to "
                "finish, or pass another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {utc_now()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class PipelineResult:
    out_dir: Path
    manifest_path: Path
    ran: list[str]
    skipped: list[str]


def run_pipeline(
    cfg: PipelineConfig,
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: Callable[[str], None] = lambda msg: None,
) -> PipelineResult:
    """Run `plan(cfg)` into the bundle folder `out_dir` (resumable; `force` redoes every
    stage). The user's own model and data are checked before the folder is touched."""
    out = Path(out_dir)
    own = own_model_and_data(cfg)
    stages = plan(cfg)
    ranks = distributed.current()
    # Only rank 0 writes, so only rank 0 holds the bundle lock; the other ranks follow it.
    lock = bundle_lock(out) if ranks.is_main else contextlib.nullcontext()
    with lock:
        ranks.on_main(lambda: _prepare_out_dir(out, cfg, force), what="preparing the bundle folder")
        ctx = RunContext(
            out_dir=out, force=force, data_dir=cfg.data_dir, progress=progress, ranks=ranks
        )
        artifacts = run_plan(stages, Run(cfg=cfg, ctx=ctx, own=own))
    progress(f"[done] bundle at {out} ({len(ctx.ran)} stages ran, {len(ctx.skipped)} reused)")
    return PipelineResult(
        out_dir=out, manifest_path=artifacts["manifest"].path, ran=ctx.ran, skipped=ctx.skipped
    )
