"""torch -> ONNX: one self-contained, checked file per checkpoint.

`onnx_from_checkpoint(src, cfg, out_path)` rebuilds the model from its checkpoint (eval mode,
so BatchNorm uses its running statistics and the exporter folds it into the convolution),
exports it with the dynamo exporter (falling back to the TorchScript exporter only when dynamo
fails, recording which ran and why), and writes ONE file atomically:

- input `input` [batch, *input_shape] float32 (the checkpoint's dataset: [1, 28, 28] for MNIST),
  output `logits` [batch, num_classes]; the batch
  dimension is exported from a batch-2 example and must come out symbolic (checked);
- weights inline: the dynamo exporter's in-memory `ModelProto` is saved without external data
  (its default `f=path` writes a small `.onnx` plus a `.onnx.data` sidecar), so no `.onnx.data`
  is ever written next to the output;
- `metadata_props`: the keys of `onnxship.core.model_meta` (producer, source sha256,
  architecture, widths, normalisation, preprocessing recipe, class labels, precision "fp32");
- checked before it is renamed into place: `onnx.checker` (full_check), strict shape
  inference, and parity against PyTorch on real test samples of the checkpoint's dataset
  (MNIST by default; npz / imagefolder: up to `parity_samples` of them) in a real ONNX Runtime
  session at batch 1 and a larger batch (max |Δlogit| <= 1e-4, 100 % argmax agreement). A
  failure raises `ExportError(exit_code=1)` and leaves nothing under `out_path`.

Default opset (`ExportConfig.opset=None`): `DEFAULT_OPSET` (18), or the newest the installed
onnxruntime loads if that is older. An artifact is built on one machine and deployed on another,
whose onnxruntime is often older: the build machine's newest opset (28 with onnxruntime 1.32)
made every artifact unloadable on onnxruntime 1.31 ("Opset 28 is under development ...
official support for domain ai.onnx is till opset 26"), measured on the GPU machine with
onnxruntime-gpu 1.31.1. Opset 18 is the dynamo exporter's own (no version conversion) and loads
on onnxruntime >= 1.14. `--opset K` asks for another; `ort_opset_range()` gives the range the
installed onnxruntime loads: it builds a one-node model stamped with each opset from the
installed onnx's newest downwards and asks onnxruntime to create a session; the first that
loads is the maximum. The minimum, 7, is onnxruntime's documented floor ("only guarantees
support for models stamped with opset version 7 or above"). The dynamo exporter builds at its
native opset and converts to the target; a conversion it cannot do leaves the model at another
opset, which is caught and treated as a dynamo failure.

The module top imports no torch: `describe_onnx` is usable on a torch-free install.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import io
import json
import logging
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxship.core import dataset as dataset_meta
from onnxship.core import model_meta
from onnxship.core.artifact import Artifact, atomic_output, require_parent_writable
from onnxship.core.flags import flag
from onnxship.export.checks import (
    check_onnx_file,
    check_parity_batch_sizes,
    describe_model,
    describe_onnx,
    onnx_parity,
    ort_session,
)
from onnxship.export.errors import ExportError
from onnxship.export.optimize import OptimizeLevel, optimize_onnx_file

__all__ = [
    "DEFAULT_OPSET",
    "ExportConfig",
    "ExporterKind",
    "OptimizeLevel",
    "describe_onnx",
    "onnx_from_checkpoint",
    "ort_opset_range",
    "resolve_opset",
]

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
ORT_MIN_OPSET = 7  # onnxruntime's documented floor for the ai.onnx domain
# The default export opset: portable to older onnxruntime on the deployment target (module doc).
DEFAULT_OPSET = 18
TORCHSCRIPT_MAX_OPSET_FALLBACK = 20  # torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit for one self-contained file
MNIST_TEST_SIZE = 10_000


class ExporterKind(enum.Enum):
    AUTO = "auto"  # dynamo, falling back to TorchScript only when dynamo raises
    DYNAMO = "dynamo"
    TORCHSCRIPT = "torchscript"


@dataclass(frozen=True)
class ExportConfig:
    """How to export a checkpoint.

    opset: ai.onnx opset; None = `DEFAULT_OPSET` (18, portable to onnxruntime >= 1.14), capped
      at the newest the installed onnxruntime runs (`ort_opset_range`).
    exporter: auto (dynamo, TorchScript fallback), dynamo or torchscript.
    export_batch: batch size of the example input (>= 2 so the exporter cannot specialise the
        batch dimension to 1).
    parity_samples: MNIST test images compared with PyTorch (>= 1,000, the first in file order).
    parity_batch_sizes: ORT batch sizes the parity runs at (>= 2 distinct sizes: proves the
        dynamic axis); every size sees all parity samples.
    parity_atol: max |Δlogit| allowed vs PyTorch (argmax agreement must be 100 %).
    optimize: optional ONNX Runtime offline graph optimization of the saved file.
    """

    # fmt: off
    opset: int | None = field(default=None, metadata=flag(
        "--opset", f"ai.onnx opset (default: {DEFAULT_OPSET}, which onnxruntime >= 1.14 loads, "
        "so the artifact runs on older deployment targets; the installed onnxruntime must load "
        "it)", type=int))
    exporter: ExporterKind = field(default=ExporterKind.AUTO, metadata=flag(
        "--exporter", "auto = dynamo, falling back to TorchScript only if dynamo fails "
        "(default: {default})"))
    export_batch: int = 2
    parity_samples: int = field(default=1000, metadata=flag(
        "--parity-samples", "MNIST test images compared with PyTorch, 1000..10000 "
        "(default: {default})", type=int))
    parity_batch_sizes: tuple[int, ...] = (1, 250)
    parity_atol: float = 1e-4
    optimize: OptimizeLevel = field(default=OptimizeLevel.NONE, metadata=flag(
        "--optimize", "save ONNX Runtime's offline-optimized graph: basic stays portable ONNX, "
        "extended adds ORT-only fused ops (default: {default})"))
    # fmt: on

    def validate(self) -> None:
        if self.opset is not None and (
            not isinstance(self.opset, int) or isinstance(self.opset, bool)
        ):
            raise ExportError(f"export opset must be an integer or unset, got {self.opset!r}")
        if not isinstance(self.exporter, ExporterKind):
            raise ExportError(
                f"unknown exporter {self.exporter!r}; expected one of "
                f"{', '.join(k.value for k in ExporterKind)}"
            )
        if not isinstance(self.optimize, OptimizeLevel):
            raise ExportError(
                f"unknown optimize level {self.optimize!r}; expected one of "
                f"{', '.join(k.value for k in OptimizeLevel)}"
            )
        if self.export_batch < 2:
            raise ExportError(
                f"export_batch must be >= 2 (got {self.export_batch}): a batch-1 example lets "
                "the exporter specialise the batch dimension to 1"
            )
        if not 1000 <= self.parity_samples <= MNIST_TEST_SIZE:
            raise ExportError(
                f"parity_samples must be in [1000, {MNIST_TEST_SIZE}] MNIST test images, got "
                f"{self.parity_samples}"
            )
        check_parity_batch_sizes(self.parity_batch_sizes, example="1,250")
        if not (math.isfinite(self.parity_atol) and self.parity_atol >= 0):
            raise ExportError(f"parity_atol must be a finite number >= 0, got {self.parity_atol}")


# ------------------------------------------------------------------------------------ opsets


@functools.cache
def ort_opset_range() -> tuple[int, int]:
    """(min, max) ai.onnx opset the installed onnxruntime loads, probed (see module doc)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the probes of refused opsets are expected failures
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    for opset in range(onnx.defs.onnx_opset_version(), ORT_MIN_OPSET - 1, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8  # old enough for every onnxruntime that runs these opsets
        try:
            sess = ort.InferenceSession(
                model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
            )
            sess.run(None, {"x": np.ones(1, np.float32)})
        except Exception:  # onnxruntime's pybind error types: the opset is refused
            continue
        return ORT_MIN_OPSET, opset
    raise ExportError(
        f"onnxruntime {ort.__version__} loads no ai.onnx opset between {ORT_MIN_OPSET} and "
        f"{onnx.defs.onnx_opset_version()}; reinstall onnxruntime"
    )


def _torchscript_max_opset() -> int:
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):
        return TORCHSCRIPT_MAX_OPSET_FALLBACK


def resolve_opset(requested: int | None, exporter: ExporterKind) -> int:
    """The opset to export at: `requested` if onnxruntime runs it (else ExportError naming
    the range), or `DEFAULT_OPSET` capped at the newest onnxruntime runs (and at the
    TorchScript exporter's newest when that exporter is used)."""
    import onnxruntime as ort

    low, high = ort_opset_range()
    if requested is None:
        if exporter is ExporterKind.TORCHSCRIPT:
            return min(DEFAULT_OPSET, high, _torchscript_max_opset())
        return min(DEFAULT_OPSET, high)
    if not low <= requested <= high:
        raise ExportError(
            f"opset {requested} cannot be run by the installed onnxruntime {ort.__version__}: "
            f"it runs ai.onnx opsets {low}..{high}; pass --opset in that range or leave it "
            f"unset for the default ({min(DEFAULT_OPSET, high)})"
        )
    return requested


# --------------------------------------------------------------------------------- exporters


class _ExporterFailed(Exception):
    """An exporter ran but its result is unusable (wrong opset, fixed batch...)."""


def _opset_of(proto: Any) -> int | None:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _export_dynamo(model: Any, example: Any, opset: int) -> Any:
    import torch

    batch = torch.export.Dim(BATCH_DIM)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):  # the exporter reports progress on stdout
        program = torch.onnx.export(
            model,
            (example,),
            None,  # keep the model in memory: no .onnx.data sidecar is ever written
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_shapes=({0: batch},),
            optimize=True,  # constant folding: folds eval-mode BatchNorm into the conv
            verbose=False,
        )
    if captured.getvalue().strip():
        log.debug("dynamo exporter output:\n%s", captured.getvalue())
    if program is None:
        raise _ExporterFailed("torch.onnx.export(dynamo=True) returned no ONNXProgram")
    return program.model_proto


def _export_torchscript(model: Any, example: Any, opset: int) -> Any:
    import onnx
    import torch

    buffer = io.BytesIO()
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), warnings.catch_warnings():
        # chosen on purpose (explicitly, or as the fallback): its deprecation notice is noise
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes file objects
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
        )
    return onnx.load_from_string(buffer.getvalue())


# Loggers of the exporter stack that report routine steps (version conversion, optimizer
# passes) at INFO/WARNING on every export; shown with --verbose, quiet otherwise.
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet_exporter_logs() -> Iterator[None]:
    """Raise the exporter stack's loggers to ERROR for the block unless this module's logger
    is at DEBUG (the CLI's --verbose); what they would have said is summarised in metrics."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)


def _require_opset(proto: Any, opset: int, exporter: str) -> None:
    produced = _opset_of(proto)
    if produced != opset:
        raise _ExporterFailed(
            f"the {exporter} exporter produced opset {produced} instead of the requested {opset} "
            "(its version conversion failed)"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0].strip() if text else "") or type(exc).__name__


def _run_exporters(
    model: Any, example: Any, cfg: ExportConfig
) -> tuple[Any, str, int, str | None, float]:
    """Export with the configured exporter(s): (proto, exporter used, opset, fallback reason,
    wall seconds of the exporter that succeeded)."""
    attempts: list[str] = []
    fallback_reason: str | None = None
    kinds = (
        [ExporterKind.DYNAMO, ExporterKind.TORCHSCRIPT]
        if cfg.exporter is ExporterKind.AUTO
        else [cfg.exporter]
    )
    for kind in kinds:
        opset = resolve_opset(cfg.opset, kind)
        t0 = time.perf_counter()
        try:
            with quiet_exporter_logs():
                if kind is ExporterKind.DYNAMO:
                    proto = _export_dynamo(model, example, opset)
                else:
                    proto = _export_torchscript(model, example, opset)
            _require_opset(proto, opset, kind.value)
        except Exception as exc:  # exporters raise many types; each means "this one failed"
            kind_of = "" if isinstance(exc, _ExporterFailed) else f"{type(exc).__name__}: "
            reason = f"{kind.value} at opset {opset}: {kind_of}{_first_line(exc)}"
            attempts.append(reason)
            log.info("export failed (%s)", reason)
            fallback_reason = reason
            continue
        wall = time.perf_counter() - t0
        if kind is not kinds[0]:
            log.warning("exported with %s after dynamo failed: %s", kind.value, fallback_reason)
            return proto, kind.value, opset, fallback_reason, wall
        return proto, kind.value, opset, None, wall
    raise ExportError(
        f"could not export the model to ONNX: {'; '.join(attempts)}; try another --opset or "
        "--exporter, or run with --verbose for the exporter's log"
    )


# ---------------------------------------------------------------------------------- checks


def _dim0(vi: Any) -> tuple[str | None, int | None]:
    dims = vi.type.tensor_type.shape.dim
    if not dims:
        return None, None
    d = dims[0]
    return (d.dim_param or None), (int(d.dim_value) if d.HasField("dim_value") else None)


def _require_interface(
    proto: Any, *, num_classes: int, exporter: str, input_shape: tuple[int, ...] = (1, 28, 28)
) -> None:
    """Input `input` [batch, *input_shape] float32 and output `logits` [batch, num_classes],
    with a symbolic batch dimension on both."""
    desc = describe_model(proto)
    names_in = [io_["name"] for io_ in desc["inputs"]]
    names_out = [io_["name"] for io_ in desc["outputs"]]
    if names_in != [INPUT_NAME] or names_out != [OUTPUT_NAME]:
        raise ExportError(
            f"the {exporter} exporter produced inputs {names_in} and outputs {names_out}; "
            f"expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}] — the model must take one image "
            "tensor and return one logits tensor"
        )
    for vi in (proto.graph.input[0], proto.graph.output[0]):
        param, value = _dim0(vi)
        if not param:
            raise ExportError(
                f"the {exporter} exporter fixed the batch dimension of {vi.name!r} to {value}: "
                "the graph's dim 0 must be symbolic (a dim_param); the model's forward must not "
                "depend on the batch size (e.g. no x.view(2, -1)); export it with batch >= 2"
            )
    shape_in = desc["inputs"][0]["shape"][1:]
    shape_out = desc["outputs"][0]["shape"][1:]
    if shape_in != list(input_shape) or shape_out != [num_classes]:
        raise ExportError(
            f"exported shapes are input [batch, {shape_in}] and output [batch, {shape_out}]; "
            f"expected [batch, {list(input_shape)}] and [batch, {num_classes}]"
        )
    if desc["inputs"][0]["dtype"] != "float32" or desc["outputs"][0]["dtype"] != "float32":
        raise ExportError(
            f"exported dtypes are {desc['inputs'][0]['dtype']} -> {desc['outputs'][0]['dtype']}; "
            "expected float32 -> float32"
        )


def _metadata(meta: Any, *, source_sha256: str) -> dict[str, str]:
    from onnxship.core.version import __version__

    return {
        model_meta.PRODUCER: f"onnxship {__version__}",
        model_meta.SOURCE_SHA256: source_sha256,
        model_meta.ARCHITECTURE: meta.arch,
        model_meta.WIDTHS: json.dumps(dict(meta.widths), sort_keys=True),
        model_meta.INPUT_MEAN: json.dumps(list(meta.mean)),
        model_meta.INPUT_STD: json.dumps(list(meta.std)),
        model_meta.INPUT_PREPROCESS: model_meta.PREPROCESS_TEXT,
        model_meta.CLASS_LABELS: json.dumps(list(meta.class_labels)),
        model_meta.PRECISION: "fp32",
        **({} if meta.dataset is None else {dataset_meta.METADATA_KEY: meta.dataset.to_metadata()}),
    }


def mnist_test_inputs(
    data_dir: str | os.PathLike[str] | None,
    samples: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> tuple[Any, Any]:
    """The first `samples` MNIST test images, normalised float32 NCHW, and their labels."""
    from onnxship.core import mnist

    try:
        from onnxship.models.training_data import ensure_mnist

        root = ensure_mnist(data_dir)  # downloads only when files are missing
    except ImportError:  # torch-free install: no download, a clear error instead
        root = mnist.resolve_data_root(data_dir)
    split = mnist.load_split(root, "test")
    images = split.images[:samples]
    return mnist.normalize(images, mean, std), split.labels[:samples]


def parity_inputs(
    meta: Any, data: Any, data_dir: str | os.PathLike[str] | None, samples: int
) -> tuple[Any, Any]:
    """Test inputs for parity: MNIST's first `samples` images, or for a checkpoint trained on
    other data (recorded in its sidecar, or `data`) the first `samples` of its test split."""
    from onnxship.core.dataset import DatasetKind

    recorded = data if data is not None else meta.data
    if meta.dataset is None or meta.dataset.kind is DatasetKind.MNIST:
        return mnist_test_inputs(data_dir, samples, meta.mean, meta.std)
    from onnxship.models.training_data import DataConfig, open_data

    cfg = recorded if isinstance(recorded, DataConfig) else DataConfig.from_json(recorded)
    test = open_data(cfg, data_dir).split("test")
    return test.x[:samples].numpy(), test.y[:samples].numpy()


def _torch_logits(model: Any, x: Any, batch_size: int = 250) -> Any:
    import numpy as np
    import torch

    with torch.no_grad():
        outs = [
            model(torch.from_numpy(x[i : i + batch_size])).numpy()
            for i in range(0, x.shape[0], batch_size)
        ]
    return np.concatenate(outs, axis=0)


# ------------------------------------------------------------------------------ the stage


def onnx_from_checkpoint(
    src: str | os.PathLike[str],
    cfg: ExportConfig,
    out_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    data: Any = None,
) -> Artifact:
    """Export the checkpoint `src` (.pt + .json sidecar) to one checked `.onnx` at `out_path`.
    Parity data: `data` (a models.training_data.DataConfig), else what the checkpoint records.

    Raises `ExportError` (exit 2) for bad input (opset onnxruntime cannot run, unwritable
    output, exporter failure), `ModelsError` for a checkpoint that does not match its
    architecture, and `ExportError(exit_code=1)` when the parity check fails.
    """
    import torch

    from onnxship.models.checkpoint import load_checkpoint

    cfg.validate()
    out = Path(out_path)
    require_parent_writable(out, ExportError)
    resolve_opset(cfg.opset, ExporterKind.DYNAMO)  # a bad --opset fails before the export
    model, meta = load_checkpoint(src)
    model.eval()
    example = torch.zeros(cfg.export_batch, *meta.input_shape, dtype=torch.float32)
    exported = _exported_proto(model, meta, example, cfg)

    x, _labels = parity_inputs(meta, data, data_dir, cfg.parity_samples)
    reference = _torch_logits(model, x)
    checked, description, parity = _write_checked(
        exported.proto, out, cfg, x, reference, what=f"{out.name} (export of {Path(src).name})"
    )
    metrics = _export_metrics(meta, cfg, exported, checked, description, parity)
    if metrics["batchnorm_nodes"]:
        log.warning(
            "%s still has %d BatchNormalization node(s): the exporter did not fold them",
            out,
            metrics["batchnorm_nodes"],
        )
    log.info(
        "exported %s with %s at opset %d in %.1f s; parity max |dlogit| %.2e",
        out,
        exported.exporter,
        exported.opset,
        exported.wall_s,
        parity.max_abs_logit_diff,
    )
    return Artifact.from_file(
        out,
        stage="export",
        config=cfg,
        parent_sha256=meta.weights_sha256,
        metrics=metrics,
    )


@dataclass(frozen=True)
class _Exported:
    proto: Any
    exporter: str
    opset: int
    fallback_reason: str | None
    wall_s: float


def _exported_proto(model: Any, meta: Any, example: Any, cfg: ExportConfig) -> _Exported:
    """The exporters run (`_run_exporters`), the interface checked, the metadata and a
    description set, and the size held under protobuf's limit."""
    import torch

    proto, exporter, opset, fallback_reason, export_wall_s = _run_exporters(model, example, cfg)
    _require_interface(
        proto, num_classes=len(meta.class_labels), exporter=exporter, input_shape=meta.input_shape
    )
    model_meta.set_metadata(proto, _metadata(meta, source_sha256=meta.weights_sha256))
    proto.doc_string = (
        f"{meta.arch} {json.dumps(dict(meta.widths), sort_keys=True)} exported by torch "
        f"{torch.__version__} ({exporter} exporter) at opset {opset}"
    )
    if proto.ByteSize() > MAX_PROTO_BYTES:
        raise ExportError(
            f"{meta.arch} is {proto.ByteSize()} bytes as ONNX, over protobuf's 2 GB limit for "
            "one self-contained file; onnxship ships single-file models only"
        )
    return _Exported(proto, exporter, opset, fallback_reason, export_wall_s)


def _write_checked(
    proto: Any, out: Path, cfg: ExportConfig, x: Any, reference: Any, *, what: str
) -> tuple[Any, dict[str, Any], Any]:
    """Write `proto` to `out` (atomic; optimised when configured), check it and require parity
    with the PyTorch logits `reference` on `x`; return the checked model, its description and
    the parity result. Nothing is left at `out` when a check fails."""
    import onnx

    with atomic_output(out) as tmp:
        onnx.save_model(proto, os.fspath(tmp), save_as_external_data=False)
        if cfg.optimize is not OptimizeLevel.NONE:
            optimized = tmp.with_name(tmp.name + ".opt")
            try:
                optimize_onnx_file(tmp, cfg.optimize, optimized)
                os.replace(optimized, tmp)
            finally:
                optimized.unlink(missing_ok=True)
        checked = check_onnx_file(tmp)
        description = describe_model(checked)
        parity = onnx_parity(
            tmp,
            x,
            reference,
            batch_sizes=cfg.parity_batch_sizes,
            reference_name="pytorch",
            candidate_name="onnxruntime",
            session=ort_session(tmp),
        )
        parity.require(
            what=what,
            atol=cfg.parity_atol,
            min_agreement=1.0,
            fix="the exported graph computes something else than the PyTorch model; try "
            "--exporter torchscript or another --opset, and report the checkpoint",
        )
    return checked, description, parity


def _export_metrics(
    meta: Any,
    cfg: ExportConfig,
    exported: _Exported,
    checked: Any,
    description: dict[str, Any],
    parity: Any,
) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort
    import torch

    op_types = Counter(node.op_type for node in checked.graph.node)
    low, high = ort_opset_range()
    return {
        "precision": "fp32",
        "architecture": meta.arch,
        "widths": dict(meta.widths),
        "exporter": exported.exporter,
        "exporter_requested": cfg.exporter.value,
        "exporter_fallback_reason": exported.fallback_reason,
        "opset": exported.opset,
        "opset_requested": cfg.opset,
        "ort_opset_range": [low, high],
        "ir_version": description["ir_version"],
        "inputs": description["inputs"],
        "outputs": description["outputs"],
        "dynamic_batch_dim": BATCH_DIM,
        "batchnorm_nodes": op_types.get("BatchNormalization", 0),
        "op_types": dict(sorted(op_types.items())),
        "optimize_level": cfg.optimize.value,
        "export_wall_s": round(exported.wall_s, 3),
        "parity": parity.to_metrics(),
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
    }


def onnx_from_module(
    model: Any,
    path: str | os.PathLike[str],
    input_shape: tuple[int, ...],
    *,
    opset: int | None = None,
    exporter: ExporterKind = ExporterKind.TORCHSCRIPT,
) -> Path:
    """A quick, unchecked ONNX file of an in-memory model, through the exporters above (eval
    mode; input `input` [batch, *input_shape], output `logits`, the batch symbolic; the
    TorchScript exporter by default, ~0.1 s a small model): for latency screens of untrained
    candidates (the search stage). No metadata and no parity check: the artifacts that ship
    come from `onnx_from_checkpoint`."""
    import onnx
    import torch

    cfg = ExportConfig(opset=opset, exporter=exporter)
    cfg.validate()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings, the same for every candidate
        proto = _run_exporters(model, torch.zeros(2, *input_shape), cfg)[0]
    onnx.save(proto, os.fspath(path))
    return Path(path)
