"""How much of an INT8 model's arithmetic runs in integer kernels: the share of its MACs.

A static INT8 file can be mostly float: a `-linear` recipe quantizes only Gemm/MatMul, and the
accuracy fallback leaves the most sensitive nodes in float. The manifest records this share so
a file labelled `int8` says what it is.

Method (structural, from the graph; not a profile of what ORT ran):
1. The model's symbolic dimensions are set to 1 (one sample, as the manifest's `macs`) and
   ONNX shape inference gives every tensor's shape.
2. MACs of each multiply-accumulate node, for one sample:
   Conv-like (Conv, ConvInteger, QLinearConv): output elements x (C_in / group) x kernel area,
   i.e. prod(output shape) x prod(W.shape[1:]);
   MatMul-like (MatMul, MatMulInteger, QLinearMatMul, Gemm, com.microsoft QGemm /
   MatMulIntegerToFloat): M x K x N from the shapes of the two inputs (the output's shape
   is not always inferable for com.microsoft operators).
3. A node runs in integer kernels when it is an integer operator (ConvInteger, QLinearConv,
   MatMulInteger, QLinearMatMul, QGemm, MatMulIntegerToFloat), or when it is a float Conv /
   MatMul / Gemm whose data input and weight both come from DequantizeLinear (the QDQ form
   that ORT fuses into integer kernels). Everything else counts as float.
4. share = integer MACs / all MACs (None when the graph has no such node).

Limitation: in QDQ form ORT decides the fusion at session creation; a Conv whose output is
not re-quantized may still run in float on some EPs. The share is what the file asks for.
"""

from __future__ import annotations

import math
import os
from typing import Any

CONV_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}  # op -> index of the weight input
MATMUL_OPS = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "QGemm", "MatMulIntegerToFloat"}
INTEGER_OPS = {
    "ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul", "QGemm",
    "MatMulIntegerToFloat",
}  # fmt: skip
QDQ_FUSABLE = {"Conv", "MatMul", "Gemm"}
METHOD = (
    "MACs of Conv/Gemm/MatMul nodes (one sample, shapes from ONNX shape inference) that are "
    "integer operators or whose data input and weight both come from DequantizeLinear, "
    "divided by the MACs of all such nodes"
)


def _shapes(model: Any) -> dict[str, list[int]]:
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


MATMUL_WEIGHT = {"QLinearMatMul": 3, "QGemm": 3}  # index of B; 1 for the others


def _macs(node: Any, shapes: dict[str, list[int]]) -> int | None:
    if node.op_type in CONV_OPS:
        out = shapes.get(node.output[0])
        weight = shapes.get(node.input[CONV_OPS[node.op_type]])
        if out is None or weight is None:
            return None
        return math.prod(out) * math.prod(weight[1:])
    a = shapes.get(node.input[0])
    b_index = MATMUL_WEIGHT.get(node.op_type, 1)
    b = shapes.get(node.input[b_index]) if len(node.input) > b_index else None
    if not a or not b:
        return None
    attrs = {at.name: at.i for at in node.attribute}
    if node.op_type in ("Gemm", "QGemm"):  # 2-D: A [M, K] (or [K, M]), B [K, N] (or [N, K])
        m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
        n = b[0] if attrs.get("transB") else b[1]
        return m * k * n
    if len(b) != 2:  # batched B: take the output's shape
        out = shapes.get(node.output[0])
        return None if out is None else math.prod(out) * a[-1]
    return math.prod(a[:-1]) * a[-1] * b[-1]


def integer_mac_share(path: str | os.PathLike[str]) -> dict[str, Any]:
    """{"share", "integer_macs", "total_macs", "float_nodes", "method"} for the model at `path`
    (see the module docstring for the method)."""
    import onnx

    model = onnx.load(os.fspath(path))
    shapes = _shapes(model)
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    integer = total = 0
    float_nodes: list[str] = []
    unknown: list[str] = []
    for node in model.graph.node:
        if node.op_type not in CONV_OPS and node.op_type not in MATMUL_OPS:
            continue
        macs = _macs(node, shapes)
        if macs is None:
            unknown.append(node.name or node.output[0])
            continue
        total += macs
        quantized = node.op_type in INTEGER_OPS or (
            node.op_type in QDQ_FUSABLE
            and all(producer.get(name) == "DequantizeLinear" for name in node.input[:2])
        )
        if quantized:
            integer += macs
        else:
            float_nodes.append(node.name or node.output[0])
    return {
        "share": round(integer / total, 6) if total else None,
        "integer_macs": integer,
        "total_macs": total,
        "float_nodes": float_nodes,
        "nodes_without_shapes": unknown,
        "method": METHOD,
    }


def matmul_mac_share(path: str | os.PathLike[str]) -> float | None:
    """The share of the model's Conv/Gemm/MatMul MACs (one sample) in Gemm/MatMul nodes: the
    most a recipe quantizing only those ('-linear' scope) can speed up. None when a MAC node
    has no inferred shape (unknown) or there is none."""
    import onnx

    model = onnx.load(os.fspath(path))
    shapes = _shapes(model)
    matmul = total = 0
    for node in model.graph.node:
        if node.op_type not in CONV_OPS and node.op_type not in MATMUL_OPS:
            continue
        macs = _macs(node, shapes)
        if macs is None:
            return None
        total += macs
        matmul += macs if node.op_type in MATMUL_OPS else 0
    return matmul / total if total else None
