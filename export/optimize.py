"""Optional ONNX Runtime offline graph optimization: save the graph ORT would build at load
time, so a deployer can ship a pre-optimized file (and record the level it was made with).

Levels offered: `basic` (constant folding, redundant-node elimination: stays standard ONNX,
portable to any runtime) and `extended` (adds ORT-specific fusions such as `FusedConv` /
`FusedGemm` in the `com.microsoft` domain: the file then runs on ONNX Runtime only). ORT's
`all` level is deliberately not offered: it adds NCHWc layout transforms that ORT itself warns
are specific to the CPU the file was made on, which contradicts "ship one file".
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

from onnxship.export.errors import ExportError


class OptimizeLevel(enum.Enum):
    NONE = "none"
    BASIC = "basic"
    EXTENDED = "extended"


def optimize_onnx_file(
    src: str | os.PathLike[str], level: OptimizeLevel, out_path: str | os.PathLike[str]
) -> Path:
    """Write ORT's optimized version of `src` (at `level`) to `out_path` (one file, metadata
    kept). `out_path` is written directly; callers pass a temporary path and rename it."""
    import onnxruntime as ort

    if level is OptimizeLevel.NONE:
        raise ExportError("optimize_onnx_file called with level none; nothing to do")
    graph_level = {
        OptimizeLevel.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        OptimizeLevel.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[level]
    options = ort.SessionOptions()
    options.graph_optimization_level = graph_level
    options.optimized_model_filepath = os.fspath(out_path)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(
            os.fspath(src), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's pybind exceptions
        raise ExportError(
            f"ONNX Runtime could not optimize {src} at level {level.value}: "
            f"{str(exc).strip().splitlines()[0]}; export without --optimize"
        ) from exc
    out = Path(out_path)
    if not out.is_file() or out.stat().st_size == 0:
        raise ExportError(
            f"ONNX Runtime wrote no optimized model to {out}; export without --optimize"
        )
    return out
