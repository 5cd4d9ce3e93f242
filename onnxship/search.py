"""The `search` stage: the fastest student that keeps the accuracy, chosen by latency measured
on the target EP and by accuracy measured on this run's validation split.

1. **Screen.** Every candidate of the search space (`models.search_space`) is built with
   untrained weights, exported to ONNX (`export.onnx_export.onnx_from_module`: the TorchScript
   exporter, ~0.1 s a model, the graph the dynamo exporter gives for these layers, at the
   export stage's default opset), quantized to INT8 with the screen recipes, and timed on the
   target EP in FP32 and INT8, block-interleaved with the teacher's FP32 artifact in one run
   (the timing engine, `runtime_bench.timing.time_blocks`), at every screen batch size. A
   candidate's speed is its best precision's teacher-fp32 / candidate latency ratio at
   `rank_batch`.
2. **Race** (successive halving). The `race_size` fastest candidates trained from scratch get
   a short KD (`race_fraction` of the full recipe's epochs) and are ranked by validation top-1;
   the best `race_keep` share goes on, the rest are dropped with the number that dropped them.
   Which candidates can hold the accuracy is decided here, in this run, on validation data:
   the space only lists architectures.
3. **Train.** Fastest first, the race's survivors are trained with the full KD recipe (T,
   alpha, OneCycle SGD, +-2 px shifts on MNIST, the teacher's logits computed once) and scored
   on the *validation* split. A candidate is kept when its val top-1 is within `max_drop` of
   the teacher's; the first kept one wins (every candidate after it is slower). A candidate is
   skipped when a candidate of the same stem at least as wide already missed the budget in this
   run, and training stops when the candidate or seconds budget is spent. The pruned teacher
   (the pipeline's pruned + distilled student) is a candidate like the others; it is already
   trained, so it only needs its validation score.
4. The winner's checkpoint is written (`checkpoints/searched.pt`): the pipeline exports it to
   FP32, quantizes it (the quantize stage decides INT8 on measurement) and converts it to FP16.

Decisions use validation only; test accuracy is measured later by the eval stage, like every
artifact's. The record keeps every candidate (screened, raced, dropped, trained, kept) with the
validation numbers behind each decision, for the report and the Pareto plot.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from onnxship.core.artifact import Artifact, jsonable, sha256_file
from onnxship.errors import PipelineError

log = logging.getLogger(__name__)

STAGE = "search"
TEACHER_ROW = "teacher-fp32"
SCREEN_RECIPES = ("qdq-u8s8-perchannel-minmax", "qdq-u8s8-perchannel-minmax-linear")


@dataclass(frozen=True)
class ScreenConfig:
    """Latency screen: batch sizes, ORT intra-op threads, seconds per batch size for the
    interleaved rounds (iterations = budget / one round, clamped), INT8 recipes tried, calls
    per model per round (`block`, the first untimed)."""

    batch_sizes: tuple[int, ...] = (1, 64)
    threads: int = 1
    warmup: int = 5
    seconds_per_batch_size: float = 3.0
    min_iterations: int = 10
    max_iterations: int = 300
    int8_recipes: tuple[str, ...] = SCREEN_RECIPES
    # calls per model per round, the first untimed; the bench stage times the same way
    block: int = 4


@dataclass(frozen=True)
class SearchTrainConfig:
    """KD for a candidate trained from scratch: T=2, alpha=0.5, OneCycle SGD, +-2 px shifts
    (MNIST only), the teacher's logits on the unshifted images computed once. Batch 256 with a
    channels_last student took ~60 % of batch 128's time per epoch for the patch_cnn
    candidates (one thread, measured); the peak LR doubles with the batch."""

    epochs: float = 10.0
    batch_size: int = 256
    lr: float = 0.1
    temperature: float = 2.0
    alpha: float = 0.5
    shift: bool = True
    teacher_online: bool = False
    seed: int = 0

    def distill_config(self) -> Any:
        """This recipe as the KD trainer's config (`models.distill.DistillConfig`, OneCycle
        SGD); `shift` and `teacher_online` are the trainer's `augment` and `teacher_online`."""
        from onnxship.models.distill import DistillConfig
        from onnxship.models.loop import LrSchedule, SgdConfig

        sgd = SgdConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                        schedule=LrSchedule.ONECYCLE)  # fmt: skip
        return DistillConfig(self.temperature, self.alpha, sgd, self.seed)


@dataclass(frozen=True)
class SearchConfig:
    """space: a registered search space (`models.search_space.list_spaces()`) or "auto".
    provider: the target EP of the screen. max_drop: accuracy budget on validation top-1 vs the
    teacher (0.003 = 0.3 pp). rank_batch: the batch size candidates are ranked at.
    race_size / race_fraction / race_keep: the race (successive halving): the `race_size`
    fastest candidates trained from scratch get a KD of `race_fraction` x `train.epochs`, and
    the best `race_keep` share of them by validation top-1 (at least one) go on to the full
    recipe; 0 = no race (every candidate may be trained in full, fastest first).
    max_trained / budget_s: the search's budget, in candidates trained in full and in seconds of
    that training (no candidate is started once `budget_s` is spent; 0 = no limit).
    cache_dir: a folder of measured candidate results reused across runs (`MeasuredCache`:
    keyed on the data, the teacher, the recipe with its seed and the candidate); "" = none."""

    enabled: bool = True
    space: str = "auto"
    provider: str = "cpu"
    max_drop: float = 0.003
    rank_batch: int = 64
    race_size: int = 16
    race_fraction: float = 0.05
    race_keep: float = 0.25
    max_trained: int = 4
    budget_s: float = 45.0
    cache_dir: str = ""
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    train: SearchTrainConfig = field(default_factory=SearchTrainConfig)

    def validate(self) -> None:
        if not 0 <= self.max_drop < 1:
            raise PipelineError(
                f"search.max_drop must be a fraction in [0, 1) (0.003 = 0.3 pp), got {self.max_drop}"
            )
        if self.race_size < 0 or not 0 < self.race_fraction <= 1 or not 0 < self.race_keep <= 1:
            raise PipelineError(
                "search: race_size must be >= 0 and race_fraction, race_keep in (0, 1], got "
                f"{self.race_size}, {self.race_fraction}, {self.race_keep}; e.g. 16, 0.1, 0.5"
            )
        if self.max_trained < 0 or self.budget_s < 0:
            raise PipelineError(
                f"search.max_trained and search.budget_s must be >= 0, got {self.max_trained} "
                f"and {self.budget_s}"
            )
        if self.rank_batch not in self.screen.batch_sizes:
            raise PipelineError(
                f"search.rank_batch {self.rank_batch} is not among the screen batch sizes "
                f"{list(self.screen.batch_sizes)}; add it to search.screen.batch_sizes"
            )
        s = self.screen
        if s.threads < 0 or s.min_iterations < 1 or s.max_iterations < s.min_iterations:
            raise PipelineError(
                f"search.screen: threads >= 0 and 1 <= min_iterations <= max_iterations, got "
                f"{s.threads}, {s.min_iterations}, {s.max_iterations}"
            )
        if not self.train.epochs > 0 or self.train.batch_size < 1 or not self.train.lr > 0:
            raise PipelineError(
                "search.train: epochs, batch_size and lr must be > 0, got "
                f"{self.train.epochs}, {self.train.batch_size}, {self.train.lr}"
            )


# --------------------------------------------------------------------------------------------
# Screen


@dataclass
class ScreenRow:
    """One screened model: its ONNX files per precision and its latency per batch size."""

    name: str
    files: dict[str, Path] = field(default_factory=dict)  # precision label -> .onnx
    latency: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    error: str | None = None


def quantize_for_screen(
    fp32: Path, recipe_name: str, calib_x: np.ndarray, scratch: Path, tag: str
) -> Path:
    """Static INT8 of `fp32` with one recipe (ranges from `calib_x`): for latency only."""
    from onnxship.calibrate.calibration_data import CalibrationSet
    from onnxship.calibrate.ort_static import preprocess_model, quantize_with_recipe
    from onnxship.calibrate.recipes import parse_recipe

    prepped = scratch / f"{tag}-prep.onnx"
    if not prepped.is_file():
        preprocess_model(fp32, prepped)
    calib = CalibrationSet(calib_x, input_name="input", batch_size=32, source="screen")
    cache = scratch / f"{tag}-ranges"
    cache.mkdir(exist_ok=True)
    out = scratch / f"{tag}-{recipe_name}.onnx"
    return quantize_with_recipe(prepped, out, parse_recipe(recipe_name), calib, cache_dir=cache)


def time_interleaved(
    rows: Sequence[ScreenRow], feeds_x: np.ndarray, cfg: ScreenConfig, provider: str
) -> None:
    """Time every file of every row in block-interleaved rounds, per batch size, through the
    timing engine (`runtime_bench.timing.time_blocks`): `seconds_per_batch_size` bounds each
    batch size (the iteration floor never overrides it), models clearly slower than the best
    stop early (racing). Fills `.latency` per precision label: p50 and min (ms), the p50's CI,
    the timed calls, and the speed-up over the teacher's FP32 with its paired CI."""
    from onnxship.runtime_bench.session import SessionConfig, create_session
    from onnxship.runtime_bench.timing import TimingConfig, time_blocks

    session_cfg = SessionConfig(intra_op_threads=cfg.threads)
    sessions: dict[tuple[str, str], Any] = {}
    for row in rows:
        for label, path in row.files.items():
            sessions[(row.name, label)] = create_session(path, provider, session_cfg).session
    timed_per_round = max(cfg.block - 1, 1)
    timing = TimingConfig(
        block=cfg.block, warmup=cfg.warmup, budget_s=cfg.seconds_per_batch_size,
        min_rounds=-(-cfg.min_iterations // timed_per_round),
        max_rounds=-(-cfg.max_iterations // timed_per_round),
    )  # fmt: skip
    teacher_key = f"{TEACHER_ROW}\x00fp32"
    by_name = {r.name: r for r in rows}
    for batch in cfg.batch_sizes:
        idx = np.arange(batch) % feeds_x.shape[0]
        feed = {"input": np.ascontiguousarray(feeds_x[idx])}
        fns = {
            f"{name}\x00{label}": _runner(sess, feed) for (name, label), sess in sessions.items()
        }
        reference = teacher_key if teacher_key in fns else None
        result = time_blocks(fns, timing, reference=reference, race=reference is not None)
        for key, m in result.models.items():
            name, label = key.split("\x00")
            entry: dict[str, Any] = {
                "p50_ms": round(m.p50.value_ms or float("nan"), 5),
                "p50_ci_ms": [round(v, 5) for v in m.p50.ci_ms] if m.p50.ci_ms else None,
                "min_ms": round(m.min_ms, 5),
                "iterations": m.n_calls,
            }
            if key in result.ratios:
                ratio = result.ratios[key].to_json()
                entry["speedup_vs_teacher"] = {**ratio, "name": name, "reference": TEACHER_ROW}
            if key in result.dropped:
                entry["dropped"] = result.dropped[key]
            by_name[name].latency.setdefault(label, {})[str(batch)] = entry
        log.info("search screen batch %d: %s after %.1f s (%d rounds)", batch,
                 result.stop_reason, result.wall_s, max(m.n_rounds for m in result.models.values()))  # fmt: skip


def _runner(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    def run() -> object:
        return session.run(None, feed)

    return run


def best_precision(row: ScreenRow, batch: int, statistic: str = "min_ms") -> tuple[str, float]:
    """The precision label with the lowest latency at `batch`, and that latency."""
    options = [
        (lat[str(batch)][statistic], label)
        for label, lat in row.latency.items()
        if str(batch) in lat
    ]
    if not options:
        raise PipelineError(f"candidate {row.name} has no latency at batch {batch}")
    value, label = min(options)
    return label, value


# --------------------------------------------------------------------------------------------
# Selection (pure: tested without training)


@dataclass
class Outcome:
    """What the search did with one candidate (the record's row)."""

    name: str
    speedup: float  # teacher-fp32 latency / candidate's best precision latency at rank_batch
    status: str = "screened"  # screened | dropped | skipped | trained | kept | rejected | failed
    val_top1: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class RaceEntry:
    """One candidate's short KD in the race: its validation top-1 (None: it failed), its rank
    among the `of` raced candidates, and whether it goes on to the full recipe."""

    val_top1: float | None
    rank: int
    of: int
    kept: bool
    epochs: float
    cutoff: float | None  # the lowest validation top-1 that went on

    def to_json(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "val_top1": None if self.val_top1 is None else round(self.val_top1, 6),
            "rank": self.rank,
            "of": self.of,
            "kept": self.kept,
            "cutoff_val_top1": None if self.cutoff is None else round(self.cutoff, 6),
        }


def race(
    order: Sequence[Any],
    speedups: dict[str, float],
    short_evaluate: Callable[[Any], float | None],
    *,
    size: int,
    keep: float,
    epochs: float,
    run_all: Callable[[Sequence[Callable[[], float | None]]], list[float | None]] | None = None,
) -> dict[str, RaceEntry]:
    """Successive halving's first rung: the `size` fastest candidates trained from scratch are
    each given a short KD (`short_evaluate` returns its validation top-1, None = it failed);
    the best ceil(keep x raced) by validation top-1 (ties: the faster first) go on. Returns an
    entry per raced candidate; candidates not raced (slower, or already trained) have none.
    `run_all` runs the short KDs (default: in turn; the stage runs them side by side)."""
    from onnxship.models.search_space import PRUNED

    if size <= 0:
        return {}
    scratch = [c for c in order if c.origin != PRUNED]
    ranked = sorted(scratch, key=lambda c: -speedups[c.name])[:size]
    jobs: list[Callable[[], float | None]] = [functools.partial(short_evaluate, c) for c in ranked]
    results = run_all(jobs) if run_all is not None else [job() for job in jobs]
    scores = {c.name: v for c, v in zip(ranked, results, strict=True)}
    by_val = sorted(
        ranked, key=lambda c: (scores[c.name] is None, -(scores[c.name] or 0.0), -speedups[c.name])
    )
    n_keep = max(1, math.ceil(keep * len(ranked)))
    kept = [c.name for c in by_val[:n_keep] if scores[c.name] is not None]
    cutoff = min((v for n in kept if (v := scores[n]) is not None), default=None)
    return {
        c.name: RaceEntry(scores[c.name], i + 1, len(ranked), c.name in kept, epochs, cutoff)
        for i, c in enumerate(by_val)
    }


def _race_reason(entry: RaceEntry, n_kept: int) -> str:
    if entry.val_top1 is None:
        return f"short KD ({entry.epochs:g} epochs) failed; dropped from the race"
    cutoff = "" if entry.cutoff is None else f", cutoff {100 * entry.cutoff:.2f} %"
    return (
        f"race: val {100 * entry.val_top1:.2f} % after a {entry.epochs:g}-epoch KD, rank "
        f"{entry.rank} of {entry.of}; the best {n_kept} went on{cutoff}"
    )


def select(
    order: Sequence[Any],
    speedups: dict[str, float],
    evaluate: Callable[[Any], float | None],
    *,
    teacher_val: float,
    max_drop: float,
    max_trained: int,
    budget_s: float,
    raced: dict[str, RaceEntry] | None = None,
    measured: Callable[[Any], bool] = lambda cand: False,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[Any | None, dict[str, Outcome]]:
    """Walk candidates fastest first; return (winner or None, outcome per candidate).

    `evaluate(candidate)` trains it if needed and returns its validation top-1 (None = it
    failed). Within budget: `teacher_val - val <= max_drop` (+1e-9 so a drop of exactly the
    budget counts). Candidates of origin PRUNED are already trained and never count against
    `max_trained`. With `raced` (the race's entries; see `race`), a candidate trained from
    scratch is trained in full only when it went on from the race. A candidate already
    `measured` (trained ahead, beside another) is scored even when a budget is spent since.
    """
    from onnxship.models.search_space import PRUNED

    ranked = sorted(order, key=lambda c: -speedups[c.name])
    outcomes = {c.name: Outcome(c.name, speedups[c.name]) for c in ranked}
    n_kept = sum(e.kept for e in (raced or {}).values())
    failed: list[Any] = []
    trained = 0
    start = clock()
    winner = None
    for cand in ranked:
        out = outcomes[cand.name]
        if winner is not None:
            out.status, out.reason = "screened", f"slower than the winner {winner.name}"
            continue
        if raced is not None and cand.origin != PRUNED:
            entry = raced.get(cand.name)
            if entry is None:
                out.status = "screened"
                out.reason = f"not raced: slower than the {len(raced)} raced candidates"
                continue
            if not entry.kept:
                out.status, out.val_top1 = "dropped", None
                out.reason = _race_reason(entry, n_kept)
                continue
        blocker = next((f for f in failed if f.dominates(cand)), None)
        if blocker is not None:
            out.status = "skipped"
            missed = outcomes[blocker.name].val_top1
            number = "failed" if missed is None else f"reached val {100 * missed:.2f} %"
            out.reason = (
                f"{blocker.name} (same stem, as wide or wider) {number} in this run, outside "
                "the budget"
            )
            continue
        if cand.origin != PRUNED:
            if not measured(cand) and trained >= max_trained:
                out.status, out.reason = "screened", f"candidate budget spent ({max_trained})"
                continue
            if not measured(cand) and budget_s and clock() - start >= budget_s:
                out.status, out.reason = "screened", f"time budget spent ({budget_s:g} s)"
                continue
            trained += 1
        val = evaluate(cand)
        out.val_top1 = val
        if val is None:
            out.status, out.reason = "failed", "training or evaluation failed"
            failed.append(cand)
            continue
        drop = teacher_val - val
        if drop <= max_drop + 1e-9:
            out.status = "kept"
            out.reason = f"val drop {100 * drop:.2f} pp <= {100 * max_drop:.2f} pp"
            winner = cand
        else:
            out.status = "rejected"
            out.reason = f"val drop {100 * drop:.2f} pp > {100 * max_drop:.2f} pp"
            failed.append(cand)
    return winner, outcomes


class PairedTraining:
    """The full KD of the race's survivors, two at a time: when the search asks for a
    candidate, the next survivor in speed order (`queue`, fastest first) trains beside it, one
    core each, so that a second training, needed when the first misses the budget, costs no
    extra wall time. Never more than `max_trained` trainings; results are memoised."""

    def __init__(
        self,
        queue: Sequence[Any],
        train: Callable[[Any], float | None],
        max_trained: int,
        run_all: Callable[[Sequence[Callable[[], float | None]]], list[float | None]],
    ) -> None:
        self.queue, self.train, self.max_trained, self.run_all = (
            list(queue),
            train,
            max_trained,
            run_all,
        )
        self.done: dict[str, float | None] = {}
        self.beside: dict[str, str] = {}  # candidate trained ahead -> the one it trained beside

    def __call__(self, cand: Any) -> float | None:
        if cand.name in self.done:
            return self.done[cand.name]
        pair = [cand]
        names = [c.name for c in self.queue]
        if cand.name in names and len(self.done) + 2 <= self.max_trained:
            later = [c for c in self.queue[names.index(cand.name) + 1 :] if c.name not in self.done]
            if later:
                pair.append(later[0])
                self.beside[later[0].name] = cand.name
        jobs: list[Callable[[], float | None]] = [functools.partial(self.train, c) for c in pair]
        results = self.run_all(jobs)
        self.done.update({c.name: v for c, v in zip(pair, results, strict=True)})
        return self.done[cand.name]


# --------------------------------------------------------------------------------------------
# The stage


@dataclass(frozen=True)
class MeasuredCache:
    """Measured results of candidates trained from scratch (validation top-1, train stats,
    weights), reused across runs. The key is the sha256 of the data (`data_sha256`: the fit
    and val tensors), the teacher's checkpoint (`teacher_sha256`), the training recipe with
    its seed, and the candidate (architecture, widths): when any of them changes the candidate
    is measured again. One `KEY.json` + `KEY.pt` pair per measurement under `folder`."""

    folder: Path
    data_sha256: str
    teacher_sha256: str

    def key(self, cand: Any, recipe: SearchTrainConfig) -> str:
        import hashlib
        import json

        what = {"data_sha256": self.data_sha256, "teacher_sha256": self.teacher_sha256,
                "recipe": jsonable(recipe), "candidate": cand.to_json()}  # fmt: skip
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()

    def load(self, key: str, model: Any) -> dict[str, Any] | None:
        """The record under `key` with its weights loaded into `model` (eval mode), or None
        (not measured yet, or unreadable: then it is measured again)."""
        import json

        import torch

        record, weights = self.folder / f"{key}.json", self.folder / f"{key}.pt"
        if not (record.is_file() and weights.is_file()):
            return None
        try:
            entry = json.loads(record.read_text())
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except Exception as exc:  # a broken entry costs a measurement, never the search
            log.warning("search cache: entry %s unreadable (%s); measuring again", key, exc)
            return None
        model.eval()
        return dict(entry)

    def store(self, key: str, model: Any, entry: dict[str, Any]) -> None:
        import json

        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        record = {**entry, "key": key, "data_sha256": self.data_sha256,
                  "teacher_sha256": self.teacher_sha256}  # fmt: skip
        # weights first, the record last: a record on disk means its weights are complete
        tmp = self.folder / f".{key}.pt.{os.getpid()}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.folder / f"{key}.pt")
        tmp = self.folder / f".{key}.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, self.folder / f"{key}.json")


def data_sha256(*splits: Any) -> str:
    """One sha256 over the tensors (x and y) of the given splits."""
    import hashlib

    digest = hashlib.sha256()
    for split in splits:
        for tensor in (split.x, split.y):
            array = tensor.contiguous().numpy()
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


class CandidateTrainer:
    """KD of search candidates from one teacher on one data split: builds a candidate with
    seeded weights, trains it (`models.distill.distill_student`, the distill stage's KD
    trainer) and scores it on validation, or takes both from `cache` when this data, teacher,
    recipe and candidate were measured before. Safe to call from two threads at once
    (`models.loop.side_by_side`): the seeded build is locked, the rest is the candidate's own."""

    def __init__(
        self,
        teacher: Any,
        fit: Any,
        val: Any,
        logits: Any,
        pruned: Any,
        progress: bool,
        cache: MeasuredCache | None = None,
    ) -> None:
        self.teacher, self.fit, self.val, self.logits = teacher, fit, val, logits
        self.pruned, self.progress, self.cache = pruned, progress, cache
        self.models: dict[str, Any] = {}
        self._init_lock = threading.Lock()

    def val_after(self, cand: Any, recipe: SearchTrainConfig, log_to: dict[str, Any]) -> float:
        import torch

        from onnxship.models.distill import distill_student
        from onnxship.models.evaluate import top1
        from onnxship.models.train import shift_batch

        t = time.perf_counter()
        with self._init_lock:  # seeded initial weights, also when candidates train side by side
            torch.manual_seed(recipe.seed)
            model = cand.build()
        key = self.cache.key(cand, recipe) if self.cache is not None else None
        hit = self.cache.load(key, model) if self.cache is not None and key else None
        if hit is not None:
            acc, stats = hit["val_top1"], hit
        else:
            stats = distill_student(
                model, self.teacher, self.fit.x, self.fit.y, recipe.distill_config(),
                cached_logits=self.logits, augment=shift_batch if recipe.shift else None,
                teacher_online=recipe.teacher_online, desc="search KD", progress=self.progress,
            )  # fmt: skip
            model.eval()
            acc = top1(model, self.val.x, self.val.y)
            if self.cache is not None and key:
                self.cache.store(key, model, {"val_top1": acc, "final_loss": stats["final_loss"],
                                              "steps": stats["steps"], "candidate": cand.to_json(),
                                              "recipe": jsonable(recipe)})  # fmt: skip
        log_to[cand.name] = {"final_loss": stats["final_loss"], "steps": stats["steps"],
                             "wall_s": round(time.perf_counter() - t, 2)}  # fmt: skip
        if key:
            log_to[cand.name]["cache"] = {"hit": hit is not None, "key": key}
        self.models[cand.name] = model
        return acc

    def pruned_val(self, name: str) -> float:
        from onnxship.models.evaluate import top1

        self.pruned.eval()
        self.models[name] = self.pruned
        return top1(self.pruned, self.val.x, self.val.y)


@dataclass
class Decided:
    """What the race and the selection decided, with the numbers behind it."""

    winner: Any
    outcomes: dict[str, Outcome]
    raced: dict[str, RaceEntry] | None
    race_s: float
    race_log: dict[str, Any]
    train_log: dict[str, dict[str, Any]]
    paired: PairedTraining


def race_and_select(
    screened: Sequence[Any],
    speedups: dict[str, float],
    cfg: SearchConfig,
    train_cfg: SearchTrainConfig,
    trainer: CandidateTrainer,
    teacher_val: float,
) -> Decided:
    """The race (a short KD for the fastest, ranked on validation), then the full KD of its
    survivors fastest first, two at a time, until one holds the budget (`select`)."""
    from onnxship.models.loop import side_by_side
    from onnxship.models.search_space import PRUNED

    race_cfg = replace(train_cfg, epochs=train_cfg.epochs * cfg.race_fraction)
    race_log: dict[str, Any] = {}
    train_log: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    raced = race(
        screened, speedups, lambda c: trainer.val_after(c, race_cfg, race_log),
        size=cfg.race_size, keep=cfg.race_keep, epochs=round(race_cfg.epochs, 4),
        run_all=side_by_side,
    ) if cfg.race_size else None  # fmt: skip
    race_s = time.perf_counter() - t0
    survivors = [c for c in sorted(screened, key=lambda c: -speedups[c.name])
                 if c.origin != PRUNED and (raced is None or (c.name in raced and raced[c.name].kept))]  # fmt: skip
    paired = PairedTraining(survivors, lambda c: trainer.val_after(c, train_cfg, train_log),
                            cfg.max_trained, side_by_side)  # fmt: skip

    def evaluate(cand: Any) -> float | None:
        return paired(cand) if cand.origin != PRUNED else trainer.pruned_val(cand.name)

    winner, outcomes = select(
        screened, speedups, evaluate, teacher_val=teacher_val, max_drop=cfg.max_drop,
        max_trained=cfg.max_trained, budget_s=cfg.budget_s, raced=raced,
        measured=lambda c: c.name in paired.done,
    )  # fmt: skip
    return Decided(winner, outcomes, raced, race_s, race_log, train_log, paired)


def screen_candidates(
    cands: Sequence[Any],
    pruned: Any,
    teacher_onnx: Path,
    cfg: SearchConfig,
    input_shape: tuple[int, ...],
    calib_x: np.ndarray,
    feeds_x: np.ndarray,
    provider: str,
) -> tuple[list[ScreenRow], dict[str, Any]]:
    """Export every candidate (untrained; the pruned teacher with its weights), quantize it
    with the screen recipes and time all of them with the teacher in one interleaved run.
    Returns the rows (the teacher's first) and the untrained model per candidate name."""
    import torch

    from onnxship.export.onnx_export import onnx_from_module
    from onnxship.models.search_space import PRUNED

    rows: list[ScreenRow] = [ScreenRow(TEACHER_ROW, {"fp32": teacher_onnx})]
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="onnxship-search-") as scratch_name:
        scratch = Path(scratch_name)
        for i, cand in enumerate(cands):
            row = ScreenRow(cand.name)
            torch.manual_seed(cfg.train.seed)
            model = pruned if cand.origin == PRUNED else cand.build()
            models[cand.name] = model
            try:
                fp32 = onnx_from_module(model, scratch / f"c{i}.onnx", input_shape)
                row.files["fp32"] = fp32
                for recipe in cfg.screen.int8_recipes:
                    row.files[f"int8:{recipe}"] = quantize_for_screen(
                        fp32, recipe, calib_x, scratch, f"c{i}"
                    )
            except Exception as exc:  # one broken candidate must not end the search
                row.error = f"{type(exc).__name__}: {exc}"
                row.files.clear()
                log.warning("search: candidate %s could not be screened: %s", cand.name, exc)
            rows.append(row)
        timed = [r for r in rows if r.files]
        time_interleaved(timed, feeds_x, cfg.screen, provider)
    return rows, models


def candidate_table(
    cands: Sequence[Any],
    rows: Sequence[ScreenRow],
    models: dict[str, Any],
    outcomes: dict[str, Outcome],
    teacher_ms: dict[int, float],
    rank: int,
    input_shape: tuple[int, ...],
    pruned_val: Callable[[], float],
    decided: Decided,
) -> list[dict[str, Any]]:
    """The record's row per candidate: what the search did with it and why (with the
    validation numbers behind each decision), its MACs, and its screen latencies."""
    from onnxship.models.flops import count_macs, count_params
    from onnxship.models.search_space import PRUNED

    raced, race_log, train_log, paired = (
        decided.raced,
        decided.race_log,
        decided.train_log,
        decided.paired,
    )
    table = []
    for cand, row in zip(cands, rows[1:], strict=True):
        out = outcomes[cand.name]
        model = models[cand.name]
        entry: dict[str, Any] = {
            **cand.to_json(),
            "status": out.status,
            "reason": out.reason,
            "val_top1": out.val_top1,
            "speedup_vs_teacher_fp32": None if math.isnan(out.speedup) else round(out.speedup, 3),
            "macs": count_macs(model, (1, *input_shape)),
            "params": count_params(model),
            "latency": row.latency,
            "ratios_vs_teacher_fp32": {
                label: {b: round(teacher_ms[int(b)] / v["min_ms"], 3) for b, v in lat.items()}
                for label, lat in row.latency.items()
            },
        }
        if cand.origin == PRUNED and out.val_top1 is None:
            # The pruned teacher is trained already: its validation score costs one pass.
            entry["val_top1"], entry["val_from"] = round(pruned_val(), 6), "pruned + distilled"
        if row.files:
            entry["best_precision"] = best_precision(row, rank)[0]
        if raced and cand.name in raced:
            entry["race"] = {**raced[cand.name].to_json(), **race_log.get(cand.name, {})}
        if cand.name in train_log:
            entry["train"] = train_log[cand.name]
            if cand.name in paired.beside:
                entry["train"]["side_by_side_with"] = paired.beside[cand.name]
            if out.val_top1 is None and cand.name in paired.done:
                # trained ahead beside a faster candidate that then won: measured, not needed
                entry["val_top1_unused"] = paired.done[cand.name]
        table.append(entry)
    return table


def teacher_info(meta: Any) -> Any:
    """What a search space sees of the teacher: its registry architecture and widths, or its
    user factory ("module:function", kwargs, and a builder that imports it from the config
    folder), with the task: "mnist" for the built-in data, else "custom"."""
    from onnxship.models.registry import ModelFactory
    from onnxship.models.search_space import TeacherInfo

    task = "mnist" if meta.data is None or meta.data.get("kind", "mnist") == "mnist" else "custom"
    factory = meta.factory
    if factory is None:
        return TeacherInfo(meta.arch, meta.widths, task=task)

    def build(**kwargs: Any) -> Any:
        return ModelFactory(factory.factory, kwargs, factory.search_path).build()

    return TeacherInfo(factory.factory, dict(factory.kwargs), task=task, build=build)


def _winner_factory(winner: Any, teacher_meta: Any, pruned_meta: Any) -> Any:
    from onnxship.models.registry import ModelFactory
    from onnxship.models.search_space import PRUNED

    if winner.origin == PRUNED:
        return pruned_meta.factory
    if teacher_meta.factory is None or winner.arch != teacher_meta.factory.factory:
        return None  # a registry architecture: rebuilt from its name and widths
    return ModelFactory(winner.arch, winner.widths, teacher_meta.factory.search_path)


def _widths_of(model: Any) -> dict[str, Any]:
    widths = getattr(model, "widths", None)
    return dict(widths()) if callable(widths) else {}


@dataclass
class _SearchInputs:
    """What the search starts from: both checkpoints, the candidates, the data splits and
    the teacher's validation top-1 (the budget's reference)."""

    teacher: Any
    teacher_meta: Any
    pruned: Any
    pruned_meta: Any
    info: Any  # models.search_space.TeacherInfo
    cands: list[Any]
    fit: Any
    val: Any
    input_shape: tuple[int, ...]
    teacher_val: float


def _load_search_inputs(
    teacher_ckpt: str | os.PathLike[str],
    pruned_ckpt: str | os.PathLike[str],
    cfg: SearchConfig,
    data: Any,
    data_dir: str | os.PathLike[str] | None,
    candidates: Sequence[Any] | None,
) -> _SearchInputs:
    import torch

    from onnxship.models.checkpoint import load_checkpoint
    from onnxship.models.evaluate import top1
    from onnxship.models.search_space import space_candidates
    from onnxship.models.training_data import DataConfig, open_data

    teacher, teacher_meta = load_checkpoint(teacher_ckpt)
    pruned, pruned_meta = load_checkpoint(pruned_ckpt)
    info = teacher_info(teacher_meta)
    cands = list(candidates) if candidates is not None else space_candidates(cfg.space, info)
    recorded = teacher_meta.data
    splits = open_data(data or (DataConfig.from_json(recorded) if recorded else None), data_dir)
    fit, val = splits.split("fit"), splits.split("val")
    if fit.x.ndim == 4:
        # channels_last: the teacher's logits on the fit split took 7 s contiguous vs ~2 s
        # (2 cores, measured); the KD trainer converts it anyway. Checkpoints are not touched.
        teacher.to(memory_format=torch.channels_last)
    return _SearchInputs(
        teacher, teacher_meta, pruned, pruned_meta, info, cands, fit, val,
        tuple(teacher_meta.input_shape), top1(teacher, val.x, val.y),
    )  # fmt: skip


def _speedups(
    cands: Sequence[Any], rows: Sequence[ScreenRow], cfg: SearchConfig
) -> tuple[dict[int, float], list[Any], dict[str, float]]:
    """(the teacher's FP32 latency per batch size, the candidates screened, each one's
    speed-up over the teacher at `rank_batch` in its best precision)."""
    rank = cfg.rank_batch
    teacher_ms = {b: rows[0].latency["fp32"][str(b)]["min_ms"] for b in cfg.screen.batch_sizes}
    screened = [c for c, r in zip(cands, rows[1:], strict=True) if r.files]
    speedups = {c.name: teacher_ms[rank] / best_precision(r, rank)[1]
                for c, r in zip(cands, rows[1:], strict=True) if r.files}  # fmt: skip
    return teacher_ms, screened, speedups


def _winner(
    decided: Decided, cands: Sequence[Any], rows: Sequence[ScreenRow], trainer: CandidateTrainer
) -> tuple[Any, Any]:
    """(the winning candidate, its trained model): the selection's, else the pruned teacher
    (already in the bundle), which then ships again. Candidates that failed the screen get
    their outcome here."""
    from onnxship.models.search_space import PRUNED

    winner, outcomes = decided.winner, decided.outcomes
    for c, r in zip(cands, rows[1:], strict=True):
        if not r.files:
            outcomes[c.name] = Outcome(c.name, float("nan"), "failed", None, r.error or "")
    if winner is None:
        winner = next(c for c in cands if c.origin == PRUNED)
        outcomes[winner.name].reason += "; no candidate within budget: the pruned teacher ships"
        trainer.models.setdefault(winner.name, trainer.pruned)
    return winner, trainer.models[winner.name]


def _search_metrics(
    inputs: _SearchInputs,
    cfg: SearchConfig,
    train_cfg: SearchTrainConfig,
    decided: Decided,
    winner: Any,
    best: Any,
    measured: dict[str, Any],
) -> dict[str, Any]:
    """The search record: the winner, the budget and its reference, the race, the recipe,
    the screen's conditions, every candidate's row (`measured["table"]`) and wall times
    (since `measured["started"]`, the screen's `measured["screen_s"]`)."""
    from onnxship.core.env import cpu_model_name, isa_summary
    from onnxship.models.loop import process_cpu_s
    from onnxship.models.search_space import PRUNED

    raced, provider = decided.raced, measured["provider"]
    return {
        "winner": winner.name,
        "winner_arch": winner.arch if winner.origin != PRUNED else inputs.pruned_meta.arch,
        "winner_widths": winner.widths if winner.origin != PRUNED else _widths_of(best),
        "winner_origin": winner.origin,
        "winner_val_top1": decided.outcomes[winner.name].val_top1,
        "teacher_val_top1": round(inputs.teacher_val, 6),
        "max_drop": cfg.max_drop,
        "decided_on": "val",
        "race": None
        if raced is None
        else {
            "size": cfg.race_size,
            "epochs": round(train_cfg.epochs * cfg.race_fraction, 4),
            "keep": cfg.race_keep,
            "raced": len(raced),
            "went_on": sum(e.kept for e in raced.values()),
            "wall_s": round(decided.race_s, 2),
        },
        "train_recipe": jsonable(train_cfg),
        "rank_batch": cfg.rank_batch,
        "statistic": "min",
        "provider": provider,
        "threads": cfg.screen.threads,
        "teacher_latency_ms": measured["teacher_latency_ms"],
        "candidates": measured["table"],
        "screen_wall_s": round(measured["screen_s"], 2),
        "search_wall_s": round(time.perf_counter() - measured["started"], 2),
        "search_cpu_s": round(process_cpu_s() - measured["cpu_started"], 2),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "target": {"provider": provider, "cpu": cpu_model_name(), "isa": isa_summary()},
    }


def searched_from_checkpoints(
    teacher_ckpt: str | os.PathLike[str],
    pruned_ckpt: str | os.PathLike[str],
    teacher_onnx: str | os.PathLike[str],
    cfg: SearchConfig,
    out_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    data: Any = None,
    progress: bool = False,
    candidates: Sequence[Any] | None = None,
) -> Artifact:
    """Screen, train, select (see the module docstring); write the winner's checkpoint.

    `pruned_ckpt` is the pipeline's pruned + distilled student (the PRUNED candidate);
    `teacher_onnx` the teacher's FP32 artifact (the latency reference). The data is `data` (a
    `models.training_data.DataConfig`), else the one the teacher's checkpoint records, else MNIST under
    `data_dir`. A teacher built by a user's factory searches the width multipliers of that
    factory's keyword arguments (`models.search_space.width_multipliers`) unless `cfg.space`
    names another space. `candidates` overrides the space (tests)."""
    from onnxship.models.checkpoint import save_checkpoint
    from onnxship.models.distill import teacher_logits
    from onnxship.models.evaluate import top1
    from onnxship.models.loop import process_cpu_s
    from onnxship.runtime_bench.session import check_provider_available

    cfg.validate()
    started, cpu_started = time.perf_counter(), process_cpu_s()
    provider = check_provider_available(cfg.provider)
    inputs = _load_search_inputs(teacher_ckpt, pruned_ckpt, cfg, data, data_dir, candidates)
    cands, pruned, val = inputs.cands, inputs.pruned, inputs.val

    # 1. Screen: untrained weights (the pruned teacher with its own), interleaved with the teacher.
    t0 = time.perf_counter()
    rows, models = screen_candidates(
        cands, pruned, Path(teacher_onnx), cfg, inputs.input_shape, val.x[:64].numpy(),
        val.x[:256].numpy(), provider,
    )  # fmt: skip
    screen_s = time.perf_counter() - t0
    teacher_ms, screened, speedups = _speedups(cands, rows, cfg)

    # 2. Race (short KD, ranked on validation), 3. train the survivors fastest first.
    # The +-2 px shifts are the MNIST recipe; a user's data gets none (as in distill), since
    # what a shift means depends on the data (8x8 digits, spectrograms, tabular rows...).
    train_cfg = cfg.train if inputs.info.task == "mnist" else replace(cfg.train, shift=False)
    fit_x = inputs.fit.x
    logits = None if train_cfg.teacher_online else teacher_logits(inputs.teacher, fit_x)
    cache = None
    if cfg.cache_dir:
        cache = MeasuredCache(Path(cfg.cache_dir), data_sha256(inputs.fit, val),
                              sha256_file(teacher_ckpt))  # fmt: skip
    trainer = CandidateTrainer(inputs.teacher, inputs.fit, val, logits, pruned, progress, cache)
    decided = race_and_select(screened, speedups, cfg, train_cfg, trainer, inputs.teacher_val)
    winner, best = _winner(decided, cands, rows, trainer)

    table = candidate_table(
        cands, rows, models, decided.outcomes, teacher_ms, cfg.rank_batch, inputs.input_shape,
        lambda: top1(pruned, val.x, val.y), decided,
    )  # fmt: skip
    measured = {"provider": provider, "teacher_latency_ms": rows[0].latency["fp32"],
                "table": table, "screen_s": screen_s, "started": started,
                "cpu_started": cpu_started}  # fmt: skip
    metrics = _search_metrics(inputs, cfg, train_cfg, decided, winner, best, measured)
    log.info("search: winner %s (val %.4f)", winner.name, metrics["winner_val_top1"] or 0)
    teacher_meta = inputs.teacher_meta
    return save_checkpoint(
        best,
        out_path,
        stage=STAGE,
        seed=cfg.train.seed,
        metrics=metrics,
        parent_sha256=sha256_file(teacher_ckpt),
        config=jsonable(cfg),
        extra={"teacher": os.fspath(teacher_ckpt)},
        # dataset, data source and normalisation of the teacher; a user's factory with the
        # winner's keyword arguments (the pruned teacher keeps its own, with its shapes)
        like=teacher_meta,
        factory=_winner_factory(winner, teacher_meta, inputs.pruned_meta),
    )
