from onnxship.core.errors import OnnxshipError


class BenchError(OnnxshipError):
    """Errors of runtime_bench: sessions, providers, inputs, measurements."""
