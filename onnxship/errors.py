from onnxship.core.errors import OnnxshipError


class PipelineError(OnnxshipError):
    """Errors of the onnxship package: configs, bundles, manifests, verify and gate."""
