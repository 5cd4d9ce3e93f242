"""Exact graph rewrites applied after `quant_pre_process`, before quantization.

`cap_opset`: lower the opset stamp to the newest one whose QuantizeLinear/DequantizeLinear
this onnxruntime implements (see there).

`reshape_to_flatten`, measured on this project's models: a `Reshape` that flattens (`[-1, C*H*W]` on an
input whose dims after the first are known, or `[0, -1]` / `[0, C*H*W]` without `allowzero`)
becomes `Flatten(axis=1)`, which computes the same tensor bit for bit. (`allowzero` only
changes the meaning of a 0 in the shape, so `[-1, C*H*W]` is rewritten with either value.)

Why: ONNX Runtime's `QDQPropagationTransformer` moves a `QuantizeLinear` backwards across
`Reshape` and `MaxPool` (opset 12+). When the convolution before them stays in float (recipe
scope `linear`), that lands the uint8 tensor on ORT's NCHW uint8 `MaxPool` kernel, which was
measured ~100x slower than the float NCHWc one (12 ms vs 0.09 ms for SimpleCNN at batch 64),
making the INT8 model 10x slower than FP32. `Flatten` is not a propagation op, so the Q stays
after it and the float Conv -> MaxPool path keeps ORT's fast float kernels.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rewrite:
    node: str
    before: str
    after: str

    def to_json(self) -> dict[str, str]:
        return {"node": self.node, "before": self.before, "after": self.after}


def _static_dims(model: Any, name: str) -> list[int | None] | None:
    """Dims of a tensor from graph inputs / value_info / outputs (None for symbolic ones)."""
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if vi.name == name and vi.type.HasField("tensor_type"):
            shape = vi.type.tensor_type.shape
            if not shape.dim and not vi.type.tensor_type.HasField("shape"):
                return None
            return [int(d.dim_value) if d.HasField("dim_value") else None for d in shape.dim]
    return None


def _constant_ints(model: Any, name: str) -> list[int] | None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return [int(v) for v in numpy_helper.to_array(attr.t).reshape(-1)]
    return None


def _is_flatten(shape: list[int], dims: list[int | None]) -> bool:
    """True when Reshape(x, shape) equals Flatten(x, axis=1) for x with `dims`."""
    if len(shape) != 2 or len(dims) < 1:
        return False
    rest = dims[1:]
    rest_known = all(d is not None for d in rest)
    inner = math.prod(d for d in rest if d is not None) if rest_known else None
    first, second = shape
    if first == 0 and second == -1:
        return True
    if first == -1 and inner is not None and second == inner:
        return True
    return first == 0 and inner is not None and second == inner


def reshape_to_flatten(model: Any) -> list[Rewrite]:
    """Rewrite flattening Reshapes in `model` (an onnx ModelProto) in place; return what changed."""
    from onnx import helper

    rewrites: list[Rewrite] = []
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        shape = _constant_ints(model, node.input[1])
        allowzero = any(a.name == "allowzero" and a.i != 0 for a in node.attribute)
        if allowzero and shape is not None and 0 in shape:
            continue  # with allowzero=1 a 0 means an empty dim, not "copy"; leave it alone
        dims = _static_dims(model, node.input[0])
        if shape is None or dims is None or not _is_flatten(shape, dims):
            continue
        shape_name = node.input[1]
        before = f"Reshape(shape={shape})"
        del node.input[1:]
        node.op_type = "Flatten"
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("axis", 1))
        rewrites.append(Rewrite(node.name, before, "Flatten(axis=1)"))
        if consumers.get(shape_name, 0) == 1:
            for i, init in enumerate(model.graph.initializer):
                if init.name == shape_name:
                    del model.graph.initializer[i]
                    break
    if rewrites:
        log.debug("rewrote %s", [r.to_json() for r in rewrites])
    return rewrites


@functools.cache
def ort_max_qdq_opset(upper: int) -> int:
    """The newest ai.onnx opset <= `upper` at which this onnxruntime loads QuantizeLinear and
    DequantizeLinear (probed with a two-node model, cached)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(3, np.uint8), "z"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        inits,
    )
    for opset in range(upper, 12, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = min(model.ir_version, 10)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # NOT_IMPLEMENTED for a Q/DQ version this build lacks
            continue
        return opset
    return 13


def cap_opset(model: Any, max_opset: int) -> list[Rewrite]:
    """Lower the ai.onnx opset of `model` to `max_opset` when that is exact (in place).

    Exact means every node's schema is the same at both opsets (same `since_version`), so only
    the stamp changes. Otherwise onnx's version converter is used. Needed because
    quantize_static stamps its QuantizeLinear/DequantizeLinear nodes with the model's opset,
    and onnxruntime 1.32 has no kernel for QuantizeLinear-28 (onnx 1.23's newest): a model
    exported at opset 28 would quantize into a file ORT cannot load.
    """
    from onnx import defs, version_converter

    from onnxship.calibrate.errors import CalibrateError

    entry = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if entry is None or entry.version <= max_opset:
        return []
    current = entry.version
    same = True
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            now = defs.get_schema(node.op_type, current).since_version
            then = defs.get_schema(node.op_type, max_opset).since_version
        except Exception:  # unknown op type: let the converter decide
            same = False
            break
        if now != then:
            same = False
            break
    if same:
        entry.version = max_opset
        how = "restamped; every op's schema is the same at both opsets"
    else:
        try:
            converted = version_converter.convert_version(model, max_opset)
        except Exception as exc:
            raise CalibrateError(
                f"the model is at opset {current}, but this onnxruntime has QuantizeLinear/"
                f"DequantizeLinear kernels only up to opset {max_opset}, and onnx could not "
                f"convert the model down ({exc}); export it at opset {max_opset} or lower"
            ) from exc
        model.CopyFrom(converted)
        how = "converted with onnx.version_converter"
    return [
        Rewrite(
            "<model>",
            f"ai.onnx opset {current}",
            f"ai.onnx opset {max_opset} ({how}): onnxruntime has no QuantizeLinear-{current} "
            "kernel",
        )
    ]
