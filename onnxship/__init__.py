"""onnxship: CLI, pipeline, manifest, verify and gate on top of models/export/calibrate/runtime_bench."""

__version__ = "0.1.0"
