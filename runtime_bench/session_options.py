"""Session options per target: the session-config file, and the search that writes it.

A session-config file holds exactly the ONNX Runtime options a model is to run with, in the
layout of Olive's `inference_settings` (which `OrtSessionParamsTuning` stores beside a model):

    {"format": "onnxship.session_config", "version": 1,
     "provider": "CPUExecutionProvider",
     "session_options": {"intra_op_num_threads": 2, "inter_op_num_threads": 1,
                         "execution_mode": "ORT_SEQUENTIAL",
                         "graph_optimization_level": "ORT_ENABLE_ALL",
                         "extra_session_config": {"session.intra_op.allow_spinning": "1"}},
     "provider_options": {}, "io_binding": false, "cuda_graph": false,
     "tuned_for": {...}, "evidence": {...}, "fingerprint": {...}}

`session_options` keys are `onnxruntime.SessionOptions` attribute names; a name this
onnxruntime does not have is refused (exit 2), never ignored. `bench --session-config` and
`eval --session-config` run exactly these options.

`tune_session(path, provider, cfg)` searches intra-op threads (1 .. usable cores, cgroup quota
included), spinning, graph optimisation level and execution mode (and, on CUDA, IO binding and
CUDA graphs where capturable), one dimension after another, timing candidates against the
incumbent with the timing engine's block interleaving. An alternative replaces the incumbent
only when the lower bound of its speed-up CI clears `cfg.margin`: the defaults win ties.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxship.core.artifact import atomic_write_json
from onnxship.core.flags import flag, number
from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.session import (
    CUDA_EP,
    ExecutionMode,
    GraphOptimization,
    SessionConfig,
    resolve_provider,
)

FORMAT = "onnxship.session_config"
VERSION = 1
TOP_LEVEL_KEYS = (
    "format", "version", "provider", "session_options", "provider_options", "io_binding",
    "cuda_graph", "tuned_for", "evidence", "fingerprint",
)  # fmt: skip
SPIN_INTRA = "session.intra_op.allow_spinning"
SPIN_INTER = "session.inter_op.allow_spinning"
# SessionOptions attributes with a SessionConfig field of their own.
MAPPED_OPTIONS = (
    "intra_op_num_threads", "inter_op_num_threads", "execution_mode", "graph_optimization_level",
    "extra_session_config",
)  # fmt: skip
_ORT_LEVELS = {
    GraphOptimization.DISABLE: "ORT_DISABLE_ALL",
    GraphOptimization.BASIC: "ORT_ENABLE_BASIC",
    GraphOptimization.EXTENDED: "ORT_ENABLE_EXTENDED",
    GraphOptimization.ALL: "ORT_ENABLE_ALL",
}
_ORT_MODES = {ExecutionMode.SEQUENTIAL: "ORT_SEQUENTIAL", ExecutionMode.PARALLEL: "ORT_PARALLEL"}


@dataclass(frozen=True)
class LoadedSessionConfig:
    """A session-config file, checked against this onnxruntime."""

    source: Path
    provider: str  # resolved EP name
    session: SessionConfig
    io_binding: bool = False
    cuda_graph: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "source": os.fspath(self.source),
            "provider": self.provider,
            "session": self.session.to_json(),
            "io_binding": self.io_binding,
            "cuda_graph": self.cuda_graph,
        }


def session_config_document(
    session: SessionConfig,
    provider: str,
    *,
    io_binding: bool = False,
    cuda_graph: bool = False,
    tuned_for: Mapping[str, Any] | None = None,
    evidence: Mapping[str, Any] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document of a session-config file (see the module docstring)."""
    spin = "1" if session.allow_spinning else "0"
    extra = {SPIN_INTRA: spin, SPIN_INTER: spin, **dict(session.config_entries)}
    options: dict[str, Any] = {
        "intra_op_num_threads": session.intra_op_threads,
        "inter_op_num_threads": session.inter_op_threads,
        "execution_mode": _ORT_MODES[session.execution_mode],
        "graph_optimization_level": _ORT_LEVELS[session.graph_optimization],
        **dict(session.extra_options),
        "extra_session_config": extra,
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "provider": resolve_provider(provider),
        "session_options": options,
        "provider_options": dict(session.provider_options),
        "io_binding": io_binding,
        "cuda_graph": cuda_graph,
        "tuned_for": dict(tuned_for or {}),
        "evidence": dict(evidence or {}),
        "fingerprint": dict(fingerprint or {}),
    }


def write_session_config(path: str | os.PathLike[str], document: Mapping[str, Any]) -> Path:
    return atomic_write_json(path, document, what="session config")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BenchError(
            f"session config {path} does not exist; write one with "
            "`onnxship bench MODEL.onnx --tune-session OUT.json`"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchError(f"session config {path} is not JSON ({exc}); expected {FORMAT}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise BenchError(
            f"session config {path}: format {found!r}, expected {FORMAT!r} (a file written by "
            "`onnxship bench --tune-session`)"
        )
    if doc.get("version") != VERSION:
        raise BenchError(
            f"session config {path}: version {doc.get('version')!r}, expected {VERSION}"
        )
    unknown = sorted(set(doc) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise BenchError(
            f"session config {path} has unknown keys {unknown}; expected only {list(TOP_LEVEL_KEYS)}"
        )
    return doc


def _enum_member(path: Path, key: str, value: Any, members: Mapping[str, Any]) -> str:
    if not isinstance(value, str) or value not in members:
        raise BenchError(
            f"session config {path}: session_options.{key} is {value!r}; this onnxruntime "
            f"accepts {', '.join(members)}"
        )
    return value


def _check_option_names(path: Path, options: Mapping[str, Any]) -> None:
    """Every key must be a settable SessionOptions attribute of the installed onnxruntime."""
    import onnxruntime as ort

    probe = ort.SessionOptions()
    for name in options:
        if name == "extra_session_config":
            continue
        attr = getattr(probe, name, None) if not name.startswith("_") else None
        if attr is None or callable(attr):
            have = sorted(
                a for a in dir(probe) if not a.startswith("_") and not callable(getattr(probe, a))
            )
            raise BenchError(
                f"session config {path} names option {name!r}, which onnxruntime "
                f"{ort.__version__} SessionOptions does not have; it has: {', '.join(have)}"
            )


def _int_option(path: Path, options: Mapping[str, Any], key: str) -> int:
    value = options.get(key, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BenchError(
            f"session config {path}: session_options.{key} must be an integer >= 0, got {value!r}"
        )
    return value


def _session_from_options(
    path: Path, options: Mapping[str, Any], provider_options: Any
) -> SessionConfig:
    import onnxruntime as ort

    _check_option_names(path, options)
    mode_name = _enum_member(
        path, "execution_mode", options.get("execution_mode", "ORT_SEQUENTIAL"),
        ort.ExecutionMode.__members__,
    )  # fmt: skip
    level_name = _enum_member(
        path, "graph_optimization_level",
        options.get("graph_optimization_level", "ORT_ENABLE_ALL"),
        {v: k for k, v in _ORT_LEVELS.items()},
    )  # fmt: skip
    extra = options.get("extra_session_config", {})
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise BenchError(
            f"session config {path}: extra_session_config must map keys to strings, got {extra!r}"
        )
    spin = extra.get(SPIN_INTRA, "1")
    if spin not in ("0", "1"):
        raise BenchError(f"session config {path}: {SPIN_INTRA} must be '0' or '1', got {spin!r}")
    entries = {k: v for k, v in extra.items() if k not in (SPIN_INTRA, SPIN_INTER)}
    if extra.get(SPIN_INTER, spin) != spin:
        entries[SPIN_INTER] = extra[SPIN_INTER]
    if not isinstance(provider_options, dict):
        raise BenchError(f"session config {path}: provider_options must be an object")
    return SessionConfig(
        intra_op_threads=_int_option(path, options, "intra_op_num_threads"),
        inter_op_threads=_int_option(path, options, "inter_op_num_threads"),
        graph_optimization={v: k for k, v in _ORT_LEVELS.items()}[level_name],
        allow_spinning=spin == "1",
        provider_options=tuple(provider_options.items()),
        execution_mode={v: k for k, v in _ORT_MODES.items()}[mode_name],
        extra_options=tuple((k, v) for k, v in options.items() if k not in MAPPED_OPTIONS),
        config_entries=tuple(entries.items()),
    )


def load_session_config(path: str | os.PathLike[str]) -> LoadedSessionConfig:
    """Read and check a session-config file; BenchError (exit 2) naming what is wrong."""
    p = Path(path)
    doc = _read_json(p)
    options = doc.get("session_options", {})
    if not isinstance(options, dict):
        raise BenchError(f"session config {p}: session_options must be an object")
    session = _session_from_options(p, options, doc.get("provider_options", {}))
    provider = resolve_provider(str(doc.get("provider", "cpu")))
    flags = {}
    for key in ("io_binding", "cuda_graph"):
        value = doc.get(key, False)
        if not isinstance(value, bool):
            raise BenchError(f"session config {p}: {key} must be true or false, got {value!r}")
        if value and provider != CUDA_EP:
            raise BenchError(
                f"session config {p}: {key} is true but the provider is {provider}; it applies "
                f"to {CUDA_EP} only"
            )
        flags[key] = value
    return LoadedSessionConfig(source=p, provider=provider, session=session, **flags)


def with_provider_options(session: SessionConfig, extra: Mapping[str, str]) -> SessionConfig:
    options = dict(session.provider_options)
    options.update(extra)
    return dataclasses.replace(session, provider_options=tuple(options.items()))


# --------------------------------------------------------------------------------------------
# The search


@dataclass(frozen=True)
class TuneConfig:
    """How to search session options for one model at one batch size.

    margin: an alternative replaces the incumbent only when the lower bound of its speed-up CI
      (incumbent / alternative, `ci_level`) is >= margin; otherwise the incumbent stays.
    budget_s: wall-clock budget of the whole search, shared by its stages.
    baseline: where the search starts (onnxship's default session: 1 thread, spinning, all
      graph optimisations, sequential).
    """

    batch_size: int = 1
    margin: float = field(default=1.05, metadata=flag(
        "--tune-margin", "--tune-session: an alternative wins only when its speed-up CI's lower "
        "bound is >= X (default: {default}); otherwise the defaults stay", type=number,
        metavar="X"))  # fmt: skip
    budget_s: float = 20.0
    ci_level: float = 0.95
    max_threads: int | None = None  # None: the usable cores (affinity and cgroup quota)
    baseline: SessionConfig = SessionConfig()
    seed: int = 0
    npz: Path | None = None
    dim_values: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        from onnxship.runtime_bench.inputs import check_batch_size

        check_batch_size(self.batch_size)
        if not self.margin >= 1:
            raise BenchError(
                f"tuning margin must be >= 1 (e.g. 1.05 = 5 % faster), got {self.margin}"
            )
        if not self.budget_s > 0:
            raise BenchError(f"tuning budget must be > 0 seconds, got {self.budget_s}")
        if not 0 < self.ci_level < 1:
            raise BenchError(
                f"CI level must be a fraction in (0, 1), got {self.ci_level}; e.g. 0.95"
            )
        if self.max_threads is not None and self.max_threads < 1:
            raise BenchError(f"max_threads must be >= 1, got {self.max_threads}")


# Budget share of each stage (threads x spinning, graph level, execution mode, CUDA io).
_STAGE_SHARE = {"threads": 0.4, "graph_optimization": 0.2, "execution_mode": 0.15, "cuda": 0.15}


def _label(session: SessionConfig) -> str:
    mode = session.execution_mode.value
    if session.execution_mode is ExecutionMode.PARALLEL:
        mode += f"(inter={session.inter_op_threads})"
    return (
        f"threads={session.intra_op_threads} spin={'on' if session.allow_spinning else 'off'} "
        f"graph={session.graph_optimization.value} mode={mode}"
    )


def _stage_candidates(stage: str, inc: SessionConfig, threads: int) -> list[SessionConfig]:
    rep = dataclasses.replace
    if stage == "threads":
        out = [
            rep(inc, intra_op_threads=t, allow_spinning=s)
            for t in range(1, threads + 1)
            for s in (True, False)
            if not (t == 1 and not s)
        ]  # fmt: skip  (one thread: no worker threads to spin)
    elif stage == "graph_optimization":
        out = [rep(inc, graph_optimization=g) for g in GraphOptimization]
    elif stage == "execution_mode" and threads > 1:
        out = [rep(inc, execution_mode=ExecutionMode.PARALLEL, inter_op_threads=threads)]
    else:
        out = []
    return list(dict.fromkeys([inc, *out]))


def _time_stage(path: Path, provider: str, candidates: list[SessionConfig], incumbent: SessionConfig,
                cfg: TuneConfig, budget_s: float) -> dict[str, Any]:  # fmt: skip
    """Time every candidate against the incumbent; the winner clears the margin or stays."""
    from onnxship.runtime_bench.inputs import load_npz, make_feeds
    from onnxship.runtime_bench.session import create_session
    from onnxship.runtime_bench.timing import TimingConfig, decide_faster, time_blocks

    npz = load_npz(cfg.npz) if cfg.npz is not None else None
    fns = {}
    labels = {_label(c): c for c in candidates}
    for label, session in labels.items():
        handle = create_session(path, provider, session)
        feeds = make_feeds(handle, cfg.batch_size, npz=npz, seed=cfg.seed,
                           npz_source=os.fspath(cfg.npz) if cfg.npz else "the .npz",
                           dim_values=dict(cfg.dim_values))  # fmt: skip
        fns[label] = lambda s=handle.session, f=feeds: s.run(None, f)
    ref = _label(incumbent)
    # racing: a candidate whose speed-up CI lies wholly below the best one's stops being
    # timed (never the incumbent), so the budget goes to the contenders
    timing = time_blocks(
        fns,
        TimingConfig(budget_s=budget_s, ci_level=cfg.ci_level, seed=cfg.seed),
        reference=ref,
        race=len(fns) > 2,
    )
    cleared = [r for r in timing.ratios.values() if decide_faster(r, cfg.margin)]
    best = max(cleared, key=lambda r: r.ci[0], default=None)
    rows = []
    for label in labels:
        m = timing.models[label]
        r = timing.ratios.get(label)
        rows.append({"options": label, "p50_ms": m.p50.value_ms, "p50_ci_ms": m.p50.ci_ms,
                     "speedup": None if r is None else r.ratio,
                     "speedup_ci": None if r is None else list(r.ci),
                     "n_calls": m.n_calls})  # fmt: skip
    winner = labels[best.name] if best is not None else incumbent
    return {
        "candidates": rows,
        "incumbent": ref,
        "winner": _label(winner),
        "verdict": f"{best.name} is {best.ratio:.3f}x faster, CI [{best.ci[0]:.3f}, "
        f"{best.ci[1]:.3f}] clears the {cfg.margin:g}x margin"
        if best is not None
        else f"no alternative's CI lower bound clears the {cfg.margin:g}x margin: keep {ref}",
        "stop_reason": timing.stop_reason,
        "dropped": dict(timing.dropped),
        "_winner": winner,
    }


def tune_session(
    path: str | os.PathLike[str], provider: str = "cpu", cfg: TuneConfig = TuneConfig()
) -> dict[str, Any]:
    """Search session options for `path` at `cfg.batch_size`; returns {chosen (SessionConfig),
    stages, gain (chosen vs baseline, with CI) or "defaults are best"}."""
    from onnxship.core.env import usable_cores
    from onnxship.runtime_bench.session import check_provider_available

    p = Path(path)
    resolved = check_provider_available(provider)
    threads = cfg.max_threads or usable_cores()
    incumbent = with_provider_options(cfg.baseline, {})
    stages = []
    for stage in ("threads", "graph_optimization", "execution_mode"):
        candidates = _stage_candidates(stage, incumbent, threads)
        if len(candidates) < 2:
            stages.append({"stage": stage, "skipped": "one candidate only (one usable core)"})
            continue
        out = _time_stage(
            p, resolved, candidates, incumbent, cfg, cfg.budget_s * _STAGE_SHARE[stage]
        )
        incumbent = out.pop("_winner")
        stages.append({"stage": stage, **out})
    stages.append(_cuda_stage(p, resolved, incumbent, cfg))
    return _tune_result(p, resolved, cfg, incumbent, stages)


def _cuda_stage(
    path: Path, provider: str, session: SessionConfig, cfg: TuneConfig
) -> dict[str, Any]:
    """CUDA only: host-to-host `run` vs IO binding (inputs and outputs resident on the GPU) vs
    a CUDA graph replay (when every node runs on CUDA, else the blocker is recorded). Choosing
    IO binding means the deployer keeps tensors on the device, as Olive's `io_bind` does."""
    if provider != CUDA_EP:
        return {"stage": "cuda_io", "skipped": f"IO binding and CUDA graphs apply to {CUDA_EP}; "
                f"this search ran on {provider}", "io_binding": False, "cuda_graph": False}  # fmt: skip
    import onnxruntime as ort

    from onnxship.runtime_bench.bench import _bind_on_device, cuda_graph_blocker
    from onnxship.runtime_bench.inputs import make_feeds
    from onnxship.runtime_bench.session import create_session
    from onnxship.runtime_bench.timing import TimingConfig, decide_faster, time_blocks

    device_id = int(dict(session.provider_options).get("device_id", "0"))
    handle = create_session(path, provider, session)
    feeds = make_feeds(handle, cfg.batch_size, seed=cfg.seed, dim_values=dict(cfg.dim_values))
    binding, _keep = _bind_on_device(handle, feeds, device_id)
    sess = handle.session
    fns: dict[str, Any] = {"host": lambda: sess.run(None, feeds),
                           "io_binding": lambda: sess.run_with_iobinding(binding)}  # fmt: skip
    blocker = cuda_graph_blocker(handle)
    graph_keep: list[Any] = []
    if blocker is None:
        reference = sess.run(None, feeds)
        graph = create_session(
            path, provider, with_provider_options(session, {"enable_cuda_graph": "1"})
        ).session
        gbind = graph.io_binding()
        for name, array in feeds.items():
            graph_keep.append(ort.OrtValue.ortvalue_from_numpy(array, "cuda", device_id))
            gbind.bind_ortvalue_input(name, graph_keep[-1])
        for out, ref in zip(graph.get_outputs(), reference, strict=True):
            graph_keep.append(ort.OrtValue.ortvalue_from_numpy(ref * 0, "cuda", device_id))
            gbind.bind_ortvalue_output(out.name, graph_keep[-1])
        graph.run_with_iobinding(gbind)  # the capture
        fns["cuda_graph"] = lambda: graph.run_with_iobinding(gbind)
    timing = time_blocks(
        fns,
        TimingConfig(budget_s=cfg.budget_s * _STAGE_SHARE["cuda"], ci_level=cfg.ci_level),
        reference="host",
    )
    cleared = [r for r in timing.ratios.values() if decide_faster(r, cfg.margin)]
    best = max(cleared, key=lambda r: r.ci[0], default=None)
    winner = best.name if best is not None else "host"
    return {
        "stage": "cuda_io",
        "candidates": [
            {
                "options": k,
                "p50_ms": timing.models[k].p50.value_ms,
                "speedup": None if k == "host" else timing.ratios[k].ratio,
                "speedup_ci": None if k == "host" else list(timing.ratios[k].ci),
            }
            for k in fns
        ],  # fmt: skip
        "winner": winner,
        "cuda_graph_blocker": blocker,
        "io_binding": winner != "host",
        "cuda_graph": winner == "cuda_graph",
        "stop_reason": timing.stop_reason,
    }


def _tune_result(path: Path, provider: str, cfg: TuneConfig, chosen: SessionConfig,
                 stages: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    baseline = cfg.baseline
    gain = None
    if chosen != baseline:
        final = _time_stage(path, provider, [baseline, chosen], baseline, cfg,
                            cfg.budget_s * _STAGE_SHARE["cuda"])  # fmt: skip
        row = next(r for r in final["candidates"] if r["options"] == _label(chosen))
        confirmed = final["_winner"] == chosen
        gain = {"speedup": row["speedup"], "ci": row["speedup_ci"], "ci_level": cfg.ci_level,
                "statistic": "p50", "options": _label(chosen), "confirmed": confirmed,
                "verdict": final["verdict"]}  # fmt: skip
        if not confirmed:  # the stage winners do not clear the margin against the baseline
            chosen = baseline
    return {
        "model": os.fspath(path),
        "provider": provider,
        "batch_size": cfg.batch_size,
        "baseline": _label(baseline),
        "chosen": chosen,
        "chosen_label": _label(chosen),
        "defaults_are_best": chosen == baseline and not stages[-1].get("io_binding"),
        "gain": gain,
        "margin": cfg.margin,
        "io_binding": bool(stages[-1].get("io_binding")),
        "cuda_graph": bool(stages[-1].get("cuda_graph")),
        "stages": stages,
    }


def session_and_provider(
    path: str | os.PathLike[str] | None, provider: str | None
) -> tuple[SessionConfig | None, str]:
    """The session options and EP to run: a session-config file's (then `provider` must be
    None or the same EP), else (None, `provider` or 'cpu')."""
    if path is None:
        return None, provider or "cpu"
    loaded = load_session_config(path)
    if provider is not None and resolve_provider(provider) != loaded.provider:
        raise BenchError(
            f"--provider {provider} but the session config {path} was made for "
            f"{loaded.provider}; drop --provider or use a config for that EP"
        )
    return loaded.session, loaded.provider
