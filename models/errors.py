from onnxship.core.errors import OnnxshipError


class ModelsError(OnnxshipError):
    """Errors of the PyTorch side: data, architectures, training, checkpoints, pruning, KD."""
