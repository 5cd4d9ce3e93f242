from runtime_bench.errors import OnnxshipError


class PipelineError(OnnxshipError):
    """Errors of the onnxship package: configs, bundles, manifests, verify and gate."""
