"""Deployment scenarios as MLPerf LoadGen defines them: single-stream, offline, server.

- single-stream: batch 1, one query after another; p50/p90/p99 latency with bootstrap CIs
  (the timing engine, `runtime_bench.timing`). Several models are interleaved in blocks, so
  their ratios come with CIs too.
- offline: throughput in samples/s (batch / p50 latency of one call, CI from the p50's CI) at
  every batch size of a list; the result is the best batch size.
- server: queries (batch 1) arrive as a Poisson process at a target QPS (seeded), served by
  `concurrency` worker threads sharing one session, first come first served. Latency runs
  from a query's *scheduled* arrival to its completion, so queueing counts. The search finds
  the highest QPS whose p99 latency stays <= `slo_ms`, within a time budget; every QPS step
  runs at least `min_queries` queries (LoadGen asks >= 662 for a p99) or is not run and says
  why. A model that misses the SLO even at the lowest QPS tried is a result, not an error.

Each result names its scenario and its statistic and carries the machine fingerprint.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.core.artifact import jsonable, sha256_file, utc_now
from onnxship.core.env import capture_environment, machine_fingerprint
from onnxship.core.flags import flag, float_csv, number, positive_float, positive_int
from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.inputs import check_batch_size, load_npz, make_feeds
from onnxship.runtime_bench.session import (
    SessionConfig,
    SessionHandle,
    create_session,
    inference_failed,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TOOL = "onnxship bench --scenario"
# LoadGen's minimum query counts for a tail percentile.
P99_MIN_QUERIES = 662
P90_MIN_QUERIES = 64


class Scenario(enum.Enum):
    SINGLE_STREAM = "single-stream"
    OFFLINE = "offline"
    SERVER = "server"


def parse_scenario(text: str | Scenario) -> Scenario:
    if isinstance(text, Scenario):
        return text
    try:
        return Scenario(str(text).strip().lower())
    except ValueError:
        choices = ", ".join(s.value for s in Scenario)
        raise BenchError(
            f"unknown scenario {text!r}; expected one of {choices} (MLPerf LoadGen's names)"
        ) from None


@dataclass(frozen=True)
class ScenarioConfig:
    """What one scenario run measures and within which budget.

    budget_s: wall-clock budget per model (the server search, or the engine's timing).
    slo_ms: server: the p99 latency bound. concurrency: server: worker threads on one session.
    qps: server: fixed target QPS steps instead of the search (each one is checked).
    qps_tolerance: server: the search stops when the bracket [met, missed] is this tight.
    min_queries: server: queries per QPS step at least (a p99 needs 662).
    step_s: server: a QPS step also lasts at least this long (more queries at high QPS).
    """

    # fmt: off
    scenario: Scenario = field(default=Scenario.SINGLE_STREAM, metadata=flag(
        "--scenario", "single-stream | offline | server (default: none, the latency table above)",
        metavar="S", default=None))
    provider: str = "cpu"
    session: SessionConfig = SessionConfig()
    batch_sizes: tuple[int, ...] = (1, 64)
    slo_ms: float = field(default=5.0, metadata=flag(
        "--slo-ms", "server: p99 latency bound in ms, > 0 (default: {default:g})", type=number,
        metavar="MS"))
    concurrency: int = field(default=1, metadata=flag(
        "--concurrency", "server: worker threads sharing one session (default: {default})",
        type=positive_int, metavar="N"))
    qps: tuple[float, ...] = field(default=(), metadata=flag(
        "--qps", "server: run these target QPS instead of searching (each checked: the "
        "generator must be able to issue it, and a p99's 662 queries must fit the budget)",
        type=float_csv, metavar="Q[,Q...]"))
    budget_s: float = field(default=30.0, metadata=flag(
        "--budget-s", "wall-clock budget per model for --scenario (default {default:g}) and for "
        "--tune-session (default 20)", type=positive_float, metavar="S", default=None))
    # fmt: on
    ci_level: float = 0.95
    qps_tolerance: float = 0.05
    min_queries: int = P99_MIN_QUERIES
    step_s: float = 1.0
    seed: int = 0
    npz: Path | None = None
    dim_values: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "scenario", parse_scenario(self.scenario))
        if not (isinstance(self.slo_ms, (int, float)) and math.isfinite(self.slo_ms)) or (
            self.slo_ms <= 0
        ):
            raise BenchError(
                f"--slo-ms must be a latency bound > 0 ms, got {self.slo_ms}; e.g. --slo-ms 5"
            )
        if not 0 < self.ci_level < 1:
            raise BenchError(
                f"CI level must be a fraction in (0, 1), got {self.ci_level}; e.g. 0.95"
            )
        if self.concurrency < 1:
            raise BenchError(f"--concurrency must be >= 1, got {self.concurrency}")
        if not self.budget_s > 0:
            raise BenchError(f"budget must be > 0 seconds, got {self.budget_s}")
        if not 0 < self.qps_tolerance < 1:
            raise BenchError(f"qps_tolerance must be in (0, 1), got {self.qps_tolerance}")
        if self.min_queries < P99_MIN_QUERIES:
            raise BenchError(
                f"min_queries must be >= {P99_MIN_QUERIES} (what MLPerf LoadGen asks for a "
                f"p99), got {self.min_queries}"
            )
        sizes = (self.batch_sizes,) if isinstance(self.batch_sizes, int) else self.batch_sizes
        for b in sizes:
            check_batch_size(b)
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in sizes))
        for q in self.qps:
            check_qps_value(q)
        object.__setattr__(self, "qps", tuple(float(q) for q in self.qps))
        if self.npz is not None:
            object.__setattr__(self, "npz", Path(self.npz))

    def to_json(self) -> dict[str, Any]:
        out = jsonable(self)
        out["session"] = self.session.to_json()
        return out


def check_qps_value(qps: float) -> None:
    if not (isinstance(qps, (int, float)) and math.isfinite(qps) and qps > 0):
        raise BenchError(f"target QPS must be a finite number > 0, got {qps!r}")


# --------------------------------------------------------------------------------------------
# Sessions and feeds


@dataclass
class _Target:
    path: Path
    handle: SessionHandle
    feeds: dict[int, dict[str, np.ndarray]]

    def call(self, batch_size: int) -> Callable[[], object]:
        return partial(self.handle.session.run, None, self.feeds[batch_size])


def _open(path: Path, cfg: ScenarioConfig, batch_sizes: Sequence[int]) -> _Target:
    handle = create_session(path, cfg.provider, cfg.session)
    npz = load_npz(cfg.npz) if cfg.npz is not None else None
    feeds = {
        b: make_feeds(
            handle,
            b,
            npz=npz,
            npz_source=os.fspath(cfg.npz) if cfg.npz else "the .npz",
            seed=cfg.seed,
            dim_values=dict(cfg.dim_values),
        )  # fmt: skip
        for b in batch_sizes
    }
    target = _Target(path, handle, feeds)
    for b in batch_sizes:
        try:
            target.call(b)()
        except Exception as exc:
            raise inference_failed(path, b, handle.provider, exc) from exc
    return target


def _fingerprint(handle: SessionHandle, session: SessionConfig) -> dict[str, Any]:
    return machine_fingerprint(
        handle.provider,
        intra_op_threads=session.intra_op_threads,
        allow_spinning=session.allow_spinning,
    )


def _model_fields(target: _Target, cfg: ScenarioConfig) -> dict[str, Any]:
    return {
        "model": os.fspath(target.path),
        "model_name": target.path.stem,
        "model_sha256": sha256_file(target.path),
        "provider": target.handle.provider,
        "session": cfg.session.to_json(),
        "fingerprint": _fingerprint(target.handle, cfg.session),
    }


# --------------------------------------------------------------------------------------------
# Server: Poisson load generator


def poisson_arrivals(qps: float, n: int, seed: int) -> np.ndarray:
    """Scheduled arrival times (s, from 0) of `n` queries of a Poisson process at `qps`."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1.0 / qps, size=n))


@dataclass(frozen=True)
class LoadRun:
    """One run of the load generator: per query its scheduled arrival, start and completion."""

    arrival_s: np.ndarray
    start_s: np.ndarray
    done_s: np.ndarray
    wall_s: float

    @property
    def latency_ms(self) -> np.ndarray:
        return (self.done_s - self.arrival_s) * 1e3

    @property
    def issue_delay_ms(self) -> np.ndarray:
        """How late each query started after its arrival (queueing + generator lag)."""
        return (self.start_s - self.arrival_s) * 1e3


def run_load(fn: Callable[[], object], arrivals: np.ndarray, concurrency: int) -> LoadRun:
    """Serve queries arriving at `arrivals` (s) with `concurrency` workers, first come first
    served: each idle worker takes the next query in arrival order, sleeps until it arrives
    (if it has not yet), runs it and records the completion."""
    n = len(arrivals)
    start = np.zeros(n)
    done = np.zeros(n)
    lock = threading.Lock()
    counter = iter(range(n))
    errors: list[BaseException] = []
    t0 = time.perf_counter() + 0.005  # every worker is up before the first arrival

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None or errors:
                return
            due = t0 + arrivals[i]
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            start[i] = time.perf_counter()
            try:
                fn()
            except BaseException as exc:  # surfaced in the caller's thread
                errors.append(exc)
                return
            done[i] = time.perf_counter()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(f"inference failed during the server scenario: {errors[0]}")
    wall = time.perf_counter() - t0
    return LoadRun(arrivals.copy(), start - t0, done - t0, wall)


def generator_capacity_qps(concurrency: int, n: int = 2000) -> float:
    """The fastest rate this process can issue queries at: `n` no-op queries, all due at once,
    through the same generator and worker threads. Measured in this run, on this machine."""
    run = run_load(lambda: None, np.zeros(n), concurrency)
    span = float(np.max(run.done_s)) if n else 0.0
    return n / span if span > 0 else math.inf


def quantile_ci_ms(sorted_ms: np.ndarray, q: float, level: float) -> tuple[float, float] | None:
    """Distribution-free CI of the q-quantile from order statistics (binomial, normal
    approximation); None when the sample is too small for the upper rank to exist. It assumes
    independent latencies, which queueing weakens: read it as a lower bound on the spread."""
    from statistics import NormalDist

    n = len(sorted_ms)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    half = z * math.sqrt(n * q * (1 - q))
    lo, hi = math.floor(n * q - half), math.ceil(n * q + half)
    if lo < 0 or hi > n - 1:
        return None
    return float(sorted_ms[lo]), float(sorted_ms[hi])


def server_step(
    fn: Callable[[], object], qps: float, n: int, cfg: ScenarioConfig, seed: int
) -> dict[str, Any]:
    """One QPS step: `n` Poisson queries at `qps`; p50/p90/p99 of scheduled-arrival latency."""
    run = run_load(fn, poisson_arrivals(qps, n, seed), cfg.concurrency)
    lat = np.sort(run.latency_ms)
    p50, p90, p99 = (float(np.percentile(lat, q)) for q in (50, 90, 99))
    enough = n >= cfg.min_queries
    return {
        "target_qps": qps,
        "queries": n,
        "issued_qps": n / float(run.arrival_s[-1]) if n else 0.0,
        "completed_qps": n / run.wall_s if run.wall_s > 0 else math.inf,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99 if enough else None,
        "p99_ci_ms": quantile_ci_ms(lat, 0.99, cfg.ci_level) if enough else None,
        "max_ms": float(lat[-1]),
        "median_issue_delay_ms": float(np.median(run.issue_delay_ms)),
        "met": bool(enough and p99 <= cfg.slo_ms),
        "wall_s": run.wall_s,
    }


def _queries_for(qps: float, cfg: ScenarioConfig) -> int:
    return max(cfg.min_queries, math.ceil(qps * cfg.step_s))


def _needed_s(qps: float, cfg: ScenarioConfig) -> float:
    return _queries_for(qps, cfg) / qps


def check_qps_generable(qps: float, cfg: ScenarioConfig, capacity: float) -> None:
    """BenchError (exit 2) for a target QPS this generator cannot produce here and now."""
    check_qps_value(qps)
    if qps > capacity:
        raise BenchError(
            f"target QPS {qps:g} is above what the load generator can issue on this machine "
            f"(measured {capacity:,.0f} QPS with no-op queries and --concurrency "
            f"{cfg.concurrency}); choose a QPS below it"
        )
    if _needed_s(qps, cfg) > cfg.budget_s:
        raise BenchError(
            f"target QPS {qps:g} needs {_needed_s(qps, cfg):.0f} s for the {cfg.min_queries} "
            f"queries a p99 needs, more than the budget of {cfg.budget_s:g} s; raise "
            "--budget-s or the QPS"
        )


def _service_ms(target: _Target, cfg: ScenarioConfig) -> float:
    """Median batch-1 latency over a short probe (a tenth of the budget, at most 2 s)."""
    fn = target.call(1)
    times: list[float] = []
    end = time.perf_counter() + min(2.0, 0.1 * cfg.budget_s)
    while time.perf_counter() < end or len(times) < 20:
        t = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t) / 1e6)
        if len(times) >= 2000:
            break
    return float(np.median(times))


def _search_qps(fn: Callable[[], object], lo: float, hi: float, cfg: ScenarioConfig,
                deadline: float, capacity: float) -> tuple[list[dict[str, Any]], str]:  # fmt: skip
    """Bisect (geometrically) between `lo` and `hi` for the highest QPS that meets the SLO."""
    steps: list[dict[str, Any]] = []

    def attempt(q: float) -> dict[str, Any] | None:
        if time.perf_counter() + _needed_s(q, cfg) > deadline:
            return None
        step = server_step(fn, q, _queries_for(q, cfg), cfg, cfg.seed + len(steps))
        steps.append(step)
        log.info("server %.1f QPS: p99 %s ms, met %s", q, step["p99_ms"], step["met"])
        return step

    first = attempt(lo)
    if first is None:
        return steps, "budget"
    if not first["met"]:
        return steps, "slo_missed_at_lowest_qps"
    met, missed = lo, None
    probe = hi if hi > lo * (1 + cfg.qps_tolerance) else lo * 2
    while missed is None:  # grow until a QPS misses the SLO
        if probe > capacity:
            return steps, "generator_limit"
        step = attempt(probe)
        if step is None:
            return steps, "budget"
        if step["met"]:
            met, probe = probe, probe * 2
        else:
            missed = probe
    while missed / met > 1 + cfg.qps_tolerance:
        q = math.sqrt(met * missed)
        step = attempt(q)
        if step is None:
            return steps, "budget"
        if step["met"]:
            met = q
        else:
            missed = q
    return steps, "converged"


def _server_result(
    target: _Target, cfg: ScenarioConfig, steps: list[dict[str, Any]], stop: str, **extra: Any
) -> dict[str, Any]:
    met = [s for s in steps if s["met"]]
    best = max(met, key=lambda s: s["target_qps"]) if met else None
    if best is not None:
        verdict = (
            f"max {best['target_qps']:,.1f} QPS with p99 {best['p99_ms']:.3g} ms <= "
            f"{cfg.slo_ms:g} ms ({cfg.concurrency} worker(s))"
        )
    elif steps:
        low = min(steps, key=lambda s: s["target_qps"])
        p99 = "-" if low["p99_ms"] is None else f"{low['p99_ms']:.3g} ms"
        verdict = (
            f"the SLO p99 <= {cfg.slo_ms:g} ms is not met even at the lowest QPS tried "
            f"({low['target_qps']:,.1f} QPS: p99 {p99})"
        )
    else:
        verdict = "no QPS step fitted in the budget; raise --budget-s"
    return {
        "scenario": Scenario.SERVER.value,
        "statistic": f"max QPS with p99 latency <= {cfg.slo_ms:g} ms (from scheduled arrival "
        "to completion, queueing included)",
        **_model_fields(target, cfg),
        "batch_size": 1,
        "value": best["target_qps"] if best else None,
        "unit": "queries/s",
        "slo_ms": cfg.slo_ms,
        "concurrency": cfg.concurrency,
        "slo_met": best is not None,
        "verdict": verdict,
        "stop_reason": stop,
        "steps": sorted(steps, key=lambda s: s["target_qps"]),
        **extra,
    }


def run_server(target: _Target, cfg: ScenarioConfig) -> dict[str, Any]:
    start = time.perf_counter()
    deadline = start + cfg.budget_s
    capacity = generator_capacity_qps(cfg.concurrency)
    fn = target.call(1)
    if cfg.qps:
        for q in cfg.qps:
            check_qps_generable(q, cfg, capacity)
        steps, skipped = [], []
        for i, q in enumerate(cfg.qps):
            if time.perf_counter() + _needed_s(q, cfg) > deadline:
                log.warning("server: %.1f QPS not run: its queries do not fit the budget left", q)
                skipped.append(q)
                continue
            steps.append(server_step(fn, q, _queries_for(q, cfg), cfg, cfg.seed + i))
        return _server_result(
            target, cfg, steps, "budget" if skipped else "fixed_qps",
            generator_capacity_qps=capacity, skipped_qps=skipped,
        )  # fmt: skip
    service = _service_ms(target, cfg)
    # The most the workers could serve if every query took the median service time.
    hi = min(capacity, cfg.concurrency * 1000.0 / service)
    # The lowest QPS whose minimum query count fits a quarter of the budget.
    lo = min(hi, max(hi / 1000, cfg.min_queries / (0.25 * cfg.budget_s)))
    steps, stop = _search_qps(fn, lo, hi, cfg, deadline, capacity)
    return _server_result(
        target, cfg, steps, stop, service_p50_ms=service, generator_capacity_qps=capacity,
        search_bounds_qps=[lo, hi],
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Single-stream and offline: the timing engine


def _timing_config(cfg: ScenarioConfig, *, min_calls: int) -> Any:
    from onnxship.runtime_bench.timing import TimingConfig

    base = TimingConfig()
    per_round = max(1, base.block - 1)
    return replace(
        base,
        budget_s=cfg.budget_s,
        ci_level=cfg.ci_level,
        seed=cfg.seed,
        min_rounds=max(base.min_rounds, math.ceil(min_calls / per_round)),
    )


def _percentile_json(p: Any) -> dict[str, Any]:
    return {"value_ms": p.value_ms, "ci_ms": p.ci_ms, "n": p.n, "why": p.why}


def run_single_stream(targets: Sequence[_Target], cfg: ScenarioConfig) -> list[dict[str, Any]]:
    from onnxship.runtime_bench.timing import time_blocks

    keys = [f"{i}:{t.path.name}" for i, t in enumerate(targets)]
    fns = {k: t.call(1) for k, t in zip(keys, targets, strict=True)}
    timing = time_blocks(fns, _timing_config(cfg, min_calls=cfg.min_queries), reference=keys[0])
    out = []
    for key, target in zip(keys, targets, strict=True):
        mt = timing.models[key]
        ratio = timing.ratios.get(key) if key != keys[0] else None
        out.append(
            {
                "scenario": Scenario.SINGLE_STREAM.value,
                "statistic": "latency percentiles of batch-1 queries, one after another "
                f"(bootstrap {cfg.ci_level:.0%} CIs over rounds)",
                **_model_fields(target, cfg),
                "batch_size": 1,
                "value": mt.p99.value_ms if mt.p99.value_ms is not None else mt.p50.value_ms,
                "value_statistic": "p99_ms" if mt.p99.value_ms is not None else "p50_ms",
                "unit": "ms",
                "p50": _percentile_json(mt.p50),
                "p90": _percentile_json(mt.p90),
                "p99": _percentile_json(mt.p99),
                "mean_ms": mt.mean_ms,
                "n_calls": mt.n_calls,
                "n_rounds": mt.n_rounds,
                "speedup_vs_first": None if ratio is None else {
                    "reference": targets[0].path.name, "ratio": ratio.ratio,
                    "ci": list(ratio.ci), "statistic": ratio.statistic,
                },
                "stop_reason": timing.stop_reason,
            }
        )  # fmt: skip
    return out


def run_offline(target: _Target, cfg: ScenarioConfig) -> dict[str, Any]:
    from onnxship.runtime_bench.timing import time_blocks

    fns = {f"b{b}": target.call(b) for b in cfg.batch_sizes}
    timing = time_blocks(fns, _timing_config(cfg, min_calls=0))
    per_batch: list[dict[str, Any]] = []
    for b in cfg.batch_sizes:
        model = timing.models[f"b{b}"]
        p50 = model.p50
        assert p50.value_ms is not None  # a p50 needs one timed call; the engine always has it
        ci = None if p50.ci_ms is None else [b * 1e3 / p50.ci_ms[1], b * 1e3 / p50.ci_ms[0]]
        per_batch.append(
            {"batch_size": b, "samples_per_s": b * 1e3 / p50.value_ms, "samples_per_s_ci": ci,
             "p50_ms": p50.value_ms, "p50_ci_ms": p50.ci_ms, "n_calls": p50.n,
             # LoadGen's offline number is samples / total time: the mean, without a CI here
             "samples_per_s_at_mean": b * 1e3 / model.mean_ms}
        )  # fmt: skip
    best = max(per_batch, key=lambda r: float(r["samples_per_s"]))
    return {
        "scenario": Scenario.OFFLINE.value,
        "statistic": "throughput in samples/s = batch / p50 latency of one call, at the best "
        f"batch size of {list(cfg.batch_sizes)}",
        **_model_fields(target, cfg),
        "batch_size": best["batch_size"],
        "value": best["samples_per_s"],
        "value_ci": best["samples_per_s_ci"],
        "unit": "samples/s",
        "per_batch": per_batch,
        "stop_reason": timing.stop_reason,
    }


def run_scenario(paths: Sequence[str | os.PathLike[str]], cfg: ScenarioConfig) -> dict[str, Any]:
    """Run `cfg.scenario` on every model; the result document (schema_version 1)."""
    model_paths = [Path(p) for p in paths]
    if not model_paths:
        raise BenchError("no model given; pass at least one .onnx file")
    created = utc_now()
    sizes = cfg.batch_sizes if cfg.scenario is Scenario.OFFLINE else (1,)
    targets = [_open(p, cfg, sizes) for p in model_paths]
    if cfg.scenario is Scenario.SINGLE_STREAM:
        results = run_single_stream(targets, cfg)
    elif cfg.scenario is Scenario.OFFLINE:
        results = [run_offline(t, cfg) for t in targets]
    else:
        results = [run_server(t, cfg) for t in targets]
    providers = [p for t in targets for p in t.handle.providers]
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": TOOL,
        "scenario": cfg.scenario.value,
        "created": created,
        "environment": capture_environment(tuple(providers)),
        "config": cfg.to_json(),
        "results": results,
    }


def scenario_markdown(doc: Mapping[str, Any]) -> str:
    """One line per model: scenario, statistic, value (and the verdict for server)."""
    lines = [f"scenario: {doc['scenario']}"]
    for r in doc["results"]:
        unit = r.get("unit", "")
        value = "-" if r["value"] is None else f"{r['value']:,.4g} {unit}"
        head = f"- {r['model_name']}: {value}"
        if r["scenario"] == Scenario.SERVER.value:
            head += f" — {r['verdict']}"
        elif r["scenario"] == Scenario.SINGLE_STREAM.value:
            parts = []
            for q in ("p50", "p90", "p99"):
                p = r[q]
                if p["value_ms"] is None:
                    parts.append(f"{q} - ({p['why']})")
                else:
                    ci = (
                        "" if p["ci_ms"] is None else f" [{p['ci_ms'][0]:.4g}, {p['ci_ms'][1]:.4g}]"
                    )
                    parts.append(f"{q} {p['value_ms']:.4g}{ci} ms")
            head += f" ({r['value_statistic']}; " + ", ".join(parts) + f"; {r['n_calls']} calls)"
        else:
            head += f" at batch {r['batch_size']}"
        lines.append(head + f"  [{r['statistic']}]")
    fp = doc["results"][0]["fingerprint"] if doc["results"] else {}
    lines.append(
        f"machine {fp.get('id', '?')}: {fp.get('cpu', '?')}, {fp.get('integer_class', '?')}, "
        f"{fp.get('usable_cores', '?')} usable cores, onnxruntime {fp.get('onnxruntime', '?')}"
    )
    return "\n".join(lines)
