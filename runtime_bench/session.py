"""ONNX Runtime sessions, created in one place with explicit options and providers.

`create_session(path, provider, cfg)` is the only way onnxship opens an `.onnx` file for
inference. It refuses to fall back silently: ONNX Runtime's Python wrapper retries on the CPU
EP when a requested EP fails to initialise (e.g. CUDA libraries that do not load, ORT#23372),
which would make a "CUDA" benchmark measure the CPU. Here the session is created with
`enable_fallback=0`, the first provider of the created session is checked against the
requested one, and `disable_fallback()` is called so a later `run()` cannot switch EPs either.

`check_model_file(path)` validates a file before ONNX Runtime sees it (ORT's own errors for a
truncated file or a missing external-data sidecar are cryptic): it walks the protobuf wire
format of the `ModelProto` without the `onnx` package (stdlib only) and checks that every
tensor stored in external data has its sidecar file, large enough for its offset and length.
"""

from __future__ import annotations

import enum
import logging
import mmap
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime_bench.errors import BenchError

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU_EP, "cuda": CUDA_EP}
CUDA_FIX = (
    "install the GPU build: `pip uninstall onnxruntime && pip install onnxruntime-gpu` "
    "(the two packages cannot coexist in one environment), on a machine with an NVIDIA GPU, "
    "driver and the CUDA/cuDNN libraries that onnxruntime-gpu expects"
)
# Session config key (ORT >= 1.22) that makes get_provider_graph_assignment_info() work.
RECORD_ASSIGNMENT_KEY = "session.record_ep_graph_assignment_info"


def resolve_provider(spec: str) -> str:
    """'cpu' -> 'CPUExecutionProvider', 'cuda' -> 'CUDAExecutionProvider', else `spec` as given.

    The aliases are case-insensitive; any other value is taken as an ORT EP name (checked
    against the installed build when a session is created).
    """
    text = spec.strip()
    return PROVIDER_ALIASES.get(text.lower(), text)


class GraphOptimization(enum.Enum):
    """ORT graph optimisation level (`SessionOptions.graph_optimization_level`)."""

    DISABLE = "disable"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"

    def ort_level(self) -> Any:
        import onnxruntime as ort

        levels = ort.GraphOptimizationLevel
        return {
            GraphOptimization.DISABLE: levels.ORT_DISABLE_ALL,
            GraphOptimization.BASIC: levels.ORT_ENABLE_BASIC,
            GraphOptimization.EXTENDED: levels.ORT_ENABLE_EXTENDED,
            GraphOptimization.ALL: levels.ORT_ENABLE_ALL,
        }[self]


@dataclass(frozen=True)
class SessionConfig:
    """Explicit `SessionOptions` for one session; recorded with every number measured on it.

    intra_op_threads: threads inside one operator (0 lets ORT choose: one per physical core).
    inter_op_threads: threads across independent operators (only used in parallel mode).
    allow_spinning: worker threads busy-wait for work (lower latency, burns CPU while idle).
    provider_options: options of the requested EP as (key, value) pairs; a dict is accepted
      and stored sorted, e.g. {"device_id": "0"} for CUDA.
    enable_profiling: write ORT's JSON trace under the system temp folder.
    record_assignment: ask ORT to record which EP got each node (`nodes_per_provider`).
    """

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: GraphOptimization = GraphOptimization.ALL
    allow_spinning: bool = True
    provider_options: tuple[tuple[str, str], ...] = ()
    enable_profiling: bool = False
    record_assignment: bool = True

    def __post_init__(self) -> None:
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BenchError(
                    f"SessionConfig.{name} must be an integer >= 0 (0 = ORT's default), "
                    f"got {value!r}"
                )
        if isinstance(self.graph_optimization, str):
            try:
                level = GraphOptimization(self.graph_optimization.lower())
            except ValueError:
                choices = ", ".join(g.value for g in GraphOptimization)
                raise BenchError(
                    f"unknown graph optimisation level {self.graph_optimization!r}; "
                    f"expected one of {choices}"
                ) from None
            object.__setattr__(self, "graph_optimization", level)
        opts = self.provider_options
        pairs = opts.items() if isinstance(opts, Mapping) else opts
        try:
            normalised = tuple(sorted((str(k), str(v)) for k, v in pairs))
        except (TypeError, ValueError):
            raise BenchError(
                f"SessionConfig.provider_options must be (key, value) pairs or a dict, got {opts!r}"
            ) from None
        object.__setattr__(self, "provider_options", normalised)

    def to_json(self) -> dict[str, Any]:
        return {
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "graph_optimization": self.graph_optimization.value,
            "allow_spinning": self.allow_spinning,
            "provider_options": dict(self.provider_options),
            "enable_profiling": self.enable_profiling,
        }


@dataclass(frozen=True)
class SessionHandle:
    """A created session and the facts needed to trust numbers measured on it."""

    session: Any  # onnxruntime.InferenceSession
    provider: str  # the requested EP, resolved ("CPUExecutionProvider")
    providers: tuple[str, ...]  # session.get_providers(): requested EP first, then CPU
    create_ms: float  # wall time of InferenceSession(...)
    config: dict[str, Any]  # SessionConfig.to_json()
    nodes_per_provider: dict[str, int] | None  # None when this ORT cannot report it
    model_path: Path = field(default_factory=Path)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": os.fspath(self.model_path),
            "provider": self.provider,
            "providers": list(self.providers),
            "create_ms": self.create_ms,
            "config": self.config,
            "nodes_per_provider": self.nodes_per_provider,
        }


# --------------------------------------------------------------------------------------------
# Model file checks (protobuf wire format, stdlib only)


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
class _ExternalRef:
    tensor: str
    location: str
    offset: int
    length: int | None


def _text(buf: Any, span: tuple[int, int]) -> str:
    return bytes(buf[span[0] : span[1]]).decode("utf-8", errors="replace")


def _tensor_refs(buf: Any, span: tuple[int, int], out: list[_ExternalRef]) -> None:
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
    out.append(_ExternalRef(name, location or "", offset, length))


def _sparse_refs(buf: Any, span: tuple[int, int], out: list[_ExternalRef]) -> None:
    for number, wire, value in _fields(buf, *span):
        if wire == 2 and number in (_SPARSE_VALUES, _SPARSE_INDICES):
            _tensor_refs(buf, value, out)


def _graph_refs(buf: Any, span: tuple[int, int], out: list[_ExternalRef], depth: int = 0) -> None:
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


def _scan_model(buf: Any, size: int, path: Path) -> list[_ExternalRef]:
    not_onnx = (
        f"{path} is not an ONNX model: expected an ONNX ModelProto (protobuf starting with "
        "its ir_version field)"
    )
    try:
        key, pos = _varint(buf, 0, size)
        if key != (_MODEL_IR_VERSION << 3):
            raise BenchError(
                f"{not_onnx}, found a file starting with bytes {bytes(buf[:8]).hex()}; pass an "
                "`.onnx` file (e.g. from `onnxship export`)"
            )
        ir_version, _ = _varint(buf, pos, size)
        if not 1 <= ir_version <= _MAX_IR_VERSION:
            raise BenchError(
                f"{not_onnx}, found ir_version {ir_version}; pass an `.onnx` file "
                "(e.g. from `onnxship export`)"
            )
    except (_Truncated, _Malformed):
        raise BenchError(
            f"{not_onnx}, found {size} bytes that do not parse as one; pass an `.onnx` file"
        ) from None
    graph: tuple[int, int] | None = None
    try:
        for number, wire, value in _fields(buf, 0, size):
            if number == _MODEL_GRAPH and wire == 2:
                graph = value
    except _Truncated:
        raise BenchError(
            f"{path} is truncated: a protobuf field runs past the end of the file "
            f"({size} bytes); the copy or download was cut short, copy the file again"
        ) from None
    except _Malformed as exc:
        raise BenchError(
            f"{path} is corrupt: it starts like an ONNX model but its protobuf is malformed "
            f"({exc}) at {size} bytes; copy or export the file again"
        ) from None
    if graph is None:
        raise BenchError(
            f"{path} is truncated or not a model: it has an ONNX header but no graph "
            f"({size} bytes); copy or export the file again"
        )
    refs: list[_ExternalRef] = []
    try:
        _graph_refs(buf, graph, refs)
    except (_Truncated, _Malformed) as exc:
        raise BenchError(
            f"{path} is corrupt: its graph does not parse ({type(exc).__name__.strip('_')}"
            f"{': ' + str(exc) if str(exc) else ''}); copy or export the file again"
        ) from None
    return refs


def _check_external(path: Path, refs: list[_ExternalRef]) -> None:
    sizes: dict[str, int | None] = {}
    for ref in refs:
        if not ref.location:
            raise BenchError(
                f"{path}: tensor '{ref.tensor}' is marked as external data but names no "
                "location; re-export the model with its weights inside the file"
            )
        if ref.location not in sizes:
            target = path.parent / ref.location
            sizes[ref.location] = target.stat().st_size if target.is_file() else None
        size = sizes[ref.location]
        if size is None:
            raise BenchError(
                f"{path}: tensor '{ref.tensor}' is stored in the external-data sidecar "
                f"'{ref.location}', which is missing (looked in {path.parent}); copy the sidecar "
                "next to the model, or use a self-contained file (onnxship export writes one)"
            )
        needed = ref.offset + (ref.length or 0)
        if needed > size:
            raise BenchError(
                f"{path}: tensor '{ref.tensor}' needs bytes up to {needed} of the sidecar "
                f"'{ref.location}', which has {size} bytes (truncated); copy it again"
            )


def check_model_file(path: str | os.PathLike[str]) -> None:
    """Raise BenchError (exit 2) unless `path` is a complete ONNX model whose external-data
    sidecars (if any) are present: missing file, folder, empty file, not an ONNX protobuf,
    truncated file, missing or short sidecar. Reads the file once (memory-mapped)."""
    p = Path(path)
    if not p.exists():
        raise BenchError(f"model file {p} does not exist; pass the path of an `.onnx` file")
    if not p.is_file():
        raise BenchError(f"model path {p} is not a file; pass the path of an `.onnx` file")
    size = p.stat().st_size
    if size == 0:
        raise BenchError(f"{p} is empty (0 bytes), expected an ONNX model; export it again")
    with open(p, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        refs = _scan_model(mm, size, p)
    if refs:
        _check_external(p, refs)


# --------------------------------------------------------------------------------------------
# Sessions


def check_provider_available(provider: str) -> str:
    """Resolve `provider` and raise BenchError (exit 2) unless this ORT build has it."""
    import onnxruntime as ort

    resolved = resolve_provider(provider)
    available = list(ort.get_available_providers())
    if resolved in available:
        return resolved
    listed = ", ".join(available)
    if resolved == CUDA_EP:
        raise BenchError(
            f"provider 'cuda' requested, but this onnxruntime {ort.__version__} build "
            f"({ort.get_device()}) has no CUDAExecutionProvider; available: {listed}; "
            f"to fix, {CUDA_FIX}"
        )
    if resolved in ort.get_all_providers():
        raise BenchError(
            f"provider {provider!r} ({resolved}) is a known ONNX Runtime EP but is not in this "
            f"onnxruntime {ort.__version__} build; available: {listed}; install the "
            "onnxruntime package built with it"
        )
    raise BenchError(
        f"unknown execution provider {provider!r}: expected 'cpu', 'cuda' or an EP name this "
        f"onnxruntime build has; available: {listed}"
    )


def _session_options(cfg: SessionConfig) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.intra_op_threads
    so.inter_op_num_threads = cfg.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = cfg.graph_optimization.ort_level()
    spin = "1" if cfg.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if cfg.enable_profiling:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tempfile.gettempdir(), "onnxship-ort-profile")
    if cfg.record_assignment:
        so.add_session_config_entry(RECORD_ASSIGNMENT_KEY, "1")
    return so


def _nodes_per_provider(session: Any) -> dict[str, int] | None:
    """Nodes each EP got, from ORT's graph-assignment record (None if this ORT lacks it)."""
    getter = getattr(session, "get_provider_graph_assignment_info", None)
    if getter is None:
        return None
    try:
        subgraphs = getter()
    except Exception as exc:  # older builds, or EPs that do not record it
        log.debug("graph assignment info unavailable: %s", exc)
        return None
    counts: dict[str, int] = {}
    for sub in subgraphs:
        counts[sub.ep_name] = counts.get(sub.ep_name, 0) + len(sub.get_nodes())
    return counts


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def create_session(
    path: str | os.PathLike[str],
    provider: str = "cpu",
    cfg: SessionConfig = SessionConfig(),
) -> SessionHandle:
    """Open `path` on exactly the EP `provider` ('cpu', 'cuda' or an ORT EP name).

    Raises BenchError (exit 2) for a bad model file, an EP this build lacks (listing the
    available ones; for CUDA with the install fix), a session ORT cannot create, and a session
    whose first provider is not the requested one (ORT fell back).
    """
    import onnxruntime as ort

    p = Path(path)
    check_model_file(p)
    resolved = check_provider_available(provider)
    options = _session_options(cfg)
    provider_entry = (resolved, dict(cfg.provider_options))
    start = time.perf_counter_ns()
    try:
        session = ort.InferenceSession(
            os.fspath(p), sess_options=options, providers=[provider_entry], enable_fallback=0
        )
    except Exception as exc:
        raise BenchError(
            f"onnxruntime could not create a {resolved} session for {p}: {_first_line(exc)}; "
            "check the model with `python -m onnx.checker` or re-export it"
        ) from exc
    create_ms = (time.perf_counter_ns() - start) / 1e6
    session.disable_fallback()
    providers = tuple(session.get_providers())
    if not providers or providers[0] != resolved:
        raise BenchError(
            f"{p}: requested {resolved} but onnxruntime created the session on "
            f"{', '.join(providers) or 'no provider'} (it fell back, e.g. because the EP's "
            f"libraries failed to load); refusing to measure the wrong EP"
            + (f"; to fix, {CUDA_FIX}" if resolved == CUDA_EP else "")
        )
    nodes = _nodes_per_provider(session) if cfg.record_assignment else None
    handle = SessionHandle(
        session=session,
        provider=resolved,
        providers=providers,
        create_ms=create_ms,
        config=cfg.to_json(),
        nodes_per_provider=nodes,
        model_path=p,
    )
    log.debug("session %s on %s in %.1f ms, nodes %s", p, providers, create_ms, nodes)
    return handle
