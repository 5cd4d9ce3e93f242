"""Latency benchmark of `.onnx` files on one ONNX Runtime EP.

Per model: one session (its creation time recorded), then per batch size: feeds from the input
spec (fixed-seed random data, or real data from an `.npz`), the first inference timed on its own
(it pays shape-dependent set-up), `warmup` untimed runs, then `iterations` timed runs (or until
`time_budget_s` is spent, or until the p50's CI is as tight as `target_rel_ci` asks). All timing
goes through the one engine, `runtime_bench.timing.time_blocks`: every row carries p50/p90/p99
with bootstrap CIs and the count of timed calls behind them (`n`; p90 needs >= 64 calls and
p99 >= 662, MLPerf LoadGen, else None with `p90_why`/`p99_why`).

On CPU each row is `io="host"`: `session.run` on numpy arrays. On CUDA each batch size gives
`io="end_to_end"` (numpy in and out: includes the host-device copies), `io="device"` (IO
binding with inputs and outputs already on the GPU: device-resident latency) and, with
`cuda_graph=True`, `io="cuda_graph"` (a second session with ORT's CUDA graph capture).

`benchmark_models(paths, cfg)` returns the result document (schema_version 1) that
`onnxship bench --json` writes and `runtime_bench.results` reads.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.core.artifact import jsonable, sha256_file, utc_now
from onnxship.core.env import capture_environment, machine_fingerprint, usable_cores
from onnxship.core.flags import (
    dim_value,
    flag,
    int_csv,
    key_value,
    non_negative_int,
    number,
    positive_float,
    positive_int,
)
from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.inputs import check_batch_size, input_specs, load_npz, make_feeds
from onnxship.runtime_bench.latency import row_stats
from onnxship.runtime_bench.results import REQUIRED_ROW_KEYS
from onnxship.runtime_bench.session import (
    CUDA_EP,
    GraphOptimization,
    SessionConfig,
    SessionHandle,
    create_session,
    inference_failed,
    resolve_provider,
)
from onnxship.runtime_bench.timing import ModelTiming, TimingConfig, TimingResult, time_blocks

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TOOL = "onnxship bench"
# Keys every result row has (the pipeline and `bench compare/merge` rely on them).
ROW_KEYS = REQUIRED_ROW_KEYS
# Iteration cap when only a time budget is given.
BUDGET_ONLY_ITERATIONS = 10_000_000


class IoMode(enum.Enum):
    HOST = "host"  # CPU EP: session.run on numpy arrays
    END_TO_END = "end_to_end"  # GPU EP: numpy in/out, host<->device copies included
    DEVICE = "device"  # GPU EP: IO binding, inputs and outputs resident on the device
    CUDA_GRAPH = "cuda_graph"  # GPU EP: IO binding + CUDA graph replay


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how. `iterations` is the count of timed runs; with `time_budget_s`
    it is a cap and timing stops when the budget is spent (at least one timed run).

    threads: `intra_op_num_threads` (0 = ORT's default, one per physical core). More threads
      than usable cores is allowed, warned about and recorded (`threads_exceed_cores`).
    io_binding / cuda_graph: CUDA EP only (ignored on other EPs).
    npz: real inputs, one named array per model input (rows cycled to fill a batch).
    dim_values: sizes of symbolic dimensions other than the batch, e.g. (("seq", 128),).
    """

    # fmt: off
    provider: str = field(default="cpu", metadata=flag(
        "--provider", "cpu (CPUExecutionProvider), cuda (CUDAExecutionProvider) or any ORT EP "
        "name; never falls back silently (default: {default})"))
    batch_sizes: tuple[int, ...] = field(default=(1, 64), metadata=flag(
        "--batch-sizes", "comma-separated batch sizes, each >= 1 (default: {default})",
        type=int_csv, metavar="1,64"))
    threads: int = field(default=1, metadata=flag(
        "--threads", "intra-op threads (0 = ORT default: one per physical core; default: "
        "{default}); more than the usable cores is allowed, warned about and recorded",
        type=non_negative_int))
    warmup: int = field(default=10, metadata=flag(
        "--warmup", "untimed runs per batch size (default: {default})", type=non_negative_int))
    iterations: int = field(default=100, metadata=flag(
        "--iterations", "timed runs per batch size (default: {default}; with --time-budget, a "
        "cap)", type=positive_int, default=None))
    time_budget_s: float | None = field(default=None, metadata=flag(
        "--time-budget", "stop timing a batch size after S seconds (at least one timed run)",
        type=positive_float, metavar="S"))
    spinning: bool = field(default=True, metadata=flag(
        "--no-spinning", "worker threads sleep instead of busy-waiting", action="store_true",
        invert=True))
    graph_optimization: GraphOptimization = field(default=GraphOptimization.ALL, metadata=flag(
        "--graph-opt", "ORT graph optimisation level (default: {default})"))
    provider_options: tuple[tuple[str, str], ...] = field(default=(), metadata=flag(
        "--provider-option", "an EP option, e.g. device_id=0 (repeatable); recorded in the "
        "results", type=key_value, action="append", metavar="KEY=VALUE"))
    io_binding: bool = field(default=True, metadata=flag(
        "--no-io-binding", "CUDA: skip the device-resident (IO binding) measurement",
        action="store_true", invert=True))
    cuda_graph: bool = field(default=False, metadata=flag(
        "--cuda-graph", "CUDA: also measure with CUDA graph capture", action="store_true"))
    npz: Path | None = field(default=None, metadata=flag(
        "--npz", "real inputs: an .npz with one array per input name", type=Path))
    dim_values: tuple[tuple[str, int], ...] = field(default=(), metadata=flag(
        "--dim", "size of a symbolic input dimension other than the batch (repeatable)",
        type=dim_value, action="append", metavar="NAME=N"))
    seed: int = field(default=0, metadata=flag(
        "--seed", "seed of the random inputs (default: {default})", type=int))
    progress: bool = field(default=True, metadata=flag(
        "--no-progress", "no progress bar on stderr", action="store_true", invert=True))
    # fmt: on
    # interleaved timing only (`benchmark_models_interleaved`): calls per model per round, the
    # first untimed (see `runtime_bench.timing`); 1 = call by call
    interleave_block: int = 1
    # a whole SessionConfig (from a session-config file): run exactly it; threads, spinning,
    # graph_optimization and provider_options must then match it (they label the rows)
    session: SessionConfig | None = None
    # the engine's statistics: CI level, early stop once every CI half-width / value is below
    # target_rel_ci (only with a time budget), the statistic ratios use
    ci_level: float = field(default=0.95, metadata=flag(
        "--ci-level", "confidence level of every CI, in (0, 1) (default: {default})",
        type=number, metavar="L"))  # fmt: skip
    target_rel_ci: float = 0.05
    statistic: str = "p50"
    # interleaved timing: the model (file stem) every ratio is taken against; None = no ratios
    reference: str | None = None
    # interleaved timing: stop timing models whose speed-up CI lies wholly below the best's
    # (they keep the rounds they had, with wider CIs; the reference is never dropped)
    race: bool = False

    def __post_init__(self) -> None:
        sizes = self.batch_sizes
        if isinstance(sizes, int):
            sizes = (sizes,)
        sizes = tuple(sizes)
        if not sizes:
            raise BenchError("batch_sizes is empty; give at least one, e.g. --batch-sizes 1,64")
        for b in sizes:
            check_batch_size(b)
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in sizes))
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise BenchError(
                f"threads must be an integer >= 0 (0 = ORT default), got {self.threads!r}"
            )
        if self.warmup < 0:
            raise BenchError(f"warm-up runs must be >= 0, got {self.warmup}")
        if self.iterations < 1:
            raise BenchError(f"iterations must be >= 1, got {self.iterations}")
        if self.interleave_block < 1:
            raise BenchError(f"interleave_block must be >= 1, got {self.interleave_block}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise BenchError(f"time budget must be > 0 seconds, got {self.time_budget_s}")
        if isinstance(self.graph_optimization, str):
            object.__setattr__(
                self, "graph_optimization", GraphOptimization(self.graph_optimization.lower())
            )
        opts = self.provider_options
        pairs = opts.items() if isinstance(opts, Mapping) else opts
        object.__setattr__(
            self, "provider_options", tuple(sorted((str(k), str(v)) for k, v in pairs))
        )
        dims = self.dim_values
        dim_pairs = dims.items() if isinstance(dims, Mapping) else dims
        checked = []
        for name, value in dim_pairs:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BenchError(f"dimension '{name}' must be an integer >= 1, got {value!r}")
            checked.append((str(name), int(value)))
        object.__setattr__(self, "dim_values", tuple(checked))
        if self.npz is not None:
            object.__setattr__(self, "npz", Path(self.npz))
        self.timing_config(block=self.interleave_block)  # BenchError on a bad CI level etc.

    def timing_config(self, *, block: int) -> TimingConfig:
        """The engine's config: `iterations` timed calls per model (a cap when a time budget
        is given, which then bounds the whole measurement of one batch size)."""
        rounds = -(-self.iterations // max(block - 1, 1))
        if self.time_budget_s is None:
            budget, floor = math.inf, rounds
        else:
            budget, floor = self.time_budget_s, min(rounds, TimingConfig.min_rounds)
        return TimingConfig(
            block=block, min_rounds=floor, max_rounds=rounds, budget_s=budget,
            ci_level=self.ci_level, target_rel_ci=self.target_rel_ci, statistic=self.statistic,
            seed=self.seed, warmup=self.warmup,
        )  # fmt: skip

    @property
    def resolved_provider(self) -> str:
        return resolve_provider(self.provider)

    def session_config(
        self, *, extra_provider_options: Mapping[str, str] | None = None
    ) -> SessionConfig:
        """The SessionConfig of this benchmark (extra EP options, e.g. enable_cuda_graph)."""
        options = dict(self.provider_options)
        options.update(dict(extra_provider_options or {}))
        if self.session is not None:
            return dataclasses.replace(self.session, provider_options=tuple(options.items()))
        return SessionConfig(
            intra_op_threads=self.threads,
            inter_op_threads=1,
            graph_optimization=self.graph_optimization,
            allow_spinning=self.spinning,
            provider_options=tuple(options.items()),
        )

    def to_json(self) -> dict[str, Any]:
        out = jsonable(self)
        out["provider"] = self.resolved_provider
        out["provider_options"] = dict(self.provider_options)
        out["dim_values"] = dict(self.dim_values)
        out.pop("progress", None)
        return out


def threads_exceed_cores(threads: int) -> bool:
    return threads > usable_cores()


def _first_run_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1e6


def _measure(fn: Callable[[], object], cfg: BenchConfig) -> TimingResult:
    """One model alone, every call timed (no other model evicts its caches)."""
    return time_blocks({"model": fn}, cfg.timing_config(block=1))


def _row(
    base: Mapping[str, Any],
    *,
    batch_size: int,
    io: IoMode,
    first_run_ms: float,
    timing: ModelTiming,
    result: TimingResult,
    feeds: Mapping[str, np.ndarray],
    handle: SessionHandle,
) -> dict[str, Any]:
    row = dict(base)
    row.update(
        {
            "batch_size": batch_size,
            "io": io.value,
            "session_create_ms": round(handle.create_ms, 4),
            "first_run_ms": round(first_run_ms, 4),
            **row_stats(timing, batch_size),
            "timing_statistic": result.config.statistic,
            "ci_level": result.config.ci_level,
            "timing_stop": result.stop_reason,
            "timing_wall_s": round(result.wall_s, 3),
            "nodes_per_provider": handle.nodes_per_provider,
            "providers": list(handle.providers),
            "inputs": [
                {"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()
            ],
        }
    )
    return row


def _device_id(cfg: BenchConfig) -> int:
    value = dict(cfg.provider_options).get("device_id", "0")
    try:
        return int(value)
    except ValueError:
        raise BenchError(f"provider option device_id must be an integer, got {value!r}") from None


def _bind_inputs_on_device(
    binding: Any, feeds: Mapping[str, np.ndarray], device_id: int
) -> list[Any]:
    """Copy each input to the GPU once and bind it; the returned OrtValues keep them alive."""
    import onnxruntime as ort

    keep = []
    for name, array in feeds.items():
        value = ort.OrtValue.ortvalue_from_numpy(array, "cuda", device_id)
        keep.append(value)
        binding.bind_ortvalue_input(name, value)
    return keep


def _bind_on_device(handle: SessionHandle, feeds: Mapping[str, np.ndarray], device_id: int) -> Any:
    """IO binding with inputs copied to the GPU once; outputs allocated on the GPU by ORT."""
    sess = handle.session
    binding = sess.io_binding()
    keep = _bind_inputs_on_device(binding, feeds, device_id)
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda", device_id)
    binding.synchronize_inputs()
    return binding, keep


def _bench_cuda_graph(
    path: Path,
    cfg: BenchConfig,
    feeds: Mapping[str, np.ndarray],
    reference: Sequence[np.ndarray],
    batch_size: int,
    base: Mapping[str, Any],
) -> dict[str, Any]:
    """A separate session with enable_cuda_graph=1 (a captured graph is tied to its shapes and
    buffer addresses). ORT captures on the first `run_with_iobinding` after binding, so device
    OrtValues for every input and output are bound *before* any run of this session (no plain
    `run` first: its temporaries would be what the capture sees). One replay's outputs are then
    checked against `reference` (a host run of the plain session) before timing."""
    import onnxruntime as ort

    device_id = _device_id(cfg)
    handle = create_session(
        path, cfg.provider, cfg.session_config(extra_provider_options={"enable_cuda_graph": "1"})
    )
    sess = handle.session
    binding = sess.io_binding()
    keep = _bind_inputs_on_device(binding, feeds, device_id)  # noqa: F841  (alive while timed)
    outputs = []
    for out, ref in zip(sess.get_outputs(), reference, strict=True):
        value = ort.OrtValue.ortvalue_from_numpy(np.zeros_like(ref), "cuda", device_id)
        outputs.append(value)
        binding.bind_ortvalue_output(out.name, value)

    def replay() -> None:
        sess.run_with_iobinding(binding)

    first = _first_run_ms(replay)  # the capture
    replay()
    max_diff = check_replay(path, [v.numpy() for v in outputs], reference)
    timed = _measure(replay, cfg)
    row = _row(
        base, batch_size=batch_size, io=IoMode.CUDA_GRAPH, first_run_ms=first,
        timing=timed.models["model"], result=timed, feeds=feeds, handle=handle,
    )  # fmt: skip
    row["replay_max_abs_diff"] = max_diff
    return row


# A replay must reproduce the plain session's outputs up to kernel-choice rounding.
REPLAY_RTOL = 1e-3
REPLAY_ATOL = 1e-4


def check_replay(
    path: Path, replayed: Sequence[np.ndarray], reference: Sequence[np.ndarray]
) -> float:
    """Max |replay - reference| over every output; BenchError when outside the tolerance."""
    worst = 0.0
    for i, (got, want) in enumerate(zip(replayed, reference, strict=True)):
        got_f = np.asarray(got, dtype=np.float64)
        want_f = np.asarray(want, dtype=np.float64)
        if got_f.shape != want_f.shape:
            raise BenchError(
                f"{path}: CUDA graph replay output {i} has shape {list(got_f.shape)}, the host "
                f"run {list(want_f.shape)}; the captured graph is not this model's computation"
            )
        diff = float(np.max(np.abs(got_f - want_f))) if got_f.size else 0.0
        worst = max(worst, diff)
        if not np.allclose(got_f, want_f, rtol=REPLAY_RTOL, atol=REPLAY_ATOL):
            raise BenchError(
                f"{path}: CUDA graph replay output {i} differs from the host run by up to "
                f"{diff:.3g} (tolerance rtol {REPLAY_RTOL}, atol {REPLAY_ATOL}); its latency "
                "would time a wrong computation. Run without --cuda-graph"
            )
    return worst


def _base_row(path: Path, handle: SessionHandle, cfg: BenchConfig, exceed: bool) -> dict[str, Any]:
    """The keys of every row of one model (before the per-batch measurements)."""
    return {
        "model": os.fspath(path),
        "model_name": path.stem,
        "model_sha256": sha256_file(path),
        "provider": handle.provider,
        "provider_options": dict(cfg.provider_options),
        "threads": cfg.threads,
        "threads_exceed_cores": exceed,
        "spinning": cfg.spinning,
        "graph_optimization": cfg.graph_optimization.value,
        # the one machine fingerprint (machine + EP, threads, spinning) of this row
        "fingerprint": machine_fingerprint(
            handle.provider, intra_op_threads=cfg.threads, allow_spinning=cfg.spinning
        ),
        "warmup": cfg.warmup,
        "iterations_requested": cfg.iterations,
        "time_budget_s": cfg.time_budget_s,
        "input_source": f"npz:{cfg.npz}" if cfg.npz is not None else f"random(seed={cfg.seed})",
        "model_inputs": [s.to_json() for s in input_specs(handle)],
    }


def benchmark_model(
    path: str | os.PathLike[str], cfg: BenchConfig = BenchConfig()
) -> list[dict[str, Any]]:
    """Benchmark one `.onnx` file at every batch size of `cfg`; one row per (batch, io mode)."""
    rows, _ = _benchmark_model(Path(path), cfg, progress=None)
    return rows


def cuda_graph_blocker(handle: SessionHandle) -> str | None:
    """Why ORT cannot capture this session in a CUDA graph, or None.

    ORT captures a graph only when every node runs on the CUDA EP; otherwise creating the
    `enable_cuda_graph` session fails ("all compute graph nodes have not been partitioned to
    the CUDAExecutionProvider"). Measured on an H200 with onnxruntime-gpu 1.31.1: every QDQ
    INT8 artifact keeps 2 nodes on the CPU EP. Such a model gets no cuda_graph rows and the
    results say why, instead of one model ending a many-model run."""
    nodes = handle.nodes_per_provider
    if not nodes:
        return None
    elsewhere = {ep: n for ep, n in nodes.items() if ep != CUDA_EP and n}
    if not elsewhere:
        return None
    where = ", ".join(f"{n} on {ep}" for ep, n in sorted(elsewhere.items()))
    return (
        f"CUDA graph capture needs every node on {CUDA_EP}; this model has {where} "
        f"(and {nodes.get(CUDA_EP, 0)} on CUDA)"
    )


def _benchmark_model(
    path: Path, cfg: BenchConfig, progress: Any, skips: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], SessionHandle]:
    exceed = threads_exceed_cores(cfg.threads)
    if exceed:
        log.warning(
            "--threads %d is more than the %d usable CPU cores: threads will time-share cores "
            "and latency will suffer; measuring anyway (recorded as threads_exceed_cores)",
            cfg.threads,
            usable_cores(),
        )
    handle = create_session(path, cfg.provider, cfg.session_config())
    npz = load_npz(cfg.npz) if cfg.npz is not None else None
    is_cuda = handle.provider == CUDA_EP
    base = _base_row(path, handle, cfg, exceed)
    sess = handle.session
    run = sess.run
    dims = dict(cfg.dim_values)
    rows: list[dict[str, Any]] = []
    for batch_size in cfg.batch_sizes:
        feeds = make_feeds(
            handle,
            batch_size,
            npz=npz,
            npz_source=os.fspath(cfg.npz) if cfg.npz else "the .npz",
            seed=cfg.seed,
            dim_values=dims,
        )

        def host_run(feeds: dict[str, np.ndarray] = feeds) -> object:
            return run(None, feeds)

        try:
            first = _first_run_ms(host_run)
        except Exception as exc:
            raise inference_failed(path, batch_size, handle.provider, exc) from exc
        timed = _measure(host_run, cfg)
        io = IoMode.END_TO_END if is_cuda else IoMode.HOST
        rows.append(
            _row(base, batch_size=batch_size, io=io, first_run_ms=first,
                 timing=timed.models["model"], result=timed, feeds=feeds, handle=handle)
        )  # fmt: skip
        if is_cuda and cfg.io_binding:
            binding, _keep = _bind_on_device(handle, feeds, _device_id(cfg))

            def device_run(binding: Any = binding) -> None:
                sess.run_with_iobinding(binding)

            first = _first_run_ms(device_run)
            timed = _measure(device_run, cfg)
            rows.append(
                _row(base, batch_size=batch_size, io=IoMode.DEVICE, first_run_ms=first,
                     timing=timed.models["model"], result=timed, feeds=feeds, handle=handle)
            )  # fmt: skip
        if is_cuda and cfg.cuda_graph:
            blocker = cuda_graph_blocker(handle)
            if blocker is not None:
                if skips is not None and batch_size == cfg.batch_sizes[0]:
                    log.warning("%s: no cuda_graph rows: %s", path.name, blocker)
                    skips.append({"model": path.name, "io": IoMode.CUDA_GRAPH.value,
                                  "reason": blocker})  # fmt: skip
            else:
                reference = [np.asarray(v) for v in run(None, feeds)]
                rows.append(_bench_cuda_graph(path, cfg, feeds, reference, batch_size, base))
        if progress is not None:
            progress.update(1)
    return rows, handle


def _progress_bar(total: int, enabled: bool) -> Any:
    from onnxship.core.progress import progress

    return progress(total, "bench", "case", enabled=enabled)


def benchmark_models(
    paths: Sequence[str | os.PathLike[str]] | Iterable[str | os.PathLike[str]],
    cfg: BenchConfig = BenchConfig(),
) -> dict[str, Any]:
    """Benchmark every model; return the result document (schema_version 1)."""
    model_paths = [Path(p) for p in paths]
    if not model_paths:
        raise BenchError("no model given; pass at least one .onnx file")
    created = utc_now()
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    providers_used: list[str] = []
    with _progress_bar(len(model_paths) * len(cfg.batch_sizes), cfg.progress) as bar:
        for path in model_paths:
            rows, handle = _benchmark_model(path, cfg, bar, skipped)
            results.extend(rows)
            providers_used.extend(handle.providers)
    config = cfg.to_json()
    config["threads_exceed_cores"] = threads_exceed_cores(cfg.threads)
    # skipped_measurements: io modes not measured for a model, and why (e.g. cuda_graph with
    # nodes on the CPU)
    return _result_doc(created, providers_used, config, results, skipped_measurements=skipped)


def _result_doc(
    created: str,
    providers_used: Sequence[str],
    config: dict[str, Any],
    results: list[dict[str, Any]],
    **more: Any,
) -> dict[str, Any]:
    """The result document (schema_version 1): its header, the environment of the providers
    used, the config and the rows, then `more` keys."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": TOOL,
        "created": created,
        "environment": capture_environment(tuple(providers_used)),
        "config": config,
        "results": results,
        **more,
    }


def _interleaved_fns(
    keys: Sequence[str],
    paths: Sequence[Path],
    handles: Sequence[SessionHandle],
    batch_size: int,
    cfg: BenchConfig,
    npz: Any,
) -> tuple[dict[str, Callable[[], object]], dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """Per model at one batch size: its callable, its feeds and its timed first run."""
    feeds: dict[str, dict[str, np.ndarray]] = {}
    fns: dict[str, Callable[[], object]] = {}
    first: dict[str, float] = {}
    for key, path, handle in zip(keys, paths, handles, strict=True):
        feeds[key] = make_feeds(
            handle, batch_size, npz=npz,
            npz_source=os.fspath(cfg.npz) if cfg.npz else "the .npz", seed=cfg.seed,
            dim_values=dict(cfg.dim_values),
        )  # fmt: skip
        fns[key] = partial(handle.session.run, None, feeds[key])
        try:
            first[key] = _first_run_ms(fns[key])
        except Exception as exc:
            raise inference_failed(path, batch_size, handle.provider, exc) from exc
    return fns, feeds, first


def _reference_key(keys: Sequence[str], paths: Sequence[Path], reference: str | None) -> str | None:
    if reference is None:
        return None
    for key, path in zip(keys, paths, strict=True):
        if reference in (path.stem, path.name):
            return key
    raise BenchError(
        f"reference model {reference!r} is not among the benchmarked files "
        f"({', '.join(p.stem for p in paths)}); name one of them"
    )


def _ratio_rows(
    result: TimingResult, names: Mapping[str, str], provider: str, batch_size: int, io: str
) -> list[dict[str, Any]]:
    out = []
    for key, ratio in result.ratios.items():
        doc = ratio.to_json()
        doc.update(name=names[key], reference=names[ratio.reference], provider=provider,
                   batch_size=batch_size, io=io)  # fmt: skip
        out.append(doc)
    return out


def benchmark_models_interleaved(
    paths: Sequence[str | os.PathLike[str]], cfg: BenchConfig = BenchConfig()
) -> dict[str, Any]:
    """Benchmark every model in block-interleaved rounds at each batch size (the engine,
    `runtime_bench.timing.time_blocks`, with `cfg.interleave_block` calls per model per round,
    the first untimed), so drift of a noisy machine hits every model alike and ratios between
    the rows are taken at the same moments. Same document as `benchmark_models`; each row says
    `"timing": "interleaved"` and keeps its per-round statistic (`round_stats_ms`, what paired
    ratio CIs resample). With `cfg.reference`, the document's `ratios` hold every model's
    speed-up over it with a paired bootstrap CI. `time_budget_s` is each batch size's share of
    the budget; a share left unused (CIs reached early) goes to the batch sizes after it.
    Host (numpy in/out) rows only: `end_to_end` on CUDA, `host` elsewhere."""
    model_paths = [Path(p) for p in paths]
    if not model_paths:
        raise BenchError("no model given; pass at least one .onnx file")
    created = utc_now()
    exceed = threads_exceed_cores(cfg.threads)
    npz = load_npz(cfg.npz) if cfg.npz is not None else None
    stems = [p.stem for p in model_paths]
    # file stems name the models (in ratios and racing notes) unless two files share one
    unique = len(set(stems)) == len(stems)
    keys = stems if unique else [f"{i}:{p.name}" for i, p in enumerate(model_paths)]
    ref_key = _reference_key(keys, model_paths, cfg.reference)
    handles = [create_session(p, cfg.provider, cfg.session_config()) for p in model_paths]
    bases = [_base_row(p, h, cfg, exceed) for p, h in zip(model_paths, handles, strict=True)]
    names = {k: p.stem for k, p in zip(keys, model_paths, strict=True)}
    results: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    # budget left over by a batch size whose CIs were reached early goes to the next ones
    left_s = None if cfg.time_budget_s is None else cfg.time_budget_s * len(cfg.batch_sizes)
    for i, batch_size in enumerate(cfg.batch_sizes):
        fns, feeds, first = _interleaved_fns(keys, model_paths, handles, batch_size, cfg, npz)
        timing = cfg.timing_config(block=cfg.interleave_block)
        if left_s is not None:
            share = max(left_s / (len(cfg.batch_sizes) - i), 1e-3)
            timing = dataclasses.replace(timing, budget_s=share)
        timed = time_blocks(fns, timing, reference=ref_key, race=cfg.race and ref_key is not None)
        if left_s is not None:
            left_s -= timed.wall_s
        io = IoMode.END_TO_END if handles[0].provider == CUDA_EP else IoMode.HOST
        for key, base, handle in zip(keys, bases, handles, strict=True):
            row = _row(base, batch_size=batch_size, io=io, first_run_ms=first[key],
                       timing=timed.models[key], result=timed, feeds=feeds[key],
                       handle=handle)  # fmt: skip
            row["timing"] = "interleaved"
            row["round_stats_ms"] = [round(v, 5) for v in timed.models[key].round_stats_ms]
            results.append(row)
        ratios += _ratio_rows(timed, names, handles[0].provider, batch_size, io.value)
        runs.append({"provider": handles[0].provider, "batch_size": batch_size,
                     "stop_reason": timed.stop_reason, "wall_s": round(timed.wall_s, 3),
                     "notes": list(timed.notes),
                     "dropped": {names[k]: v for k, v in timed.dropped.items()}})  # fmt: skip
    config = cfg.to_json()
    config["threads_exceed_cores"] = exceed
    config["timing"] = "interleaved"
    providers_used = [p for h in handles for p in h.providers]
    return _result_doc(created, providers_used, config, results, ratios=ratios, timing_runs=runs)


def config_from_json(data: Mapping[str, Any]) -> BenchConfig:
    """Rebuild a BenchConfig from a result document's `config` (to rerun a measurement)."""
    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    kwargs = {k: v for k, v in data.items() if k in fields}
    for key in ("batch_sizes",):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return BenchConfig(**kwargs)
