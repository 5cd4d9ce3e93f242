"""Calibration data and static INT8 quantization through onnxruntime.quantization."""
