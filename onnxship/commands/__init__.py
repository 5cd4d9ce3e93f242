"""One module per CLI command. Each defines `register(subparsers)`, which adds its parser and
sets `func`. Module tops import only the standard library: heavy imports (torch, onnx,
onnxruntime) happen inside the command's functions. Flags that fill a config field are declared
on the library's config dataclass (`onnxship.core.flags`); a command with such flags registers
through `common.add_command`, whose parser adds its arguments only when that command is parsed
or its help shown. So `onnxship --help` imports no library, `bench`, `eval`, `verify`, `gate`
and `tune` run (and show help) on a box with only onnxruntime + numpy, and no command's
`--help` imports torch, onnx or the quantizer: the configs live in modules free of them
(`models.train_config`, `models.prune_config`, `models.distill_config`,
`calibrate.quantize_config`, ...) and a stage's library is imported only by its command's
`run`."""

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
