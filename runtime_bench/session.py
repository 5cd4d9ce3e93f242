"""ONNX Runtime sessions, created in one place with explicit options and providers.

`create_session(path, provider, cfg)` is the only way onnxship opens an `.onnx` file for
inference. It refuses to fall back silently: ONNX Runtime's Python wrapper retries on the CPU
EP when a requested EP fails to initialise (e.g. CUDA libraries that do not load, ORT#23372),
which would make a "CUDA" benchmark measure the CPU. Here the session is created with
`enable_fallback=0`, the first provider of the created session is checked against the
requested one, and `disable_fallback()` is called so a later `run()` cannot switch EPs either.

Every file is checked by `onnxship.core.onnx_file.check_model_file` before ONNX Runtime sees it.
"""

from __future__ import annotations

import enum
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from onnxship.core.onnx_file import check_model_file
from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.providers import (  # noqa: F401  (the EP table; names kept here)
    CPU_EP,
    CUDA_EP,
    CUDA_FIX,
    PROVIDER_ALIASES,
    check_provider_available,
    preload_cuda_libraries,
    resolve_provider,
)

log = logging.getLogger(__name__)

# Session config key (ORT >= 1.22) that makes get_provider_graph_assignment_info() work.
RECORD_ASSIGNMENT_KEY = "session.record_ep_graph_assignment_info"


class GraphOptimization(enum.Enum):
    """ORT graph optimisation level (`SessionOptions.graph_optimization_level`)."""

    DISABLE = "disable"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


class ExecutionMode(enum.Enum):
    """ORT execution mode (`SessionOptions.execution_mode`): operators one after another, or
    independent branches of the graph in parallel on `inter_op_threads`."""

    SEQUENTIAL = "sequential"
    PARALLEL = "parallel"


Choice = TypeVar("Choice", GraphOptimization, ExecutionMode)


def _ort_value(choice: GraphOptimization | ExecutionMode) -> Any:
    """onnxruntime's own enum member for a graph optimisation level or an execution mode."""
    import onnxruntime as ort

    levels, modes = ort.GraphOptimizationLevel, ort.ExecutionMode
    return {
        GraphOptimization.DISABLE: levels.ORT_DISABLE_ALL,
        GraphOptimization.BASIC: levels.ORT_ENABLE_BASIC,
        GraphOptimization.EXTENDED: levels.ORT_ENABLE_EXTENDED,
        GraphOptimization.ALL: levels.ORT_ENABLE_ALL,
        ExecutionMode.SEQUENTIAL: modes.ORT_SEQUENTIAL,
        ExecutionMode.PARALLEL: modes.ORT_PARALLEL,
    }[choice]


def _parse_choice(value: Choice | str, choices: type[Choice], what: str) -> Choice:
    """`value` as a member of `choices`; a str is its value in any case ("All" -> ALL)."""
    if not isinstance(value, str):
        return value
    try:
        return choices(value.lower())
    except ValueError:
        names = ", ".join(c.value for c in choices)
        raise BenchError(f"unknown {what} {value!r}; expected one of {names}") from None


def _pairs(value: Any, what: str, *, text: bool = False) -> tuple[tuple[str, Any], ...]:
    """(key, value) pairs or a dict as pairs sorted by key; `text`: values as str too."""
    items = value.items() if isinstance(value, Mapping) else value
    try:
        return tuple(sorted((str(k), str(v) if text else v) for k, v in items))
    except (TypeError, ValueError):
        raise BenchError(
            f"SessionConfig.{what} must be (key, value) pairs or a dict, got {value!r}"
        ) from None


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
    execution_mode: sequential (default) or parallel (independent branches on inter-op threads).
    extra_options: further `onnxruntime.SessionOptions` attributes set as given, e.g.
      (("enable_mem_pattern", False),), from a session-config file (checked against this ORT
      by `runtime_bench.session_options.load_session_config`).
    config_entries: further `add_session_config_entry` (key, value) pairs.
    """

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: GraphOptimization = GraphOptimization.ALL
    allow_spinning: bool = True
    provider_options: tuple[tuple[str, str], ...] = ()
    enable_profiling: bool = False
    record_assignment: bool = True
    execution_mode: ExecutionMode = ExecutionMode.SEQUENTIAL
    extra_options: tuple[tuple[str, Any], ...] = ()
    config_entries: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BenchError(
                    f"SessionConfig.{name} must be an integer >= 0 (0 = ORT's default), "
                    f"got {value!r}"
                )
        level = _parse_choice(
            self.graph_optimization, GraphOptimization, "graph optimisation level"
        )
        object.__setattr__(self, "graph_optimization", level)
        options = _pairs(self.provider_options, "provider_options", text=True)
        object.__setattr__(self, "provider_options", options)
        mode = _parse_choice(self.execution_mode, ExecutionMode, "execution mode")
        object.__setattr__(self, "execution_mode", mode)
        object.__setattr__(self, "extra_options", _pairs(self.extra_options, "extra_options"))
        entries = _pairs(self.config_entries, "config_entries")
        object.__setattr__(self, "config_entries", tuple((k, str(v)) for k, v in entries))

    def to_json(self) -> dict[str, Any]:
        out = {
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "graph_optimization": self.graph_optimization.value,
            "allow_spinning": self.allow_spinning,
            "provider_options": dict(self.provider_options),
            "enable_profiling": self.enable_profiling,
            "execution_mode": self.execution_mode.value,
        }
        if self.extra_options:
            out["extra_options"] = dict(self.extra_options)
        if self.config_entries:
            out["config_entries"] = dict(self.config_entries)
        return out


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
# Sessions


def _session_options(cfg: SessionConfig) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    # Errors only: ORT's warnings about nodes placed on the CPU EP and Memcpy nodes (every
    # INT8 QDQ model on CUDA) flood stderr; the placement is recorded as nodes_per_provider.
    so.log_severity_level = 3
    so.intra_op_num_threads = cfg.intra_op_threads
    so.inter_op_num_threads = cfg.inter_op_threads
    so.execution_mode = _ort_value(cfg.execution_mode)
    so.graph_optimization_level = _ort_value(cfg.graph_optimization)
    spin = "1" if cfg.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    for name, value in cfg.extra_options:
        try:
            setattr(so, name, value)
        except (AttributeError, TypeError) as exc:
            raise BenchError(
                f"onnxruntime {ort.__version__} SessionOptions.{name} = {value!r} failed: "
                f"{_first_line(exc)}; fix or remove it in the session config"
            ) from None
    for key, text in cfg.config_entries:
        so.add_session_config_entry(key, text)
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


def inference_failed(
    path: object, batch_size: int, provider: str, exc: BaseException
) -> BenchError:
    """The one error for a run of `path` that raised: the file, batch size, EP and ORT's
    first line."""
    return BenchError(
        f"{path}: inference failed at batch size {batch_size} on {provider}: {_first_line(exc)}"
    )


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
