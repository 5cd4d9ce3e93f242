"""The torch-free core every onnxship package may import: the error base class, `Artifact`,
sha256 and atomic writes, stage records, ONNX metadata keys and their writer, dataset readers.

It imports only the standard library and numpy (onnxruntime lazily, where a reader needs it),
so the bench-only install (onnxruntime + numpy) can use all of it.
"""
