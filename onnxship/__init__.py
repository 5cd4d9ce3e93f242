"""onnxship: prune + distill in PyTorch, export to ONNX, INT8/FP16, benchmark on ONNX Runtime.

Layers (imports run downwards only):
  onnxship.cli, onnxship.commands          the command line (nothing imports it)
  onnxship.api, pipeline, manifest, verify, gate, report, measure, configio, stage_run
  onnxship.models, export, calibrate, runtime_bench   (repository folders models/, export/, ...)
  onnxship.core                            torch-free primitives
"""

from onnxship.core.version import __version__

__all__ = ["__version__"]
