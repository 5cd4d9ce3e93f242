"""Sessions, latency and accuracy of ONNX artifacts. Imports only onnxruntime, numpy, stdlib."""
