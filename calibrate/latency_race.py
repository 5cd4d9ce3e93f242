"""The latency race of the INT8 search: candidates timed against FP32 with the timing engine.

`measure_against_fp32` times FP32 and the candidates within the accuracy budget with
`runtime_bench.timing` (block-interleaved rounds, paired bootstrap CIs, candidates clearly
slower than the best dropped early) at each batch size, smallest first, within a time budget;
`speed_score` is the speed half of the selection rule and `faster` the INT8-ships decision.
The latency settings are `calibrate.quantize_config.LatencyConfig`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.calibrate.quantize_config import LatencyConfig
from onnxship.calibrate.recipes import Recipe

log = logging.getLogger(__name__)

FP32_ROW = "fp32"


def session(path: Path, provider: str, *, threads: int) -> Any:
    from onnxship.runtime_bench.session import SessionConfig, create_session

    return create_session(path, provider, SessionConfig(intra_op_threads=threads))


@dataclass
class Candidate:
    recipe: Recipe | None  # None for the FP32 row
    name: str
    path: Path
    float_nodes: list[dict[str, Any]]
    val_top1: float | None = None
    session: Any = None
    error: str | None = None
    quantize_s: float = 0.0
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    fallback: dict[str, Any] | None = None
    scored_on: int | None = None  # samples scored (fewer: stopped once outside the budget)
    screened_out: str | None = None  # within the budget but cut before the latency race


def _runner(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    def run() -> object:
        return session.run(None, feed)

    return run


def _probe_s(fn: Callable[[], object], calls: int = 3) -> float:
    """Seconds of one call: the fastest of `calls` timed calls after one warm-up call (the
    minimum, robust to a preempted call on a shared machine)."""
    fn()
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_against_fp32(
    fp32: Candidate,
    candidates: Sequence[Candidate],
    feeds: dict[int, dict[str, np.ndarray]],
    lat: LatencyConfig,
    *,
    provider: str,
    budget_s: float,
    race: bool,
) -> dict[str, Any]:
    """Time FP32 and `candidates` with the timing engine at each batch size, smallest first,
    within `budget_s` in all (shared evenly by the batch sizes still to time); fill `.latency`
    and return what the record says about the run (rounds, stop reasons, raced-out and
    skipped batch sizes). Sessions are created here and released at the end, so only the
    timed models hold memory, and only for the timed batch sizes."""
    from onnxship.runtime_bench.timing import time_blocks

    rows = [fp32, *candidates]
    sessions = {row.name: session(row.path, provider, threads=lat.threads) for row in rows}
    info: dict[str, Any] = {"budget_s": round(budget_s, 3), "by_batch": {}, "skipped": {}}
    started = time.perf_counter()
    try:
        smallest = min(lat.batch_sizes)
        fp32_session = sessions[fp32.name].session
        per_sample_s = _probe_s(_runner(fp32_session, feeds[smallest])) / smallest

        def call_s(batch: int) -> float:
            return _probe_s(_runner(fp32_session, feeds[batch]), calls=1)

        kept = _batches_that_fit(lat, budget_s, per_sample_s, call_s, len(rows), info["skipped"])
        for i, batch in enumerate(kept):
            share = max(budget_s - (time.perf_counter() - started), 0.0) / (len(kept) - i)
            t_batch = time.perf_counter()
            fns = {name: _runner(sess.session, feeds[batch]) for name, sess in sessions.items()}
            screened = _prescreen(fns, fp32.name, batch, per_sample_s, share, lat) if race else {}
            for name in screened:
                del fns[name]
            share -= time.perf_counter() - t_batch
            result = time_blocks(fns, lat.timing(max(share, 1e-3)), reference=fp32.name, race=race)
            _fill_latency([r for r in rows if r.name in fns], batch, result, lat)
            for r in rows:
                if r.name in screened:
                    r.screened_out = screened[r.name]
            info["by_batch"][str(batch)] = {
                "rounds": result.models[fp32.name].n_rounds,
                "stop_reason": result.stop_reason,
                "wall_s": round(time.perf_counter() - t_batch, 3),
                "dropped": {**screened, **result.dropped},
                "notes": list(result.notes),
            }
    finally:
        sessions.clear()
    info["wall_s"] = round(time.perf_counter() - started, 3)
    return info


def _prescreen(
    fns: dict[str, Callable[[], object]],
    reference: str,
    batch: int,
    per_sample_s: float,
    share_s: float,
    lat: LatencyConfig,
) -> dict[str, str]:
    """Successive halving's first cut: when `min_iterations` rounds of every model would not
    fit `share_s`, time one round of each (block-interleaved, the engine) and keep only the
    fastest that fit; return the others with the reason. Nothing is cut when all fit."""
    from onnxship.runtime_bench.timing import time_blocks

    model_round_s = per_sample_s * batch * lat.block
    if len(fns) * model_round_s * lat.min_iterations <= share_s:
        return {}
    # the screening round: one untimed and one timed call per model
    left = share_s - len(fns) * per_sample_s * batch * 2
    keep = max(2, int(left / (model_round_s * lat.min_iterations)))  # FP32 + at least one
    if keep >= len(fns):
        return {}
    one = dataclasses.replace(
        lat.timing(max(share_s, 1e-3)),
        block=2, min_rounds=1, max_rounds=1, warmup=0, race_after_rounds=1,
    )  # fmt: skip
    result = time_blocks(fns, one, reference=reference)
    stat = lat.statistic.value
    ranked = sorted(
        (n for n in fns if n != reference),
        key=lambda n: result.models[n].min_ms if stat == "min" else result.models[n].mean_ms,
    )
    return {
        name: (
            f"screened out at batch {batch}: {lat.min_iterations} rounds of all {len(fns)} "
            f"models would not fit the {share_s:.1f} s share of the latency budget, so one round "
            f"of each was timed and the {keep - 1} fastest raced on; this one ranked "
            f"{i + keep} of {len(fns) - 1}"
        )
        for i, name in enumerate(ranked[keep - 1 :])
    }


def _batches_that_fit(
    lat: LatencyConfig,
    budget_s: float,
    per_sample_s: float,
    call_s: Callable[[int], float],
    n_models: int,
    skipped: dict,
) -> list[int]:
    """The batch sizes to time, smallest first: the smallest always; a larger one only when
    `min_iterations` rounds of every model fit its share of the budget. The cost of an FP32
    call is first extrapolated from its time per sample at the smallest batch, which
    overstates it (the per-call overhead scales with the batch too); when that says "does not
    fit" but two calls at the batch cost under a tenth of the share, one call is timed there
    (`call_s`) and decides. The batches left out go in `skipped` with the reason."""
    batches = sorted(lat.batch_sizes)
    kept = [batches[0]]
    rounds = n_models * lat.block * lat.min_iterations  # calls of the batch's share
    for batch in batches[1:]:
        share = budget_s / (len(kept) + 1)
        one_call = per_sample_s * batch
        if one_call * rounds > share and 2 * one_call <= 0.1 * share:
            one_call = call_s(batch)
        need_s = one_call * rounds
        if need_s > share:
            skipped[str(batch)] = (
                f"{lat.min_iterations} rounds of {n_models} models at batch {batch} need "
                f"~{need_s:.1f} s (FP32 ~{one_call * 1e3:.0f} ms a call), more than "
                f"its {share:.1f} s share of the {budget_s:.1f} s latency budget; raise "
                "--bench-seconds to time it"
            )
            log.info("latency: batch %d skipped: %s", batch, skipped[str(batch)])
        else:
            kept.append(batch)
    return kept


def _fill_latency(rows: Sequence[Candidate], batch: int, result: Any, lat: LatencyConfig) -> None:
    """One row's latency at `batch`: the engine's speed-up over FP32 with its CI, and the
    time ratios (candidate / FP32, lower is faster) that the selection rule uses."""
    base = result.models[rows[0].name]
    for row in rows:
        m = result.models[row.name]
        entry: dict[str, Any] = {
            "p50_ms": _r5(m.p50.value_ms),
            "min_ms": _r5(m.min_ms),
            "p90_ms": _r5(m.p90.value_ms),
            "fp32_p50_ms": _r5(base.p50.value_ms),
            "fp32_min_ms": _r5(base.min_ms),
            "p50_ratio": _r5(m.p50.value_ms / base.p50.value_ms, 4),
            "min_ratio": _r5(m.min_ms / base.min_ms, 4),
            "rounds": m.n_rounds,
            "calls": m.n_calls,
        }
        ratio = result.ratios.get(row.name)
        if ratio is not None:
            entry["speedup"] = _r5(ratio.ratio, 4)
            entry["speedup_ci"] = [_r5(ratio.ci[0], 4), _r5(ratio.ci[1], 4)]
            entry["ci_level"] = ratio.ci_level
            # the selection rule's ratio is the engine's, for the configured statistic
            entry[f"{lat.statistic.value}_ratio"] = _r5(1.0 / ratio.ratio, 4)
        if row.name in result.dropped:
            entry["raced_out"] = result.dropped[row.name]
        row.latency[str(batch)] = entry


def _r5(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(float(value), digits)


def timed_batches(row: Candidate, lat: LatencyConfig) -> list[int]:
    return [b for b in lat.batch_sizes if str(b) in row.latency]


def _ratio(row: Candidate, batch: int, lat: LatencyConfig) -> float:
    return row.latency[str(batch)][f"{lat.statistic.value}_ratio"]


def speed_score(row: Candidate, lat: LatencyConfig) -> float:
    """Geometric mean over the timed batch sizes of INT8/FP32 latency (lower is faster); the
    speed half of the selection rule (`choose_recipe`)."""
    ratios = [_ratio(row, b, lat) for b in timed_batches(row, lat)]
    if not ratios:
        return math.inf
    return float(math.exp(sum(math.log(r) for r in ratios) / len(ratios)))


def faster(row: Candidate, lat: LatencyConfig) -> bool:
    """The INT8-ships decision: at every timed batch size the lower bound of the speed-up's CI
    clears `lat.min_speedup` (`runtime_bench.timing.decide_faster`)."""
    from onnxship.runtime_bench.timing import Ratio, decide_faster

    timed = timed_batches(row, lat)
    if not timed:
        return False
    for b in timed:
        e = row.latency[str(b)]
        if "speedup_ci" not in e:
            return False
        r = Ratio(row.name, FP32_ROW, e["speedup"], tuple(e["speedup_ci"]), lat.statistic.value)
        if not decide_faster(r, lat.min_speedup):
            return False
    return True


def speedups(row: Candidate, lat: LatencyConfig) -> str:
    """'batch 1: 1.78x [1.70, 1.85]' per timed batch size: the engine's speed-up over FP32."""
    parts = []
    for b in timed_batches(row, lat):
        e = row.latency[str(b)]
        lo, hi = e.get("speedup_ci") or (float("nan"), float("nan"))
        parts.append(f"batch {b}: {e.get('speedup', float('nan')):.2f}x [{lo:.2f}, {hi:.2f}]")
    return ", ".join(parts) or "not timed"


def faster_why(
    chosen: Candidate,
    is_faster: bool,
    lat: LatencyConfig,
    within: Sequence[Candidate],
    rows: Sequence[Candidate],
) -> str:
    ci = int(round(lat.ci_level * 100))
    ratios = (
        f"speed-up over FP32 {speedups(chosen, lat)} ({lat.statistic.value} latency, {ci} % "
        f"CI, re-run interleaved with FP32; INT8 counts as faster when the CI's lower bound "
        f"clears {lat.min_speedup:.3f}x at every timed batch size)"
    )
    if is_faster:
        return f"{chosen.name}: {ratios}"
    names_within = {r.name for r in within}
    fast_within = sum(1 for r in rows if r.name in names_within and r.latency and faster(r, lat))
    if fast_within:
        others = (
            f"{fast_within} of the {len(names_within)} candidates within the budget measured "
            "faster in the race, but the chosen one's re-run interleaved with FP32 did not "
            "confirm it: the difference is within this machine's run-to-run noise or the "
            "budget was too short for a confident answer (raise --bench-seconds)"
        )
    else:
        others = (
            f"none of the {len(names_within)} timed candidates within the budget was "
            f"confidently faster at every timed batch size; the other {len(rows) - len(names_within)} "
            "were outside the accuracy budget or screened out before the race (see each "
            "candidate's `screened` / `screened_out`)"
        )
    return (
        f"no INT8 recipe within the accuracy budget was faster than FP32 at every batch size "
        f"on this target ({others}); the chosen {chosen.name}: {ratios}. ORT's integer kernels "
        "do not confidently beat its float ones on this model and CPU; prefer the FP32 model "
        "where latency matters"
    )
