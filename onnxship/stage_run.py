"""Run one stage function and write its record: the seam shared by the single-stage CLI
commands and the pipeline, so both produce identical `stages/<name>.json` files."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from runtime_bench.artifact import Artifact, utc_now, write_stage_record

log = logging.getLogger(__name__)


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
) -> Artifact:
    """Call `produce()`, then write `out_dir/stages/<record_name>.json` with the artifact's
    metrics, the input and output files with their sha256, timestamps and wall time."""
    started = utc_now()
    t0 = time.perf_counter()
    artifact = produce()
    wall_s = time.perf_counter() - t0
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
