"""ONNX model files without the `onnx` package: is this a complete model, and which tensors
live in external-data sidecars?

ONNX Runtime's own errors for a truncated file or a missing sidecar are cryptic, and the bench
side must not need `onnx`, so this walks the protobuf wire format of the `ModelProto` with the
stdlib only. `check_model_file(path)` validates a file before ONNX Runtime sees it;
`external_data_refs(path)` lists the model's own external-data references (what "self-contained"
means: none).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxship.core.errors import CoreError


class _Truncated(Exception):
    pass


class _Malformed(Exception):
    pass


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Truncated
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Malformed("varint longer than 10 bytes")


def _fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) of one message; value is an int for varints,
    a (start, end) span for length-delimited fields and None for fixed-width ones."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Truncated
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise _Truncated
            pos += width
            yield number, wire, None
        else:
            raise _Malformed(f"wire type {wire}")


# Field numbers from onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto,
# TensorProto, SparseTensorProto, StringStringEntryProto).
_MODEL_IR_VERSION, _MODEL_GRAPH = 1, 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS = 22, 23
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_EXTERNAL = 1
_MAX_IR_VERSION = 64  # ONNX is at 11-12; anything far beyond is not an ONNX header


@dataclass(frozen=True)
class ExternalRef:
    tensor: str
    location: str
    offset: int
    length: int | None


def _text(buf: Any, span: tuple[int, int]) -> str:
    return bytes(buf[span[0] : span[1]]).decode("utf-8", errors="replace")


def _tensor_refs(buf: Any, span: tuple[int, int], out: list[ExternalRef]) -> None:
    name, location, offset, length, external = "?", None, 0, None, False
    entries: list[tuple[int, int]] = []
    for number, wire, value in _fields(buf, *span):
        if number == _TENSOR_NAME and wire == 2:
            name = _text(buf, value)
        elif number == _TENSOR_DATA_LOCATION and wire == 0:
            external = value == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            entries.append(value)
    if not external:
        return
    for entry in entries:
        key = val = ""
        for number, wire, value in _fields(buf, *entry):
            if wire == 2 and number == 1:
                key = _text(buf, value)
            elif wire == 2 and number == 2:
                val = _text(buf, value)
        if key == "location":
            location = val
        elif key == "offset" and val.strip().isdigit():
            offset = int(val)
        elif key == "length" and val.strip().isdigit():
            length = int(val)
    out.append(ExternalRef(name, location or "", offset, length))


def _sparse_refs(buf: Any, span: tuple[int, int], out: list[ExternalRef]) -> None:
    for number, wire, value in _fields(buf, *span):
        if wire == 2 and number in (_SPARSE_VALUES, _SPARSE_INDICES):
            _tensor_refs(buf, value, out)


def _graph_refs(buf: Any, span: tuple[int, int], out: list[ExternalRef], depth: int = 0) -> None:
    if depth > 64:
        raise _Malformed("subgraphs nested deeper than 64 levels")
    for number, wire, value in _fields(buf, *span):
        if wire != 2:
            continue
        if number == _GRAPH_INITIALIZER:
            _tensor_refs(buf, value, out)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            _sparse_refs(buf, value, out)
        elif number == _GRAPH_NODE:
            for n_num, n_wire, attr in _fields(buf, *value):
                if n_num != _NODE_ATTRIBUTE or n_wire != 2:
                    continue
                for a_num, a_wire, a_val in _fields(buf, *attr):
                    if a_wire != 2:
                        continue
                    if a_num in (_ATTR_T, _ATTR_TENSORS):
                        _tensor_refs(buf, a_val, out)
                    elif a_num in (_ATTR_G, _ATTR_GRAPHS):
                        _graph_refs(buf, a_val, out, depth + 1)
                    elif a_num in (_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS):
                        _sparse_refs(buf, a_val, out)


def _scan_model(buf: Any, size: int, path: Path) -> list[ExternalRef]:
    not_onnx = (
        f"{path} is not an ONNX model: expected an ONNX ModelProto (protobuf starting with "
        "its ir_version field)"
    )
    try:
        key, pos = _varint(buf, 0, size)
        if key != (_MODEL_IR_VERSION << 3):
            raise CoreError(
                f"{not_onnx}, found a file starting with bytes {bytes(buf[:8]).hex()}; pass an "
                "`.onnx` file (e.g. from `onnxship export`)"
            )
        ir_version, _ = _varint(buf, pos, size)
        if not 1 <= ir_version <= _MAX_IR_VERSION:
            raise CoreError(
                f"{not_onnx}, found ir_version {ir_version}; pass an `.onnx` file "
                "(e.g. from `onnxship export`)"
            )
    except (_Truncated, _Malformed):
        raise CoreError(
            f"{not_onnx}, found {size} bytes that do not parse as one; pass an `.onnx` file"
        ) from None
    graph: tuple[int, int] | None = None
    try:
        for number, wire, value in _fields(buf, 0, size):
            if number == _MODEL_GRAPH and wire == 2:
                graph = value
    except _Truncated:
        raise CoreError(
            f"{path} is truncated: a protobuf field runs past the end of the file "
            f"({size} bytes); the copy or download was cut short, copy the file again"
        ) from None
    except _Malformed as exc:
        raise CoreError(
            f"{path} is corrupt: it starts like an ONNX model but its protobuf is malformed "
            f"({exc}) at {size} bytes; copy or export the file again"
        ) from None
    if graph is None:
        raise CoreError(
            f"{path} is truncated or not a model: it has an ONNX header but no graph "
            f"({size} bytes); copy or export the file again"
        )
    refs: list[ExternalRef] = []
    try:
        _graph_refs(buf, graph, refs)
    except (_Truncated, _Malformed) as exc:
        raise CoreError(
            f"{path} is corrupt: its graph does not parse ({type(exc).__name__.strip('_')}"
            f"{': ' + str(exc) if str(exc) else ''}); copy or export the file again"
        ) from None
    return refs


def _check_external(path: Path, refs: list[ExternalRef]) -> None:
    sizes: dict[str, int | None] = {}
    for ref in refs:
        if not ref.location:
            raise CoreError(
                f"{path}: tensor '{ref.tensor}' is marked as external data but names no "
                "location; re-export the model with its weights inside the file"
            )
        if ref.location not in sizes:
            target = path.parent / ref.location
            sizes[ref.location] = target.stat().st_size if target.is_file() else None
        size = sizes[ref.location]
        if size is None:
            raise CoreError(
                f"{path}: tensor '{ref.tensor}' is stored in the external-data sidecar "
                f"'{ref.location}', which is missing (looked in {path.parent}); copy the sidecar "
                "next to the model, or use a self-contained file (onnxship export writes one)"
            )
        needed = ref.offset + (ref.length or 0)
        if needed > size:
            raise CoreError(
                f"{path}: tensor '{ref.tensor}' needs bytes up to {needed} of the sidecar "
                f"'{ref.location}', which has {size} bytes (truncated); copy it again"
            )


def check_model_file(path: str | os.PathLike[str]) -> None:
    """Raise CoreError (exit 2) unless `path` is a complete ONNX model whose external-data
    sidecars (if any) are present: missing file, folder, empty file, not an ONNX protobuf,
    truncated file, missing or short sidecar. Reads the file once (memory-mapped)."""
    p = Path(path)
    if not p.exists():
        raise CoreError(f"model file {p} does not exist; pass the path of an `.onnx` file")
    if not p.is_file():
        raise CoreError(f"model path {p} is not a file; pass the path of an `.onnx` file")
    size = p.stat().st_size
    if size == 0:
        raise CoreError(f"{p} is empty (0 bytes), expected an ONNX model; export it again")
    with open(p, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        refs = _scan_model(mm, size, p)
    if refs:
        _check_external(p, refs)


def external_data_refs(path: str | os.PathLike[str]) -> list[ExternalRef]:
    """Every tensor of the model stored outside the file (empty = self-contained)."""
    p = Path(path)
    check_model_file(p)
    size = p.stat().st_size
    with open(p, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _scan_model(mm, size, p)


# NodeProto.op_type / domain, TensorProto.data_type (onnx.proto), and the data types counted.
_NODE_OP_TYPE, _NODE_DOMAIN = 4, 7
_TENSOR_DATA_TYPE = 2
TENSOR_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16",
                 11: "float64", 16: "bfloat16"}  # fmt: skip


@dataclass(frozen=True)
class GraphContent:
    """What the main graph of a model holds: node op types (`domain::op` outside the default
    domain) and initializer data types, each with its count."""

    op_types: dict[str, int]
    initializer_dtypes: dict[str, int]


def graph_content(path: str | os.PathLike[str]) -> GraphContent:
    """Op types and initializer data types of the model's main graph (stdlib only; what
    `onnxship verify` checks a file's `precision` label against)."""
    p = Path(path)
    check_model_file(p)
    size = p.stat().st_size
    ops: dict[str, int] = {}
    dtypes: dict[str, int] = {}
    with open(p, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        graph = next(v for n, w, v in _fields(mm, 0, size) if n == _MODEL_GRAPH and w == 2)
        for number, wire, value in _fields(mm, *graph):
            if wire != 2:
                continue
            if number == _GRAPH_NODE:
                op, domain = "", ""
                for n_num, n_wire, n_val in _fields(mm, *value):
                    if n_num == _NODE_OP_TYPE and n_wire == 2:
                        op = _text(mm, n_val)
                    elif n_num == _NODE_DOMAIN and n_wire == 2:
                        domain = _text(mm, n_val)
                key = op if domain in ("", "ai.onnx") else f"{domain}::{op}"
                ops[key] = ops.get(key, 0) + 1
            elif number == _GRAPH_INITIALIZER:
                code = next(
                    (t_val for t_num, t_wire, t_val in _fields(mm, *value)
                     if t_num == _TENSOR_DATA_TYPE and t_wire == 0),
                    0,
                )  # fmt: skip
                name = TENSOR_DTYPES.get(code, f"type{code}")
                dtypes[name] = dtypes.get(name, 0) + 1
    return GraphContent(ops, dtypes)
