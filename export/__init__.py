"""torch -> ONNX export (one self-contained, verified file) and FP16 conversion."""
