"""One module per CLI command. Each defines `register(subparsers)`, which adds its parser and
sets `func`. Module tops import only the standard library: heavy imports (torch, onnx,
onnxruntime) happen inside the command's function, so `bench`, `eval`, `verify` and `gate` run
on a box with only onnxruntime + numpy, and `--help` is fast everywhere."""

COMMAND_MODULES = (
    "run",
    "train",
    "prune",
    "distill",
    "export",
    "fp16",
    "quantize",
    "eval",
    "bench",
    "verify",
    "gate",
    "tune",
)
