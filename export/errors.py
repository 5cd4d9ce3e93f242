from onnxship.core.errors import OnnxshipError


class ExportError(OnnxshipError):
    """Errors of the export package: torch -> ONNX export, FP16 conversion and their checks.

    exit_code 2 (default) for bad input (unknown opset, unwritable output, corrupt .onnx);
    exit_code 1 when a check ran and failed (parity, fp16 range).
    """
