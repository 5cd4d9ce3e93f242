"""The timing engine: every latency onnxship decides on is measured here (numpy + stdlib).

Method: block-interleaved rounds. Each round calls every model `block` times in a row
(A A A A B B B B ...), the first call of a block untimed (it re-fills the caches the previous
model evicted; a deployed model called in a row does not pay that) and the other `block - 1`
timed (`block=1`: call by call, every call timed). Every model is timed in the same rounds,
so slow drift of a noisy machine hits all alike. Measured on one bundle (AVX2 AMD EPYC, one
thread, batch 64), searched-fp32 vs teacher-fp32: block-interleaved 12.1x; each model alone in
its own process 13.6x (20 % spread between processes); per-call round-robin 8.2x. Blocks sit
close to "alone", which is how a model is deployed.

Rounds repeat until every ratio's confidence interval is as tight as asked (`target_rel_ci`)
or the wall-clock budget is spent. The budget always bounds: a round whose projected cost
would overrun it is not started, and the floor `min_rounds` never overrides it (the first
timed round always runs: without it there is no answer; when that one round alone overruns,
the result says so in `notes`). Nothing here is asserted against absolute speed.

Statistics:
- per model, p50/p90/p99 over all timed calls, each with a bootstrap CI over rounds (rounds
  resampled with replacement, their calls pooled). Percentile policy (MLPerf LoadGen): a p90
  is reported only from >= 64 timed calls, a p99 only from >= 662; below that the value is
  None and `why` says so.
- per model vs `reference`, the speed-up ratio `reference_stat / model_stat` of the chosen
  statistic, with a paired bootstrap CI (the same resampled rounds for both models). The
  per-round statistic (`round_stats_ms`) is what the ratio bootstraps: `p50` = the median of a
  round's timed calls, then the median over rounds; `mean` = the mean; `min` = the minimum.
- racing (optional): after `race_after_rounds`, a model whose ratio CI lies wholly below the
  best model's ratio CI is dropped (it stops being called), said in `dropped`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from onnxship.runtime_bench.errors import BenchError

STATISTICS = ("p50", "mean", "min")
# MLPerf LoadGen: timed queries needed before a percentile means anything.
MIN_CALLS = {"p50": 1, "p90": 64, "p99": 662}
STOP_REASONS = ("ci_reached", "budget", "max_rounds", "raced")
# Bootstrap resamples are drawn in chunks of at most this many numbers (bounded memory).
_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class TimingConfig:
    """How to time. Every field is checked in `__post_init__` (BenchError on a bad value).

    block: calls per model per round; the first of each block untimed (block=1: all timed).
    min_rounds: the CI is not trusted before this many rounds; a floor that never overrides
      `budget_s`.
    budget_s: wall-clock budget for the whole `time_blocks` call (warm-up, rounds, bootstrap),
      held within 20 % whatever one model costs (the first timed round excepted, see module).
    ci_level: the confidence level of every CI, in (0, 1).
    target_rel_ci: stop early when every ratio's CI half-width / ratio is <= this (without a
      reference: every model's statistic CI half-width / statistic).
    statistic: what ratios and decisions use ("p50" | "mean" | "min").
    warmup: untimed calls per model before the first round (they count against the budget;
      warm-up stops once it has taken a fifth of it).
    race_after_rounds: racing looks at the CIs only after this many rounds.
    """

    block: int = 4
    min_rounds: int = 5
    max_rounds: int = 10_000
    budget_s: float = 5.0
    ci_level: float = 0.95
    target_rel_ci: float = 0.05
    statistic: str = "p50"
    n_bootstrap: int = 1000
    seed: int = 0
    warmup: int = 1
    race_after_rounds: int = 5
    # resamples for the per-model p50/p90/p99 CIs (reported, not decided on: cheaper)
    n_bootstrap_percentiles: int = 300

    def __post_init__(self) -> None:
        ints = {"block": 1, "min_rounds": 1, "max_rounds": 1, "n_bootstrap": 10, "warmup": 0,
                "race_after_rounds": 1, "n_bootstrap_percentiles": 10}  # fmt: skip
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise BenchError(f"timing {name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.budget_s, int | float) and self.budget_s > 0):
            raise BenchError(f"timing budget must be > 0 seconds, got {self.budget_s!r}")
        if not (isinstance(self.ci_level, int | float) and 0 < self.ci_level < 1):
            raise BenchError(
                f"CI level must be a fraction in (0, 1), e.g. 0.95; got {self.ci_level!r}"
            )
        if not (isinstance(self.target_rel_ci, int | float) and self.target_rel_ci > 0):
            raise BenchError(
                f"target relative CI half-width must be > 0 (e.g. 0.05), got {self.target_rel_ci!r}"
            )
        if self.statistic not in STATISTICS:
            raise BenchError(
                f"timing statistic must be one of {', '.join(STATISTICS)}; got {self.statistic!r}"
            )

    @property
    def timed_per_block(self) -> int:
        return max(self.block - 1, 1)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Percentile:
    """One statistic of one model: value and CI in ms, or None when too few calls (`why`)."""

    value_ms: float | None
    ci_ms: tuple[float, float] | None
    n: int
    why: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "value_ms": self.value_ms,
            "ci_ms": list(self.ci_ms) if self.ci_ms is not None else None,
            "n": self.n,
            "why": self.why,
        }


@dataclass(frozen=True)
class ModelTiming:
    name: str
    p50: Percentile
    p90: Percentile
    p99: Percentile
    mean_ms: float
    min_ms: float
    n_calls: int
    n_rounds: int
    round_stats_ms: tuple[float, ...]  # the chosen statistic per round (what ratios resample)
    samples_ms: tuple[float, ...] = ()  # every timed call, in order
    max_ms: float = float("nan")
    std_ms: float = float("nan")

    def to_json(self, *, rounds: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for key in ("p50", "p90", "p99"):
            pct: Percentile = getattr(self, key)
            out[f"{key}_ms"] = _r(pct.value_ms)
            out[f"{key}_ci_ms"] = [_r(v) for v in pct.ci_ms] if pct.ci_ms else None
            out[f"{key}_n"] = pct.n
            if pct.why:
                out[f"{key}_why"] = pct.why
        out.update(mean_ms=_r(self.mean_ms), min_ms=_r(self.min_ms), n_calls=self.n_calls,
                   n_rounds=self.n_rounds)  # fmt: skip
        if rounds:
            out["round_stats_ms"] = [_r(v) for v in self.round_stats_ms]
        return out


@dataclass(frozen=True)
class Ratio:
    """Speed-up of `name` over `reference`: reference_stat / name_stat (> 1: name is faster)."""

    name: str
    reference: str
    ratio: float
    ci: tuple[float, float]
    statistic: str
    n_rounds: int = 0  # paired rounds behind it
    ci_level: float = 0.95

    @property
    def rel_half_width(self) -> float:
        return (self.ci[1] - self.ci[0]) / 2 / self.ratio if self.ratio > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reference": self.reference,
            "ratio": _r(self.ratio),
            "ci": [_r(self.ci[0]), _r(self.ci[1])],
            "ci_level": self.ci_level,
            "statistic": self.statistic,
            "n_rounds": self.n_rounds,
        }


@dataclass(frozen=True)
class TimingResult:
    models: dict[str, ModelTiming]
    ratios: dict[str, Ratio]
    stop_reason: str
    wall_s: float
    config: TimingConfig
    dropped: dict[str, str]
    reference: str | None = None
    notes: tuple[str, ...] = field(default=())

    def ratio_between(self, name: str, reference: str) -> Ratio:
        """The paired ratio reference/name for any two models of this run (common rounds)."""
        return paired_ratio(self.models[name], self.models[reference], self.config)

    def to_json(self, *, rounds: bool = False) -> dict[str, Any]:
        return {
            "method": f"block-interleaved rounds, {self.config.block} calls per model per "
            f"round, the first untimed"
            if self.config.block > 1
            else "call-by-call rounds",
            "models": {k: m.to_json(rounds=rounds) for k, m in self.models.items()},
            "reference": self.reference,
            "ratios": {k: r.to_json() for k, r in self.ratios.items()},
            "stop_reason": self.stop_reason,
            "wall_s": round(self.wall_s, 3),
            "config": self.config.to_json(),
            "dropped": dict(self.dropped),
            "notes": list(self.notes),
        }


def _r(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(float(value), digits)


# --------------------------------------------------------------------------------------------
# Statistics (pure numpy)


def _alpha(cfg: TimingConfig) -> tuple[float, float]:
    tail = (1.0 - cfg.ci_level) / 2 * 100
    return tail, 100 - tail


def _aggregate(values: np.ndarray, statistic: str, axis: int = -1) -> np.ndarray:
    if statistic == "p50":
        return np.median(values, axis=axis)
    if statistic == "mean":
        return values.mean(axis=axis)
    return values.min(axis=axis)


def _boot_indices(rng: np.random.Generator, n_rounds: int, n_boot: int, width: int):
    """Bootstrap index arrays over rounds, in chunks of bounded size."""
    per_chunk = max(1, _CHUNK_ELEMENTS // max(n_rounds * width, 1))
    done = 0
    while done < n_boot:
        size = min(per_chunk, n_boot - done)
        yield rng.integers(0, n_rounds, size=(size, n_rounds), dtype=np.int32)
        done += size


def percentile_cis(
    samples_ms: np.ndarray, qs: tuple[float, ...], cfg: TimingConfig
) -> list[tuple[float, tuple[float, float]]]:
    """Percentiles `qs` of all calls (rounds x calls-per-round), each with its bootstrap CI
    over rounds (one partition per resample serves every q)."""
    n_rounds, width = samples_ms.shape
    values = np.percentile(samples_ms, qs)
    if n_rounds < 2:
        return [(float(v), (float(v), float(v))) for v in values]
    rng = np.random.default_rng(cfg.seed + 1)
    boots = []
    for idx in _boot_indices(rng, n_rounds, cfg.n_bootstrap_percentiles, width):
        boots.append(np.percentile(samples_ms[idx].reshape(len(idx), -1), qs, axis=1))
    lo, hi = np.percentile(np.concatenate(boots, axis=1), _alpha(cfg), axis=1)
    return [(float(v), (float(a), float(b))) for v, a, b in zip(values, lo, hi, strict=True)]


def ratio_from_rounds(
    name: str,
    reference: str,
    name_rounds: Sequence[float],
    reference_rounds: Sequence[float],
    cfg: TimingConfig,
    *,
    paired: bool = True,
    scale: float = 1.0,
) -> Ratio:
    """scale * reference_stat / name_stat from per-round statistics, with a bootstrap CI over
    rounds: paired (the same resampled rounds for both; the series must come from one run and
    are cut to their common length) or, for series from different runs (e.g. two batch sizes),
    each resampled on its own. `scale` turns a latency ratio into a throughput ratio
    (batch_name / batch_reference)."""
    a = np.asarray(name_rounds, dtype=np.float64)
    b = np.asarray(reference_rounds, dtype=np.float64)
    if paired:
        n = min(a.size, b.size)
        a, b = a[:n], b[:n]
    if a.size == 0 or b.size == 0:
        raise BenchError(f"no timed rounds to compare {name} with {reference}")
    stat = cfg.statistic
    point = float(scale * _aggregate(b, stat) / _aggregate(a, stat))
    rng = np.random.default_rng(cfg.seed + 7919)
    boots = []
    if paired and a.size >= 2:
        both = np.stack([b, a])
        for idx in _boot_indices(rng, a.size, cfg.n_bootstrap, 2):
            agg = _aggregate(both[:, idx], stat)  # (2, chunk)
            boots.append(scale * agg[0] / agg[1])
    elif not paired and min(a.size, b.size) >= 2:
        for idx_b in _boot_indices(rng, b.size, cfg.n_bootstrap, 2):
            idx_a = rng.integers(0, a.size, size=(len(idx_b), a.size))
            boots.append(scale * _aggregate(b[idx_b], stat) / _aggregate(a[idx_a], stat))
    if boots:
        lo, hi = np.percentile(np.concatenate(boots), _alpha(cfg))
        ci = (float(lo), float(hi))
    else:
        ci = (point, point)
    return Ratio(name=name, reference=reference, ratio=point, ci=ci, statistic=stat,
                 n_rounds=int(min(a.size, b.size)), ci_level=cfg.ci_level)  # fmt: skip


def paired_ratio(model: ModelTiming, reference: ModelTiming, cfg: TimingConfig) -> Ratio:
    """reference_stat / model_stat with a paired bootstrap CI over their common rounds."""
    return ratio_from_rounds(
        model.name, reference.name, model.round_stats_ms, reference.round_stats_ms, cfg
    )


def _percentiles(samples: np.ndarray, cfg: TimingConfig) -> dict[str, Percentile]:
    """p50/p90/p99 under the LoadGen policy: None with `why` below the calls each needs."""
    n = int(samples.size)
    keys = [k for k in ("p50", "p90", "p99") if n >= MIN_CALLS[k]]
    got = dict(zip(keys, percentile_cis(samples, tuple(float(k[1:]) for k in keys), cfg),
                   strict=True))  # fmt: skip
    out: dict[str, Percentile] = {}
    for key in ("p50", "p90", "p99"):
        if key in got:
            value, ci = got[key]
            out[key] = Percentile(value_ms=value, ci_ms=ci, n=n)
        else:
            why = f"{key} needs >= {MIN_CALLS[key]} timed calls (MLPerf LoadGen), have {n}"
            out[key] = Percentile(value_ms=None, ci_ms=None, n=n, why=why)
    return out


def summarise(name: str, samples_ms: np.ndarray, cfg: TimingConfig) -> ModelTiming:
    """A ModelTiming from a (rounds, timed calls per round) array of call latencies in ms."""
    rounds = np.asarray(samples_ms, dtype=np.float64)
    if rounds.ndim != 2 or rounds.size == 0:
        raise BenchError(f"{name}: no timed calls to summarise")
    flat = rounds.reshape(-1)
    pct = _percentiles(rounds, cfg)
    return ModelTiming(
        name=name,
        p50=pct["p50"],
        p90=pct["p90"],
        p99=pct["p99"],
        mean_ms=float(flat.mean()),
        min_ms=float(flat.min()),
        n_calls=int(flat.size),
        n_rounds=int(rounds.shape[0]),
        round_stats_ms=tuple(float(v) for v in _aggregate(rounds, cfg.statistic, axis=1)),
        samples_ms=tuple(float(v) for v in flat),
        max_ms=float(flat.max()),
        std_ms=float(flat.std(ddof=1)) if flat.size > 1 else 0.0,
    )


def _statistic_rel_ci(model: ModelTiming, cfg: TimingConfig) -> float:
    """CI half-width / value of the model's own statistic (the stop rule without a reference)."""
    stats = np.asarray(model.round_stats_ms, dtype=np.float64)[None, :]
    point = float(_aggregate(stats, cfg.statistic)[0])
    if stats.shape[1] < 2 or point <= 0:
        return math.inf
    rng = np.random.default_rng(cfg.seed + 31)
    boots = [_aggregate(stats[0][idx], cfg.statistic) for idx in
             _boot_indices(rng, stats.shape[1], cfg.n_bootstrap, 1)]  # fmt: skip
    lo, hi = np.percentile(np.concatenate(boots), _alpha(cfg))
    return float((hi - lo) / 2 / point)


# --------------------------------------------------------------------------------------------
# The loop


def decide_faster(candidate: Ratio, margin: float) -> bool:
    """True only when the CI's lower bound clears `margin` (e.g. 1.3 for 'INT8 must be 1.3x')."""
    return candidate.ci[0] >= margin


def tie(a: Ratio, b: Ratio, band: float) -> bool:
    """True when the two ratios' CIs overlap or differ by less than `band` (relative)."""
    overlap = a.ci[0] <= b.ci[1] and b.ci[0] <= a.ci[1]
    big = max(a.ratio, b.ratio)
    close = big > 0 and abs(a.ratio - b.ratio) / big < band
    return overlap or close


class _Rounds:
    """The per-model timed calls, round by round (ns), and the models still being called."""

    def __init__(self, names: list[str], cfg: TimingConfig) -> None:
        self.cfg = cfg
        self.samples: dict[str, list[list[int]]] = {n: [] for n in names}
        self.n_rounds = 0
        self.active = list(names)
        self.dropped: dict[str, str] = {}

    def run_one(self, fns: Mapping[str, Callable[[], object]]) -> None:
        clock = time.perf_counter_ns
        timed = self.cfg.timed_per_block
        untimed = self.cfg.block > 1
        for name in self.active:
            fn = fns[name]
            if untimed:
                fn()  # refills what the previous model evicted
            calls = []
            for _ in range(timed):
                start = clock()
                fn()
                calls.append(clock() - start)
            self.samples[name].append(calls)
        self.n_rounds += 1

    def timing(self, name: str) -> ModelTiming:
        arr = np.asarray(self.samples[name], dtype=np.float64) / 1e6
        return summarise(name, arr, self.cfg)

    def quick(self, name: str) -> ModelTiming:
        """Round statistics only (no percentile bootstrap): what stop checks and racing need."""
        arr = np.asarray(self.samples[name], dtype=np.float64) / 1e6
        stats = _aggregate(arr, self.cfg.statistic, axis=1)
        nan = Percentile(None, None, int(arr.size))
        return ModelTiming(name, nan, nan, nan, float(arr.mean()), float(arr.min()),
                           int(arr.size), int(arr.shape[0]), tuple(stats.tolist()))  # fmt: skip


def _check(rounds: _Rounds, reference: str | None, race: bool) -> bool:
    """Racing, then the stop rule: True when every active model's CI is tight enough."""
    cfg = rounds.cfg
    quick = {n: rounds.quick(n) for n in rounds.active}
    if reference is not None:
        ratios = {n: paired_ratio(quick[n], quick[reference], cfg) for n in quick if n != reference}
    else:
        ratios = {}
    if race and rounds.n_rounds >= cfg.race_after_rounds:
        _race(rounds, quick, ratios, reference)
    if reference is not None:
        live = [r for n, r in ratios.items() if n in rounds.active]
        return all(r.rel_half_width <= cfg.target_rel_ci for r in live)
    return all(_statistic_rel_ci(quick[n], cfg) <= cfg.target_rel_ci for n in rounds.active)


def _race(
    rounds: _Rounds, quick: dict[str, ModelTiming], ratios: dict[str, Ratio], reference: str | None
) -> None:
    """Drop every model whose speed CI lies wholly below the best model's (never the reference)."""
    cfg = rounds.cfg
    if reference is None:  # speed vs the model with the best statistic so far
        best_name = min(quick, key=lambda n: _aggregate(np.asarray(quick[n].round_stats_ms),
                                                           cfg.statistic))  # fmt: skip
        ratios = {n: paired_ratio(quick[n], quick[best_name], cfg) for n in quick}
    if not ratios:
        return
    best = max(ratios.values(), key=lambda r: r.ratio)
    for name, r in ratios.items():
        if name == reference or name == best.name or name not in rounds.active:
            continue
        if r.ci[1] < best.ci[0]:
            rounds.active.remove(name)
            rounds.dropped[name] = (
                f"raced out after {rounds.n_rounds} rounds: speed-up {r.ratio:.3g}x "
                f"[{r.ci[0]:.3g}, {r.ci[1]:.3g}] lies below {best.name}'s "
                f"{best.ratio:.3g}x [{best.ci[0]:.3g}, {best.ci[1]:.3g}] ({r.statistic}, "
                f"{int(cfg.ci_level * 100)} % CI vs {r.reference})"
            )


def _validate(fns: Mapping[str, Callable[[], object]], reference: str | None) -> None:
    if not fns:
        raise BenchError("nothing to time: give at least one callable")
    if reference is not None and reference not in fns:
        raise BenchError(
            f"reference {reference!r} is not one of the timed models ({', '.join(fns)})"
        )


def time_blocks(
    fns: Mapping[str, Callable[[], object]],
    cfg: TimingConfig = TimingConfig(),
    *,
    reference: str | None = None,
    race: bool = False,
) -> TimingResult:
    """Time every callable in block-interleaved rounds until the CIs are tight or the budget
    is spent (see the module docstring); ratios are taken against `reference`."""
    _validate(fns, reference)
    start = time.perf_counter()
    deadline = start + cfg.budget_s
    for _ in range(cfg.warmup):  # at most a fifth of the budget: the rounds are what counts
        if time.perf_counter() - start > 0.2 * cfg.budget_s:
            break
        for fn in fns.values():
            fn()
    rounds = _Rounds(list(fns), cfg)
    stop, next_check = "max_rounds", cfg.min_rounds
    round_s = check_s = check_total_s = 0.0
    # the bootstrap's seconds per resampled number, measured by each check: the final summary
    # resamples every timed call of every model (plus the ratios), so its cost is projected
    per_element_s = 0.0
    n_series = len(fns) - 1 if reference is not None else len(fns)
    while rounds.n_rounds < cfg.max_rounds:
        t0 = time.perf_counter()
        # checks (bootstraps) are spaced geometrically and held to ~10 % of the time spent
        will_check = rounds.n_rounds + 1 >= next_check and (
            check_total_s <= 0.1 * (t0 - start) or rounds.n_rounds + 1 == cfg.min_rounds
        )
        final_elements = (
            (rounds.n_rounds + 1)
            * len(fns)
            * (2 * cfg.n_bootstrap_percentiles * cfg.timed_per_block + 2 * cfg.n_bootstrap)
        )
        final_s = per_element_s * final_elements
        projected = round_s + (check_s if will_check else 0.0) + final_s
        if rounds.n_rounds and t0 + projected > deadline:
            stop = "budget"
            break
        rounds.run_one(fns)
        t1 = time.perf_counter()
        round_s = t1 - t0
        if will_check:
            done = _check(rounds, reference, race)
            check_s = time.perf_counter() - t1
            check_total_s += check_s
            checked = rounds.n_rounds * cfg.n_bootstrap * max(n_series, 1) * 2
            # a check's fixed overhead inflates its per-number cost at few rounds; the
            # smallest estimate seen is the closest to the marginal cost the projection needs
            estimate = check_s / checked
            per_element_s = estimate if per_element_s == 0 else min(per_element_s, estimate)
            next_check = max(rounds.n_rounds + 1, int(rounds.n_rounds * 1.2))
            if done:
                stop = "ci_reached"
                break
            if len(rounds.active) == 1 and rounds.dropped:
                stop = "raced"
                break
    return _result(rounds, reference, stop, start, cfg)


def _result(
    rounds: _Rounds, reference: str | None, stop: str, start: float, cfg: TimingConfig
) -> TimingResult:
    models = {name: rounds.timing(name) for name in rounds.samples}
    ratios = {}
    if reference is not None:
        ratios = {n: paired_ratio(m, models[reference], cfg) for n, m in models.items()
                  if n != reference}  # fmt: skip
    wall = time.perf_counter() - start
    notes = []
    if wall > cfg.budget_s * 1.2:
        notes.append(
            f"one round of every model took longer than the {cfg.budget_s:g} s budget "
            f"({wall:.2f} s spent on {rounds.n_rounds} round(s)); raise the budget for a "
            "confident answer"
        )
    if stop == "budget" and rounds.n_rounds < cfg.min_rounds:
        notes.append(
            f"budget spent after {rounds.n_rounds} round(s), fewer than the {cfg.min_rounds} "
            "asked for: the CIs are wide; raise the budget"
        )
    return TimingResult(models=models, ratios=ratios, stop_reason=stop, wall_s=wall, config=cfg,
                        dropped=dict(rounds.dropped), reference=reference,
                        notes=tuple(notes))  # fmt: skip
