"""The one place the version lives; `onnxship.__version__` re-exports it."""

__version__ = "0.1.0"
