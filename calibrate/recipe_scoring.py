"""The cheap half of the INT8 search: calibrate once per method, then quantize every recipe
from the cached ranges and score it on the evaluation set. Only the recipes within the
accuracy budget go on to the latency race (`calibrate.latency_race`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.fallback import BUDGET_SLACK
from onnxship.calibrate.latency_race import Candidate, session
from onnxship.calibrate.ort_static import HistogramCaps, RangeOverride, quantize_with_recipe
from onnxship.calibrate.quantize_inputs import Inputs, PreparedGraph, scope_rows
from onnxship.calibrate.recipes import Recipe
from onnxship.core.errors import OnnxshipError

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (`resource`; Linux reports KiB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def calibrate_once_per_method(
    inp: Inputs, graph: PreparedGraph, recipes: Sequence[Recipe], caps: HistogramCaps
) -> list[Any]:
    """One calibration pass per method the recipes use, over the widest scope they need."""
    from onnxship.calibrate.ort_static import calibrate_ranges, calibration_scopes

    return [
        calibrate_ranges(
            graph.prepared, method, scope, inp.calib, cache_dir=graph.cache_dir, caps=caps
        )
        for method, scope in calibration_scopes(recipes).items()
    ]


def score_recipes(
    inp: Inputs,
    graph: PreparedGraph,
    recipes: Sequence[Recipe],
    *,
    searching: bool,
    caps: HistogramCaps,
    range_overrides: Sequence[RangeOverride],
    provider: str,
    progress: bool,
    fp32_score: float,
) -> list[Candidate]:
    """Quantize (from the cached ranges) and score every recipe; each scoring session is
    released before the next recipe. A failing recipe is a row with its error while
    `searching`; with one recipe named, its failure is the stage's error."""
    # below this score a candidate is outside the budget; scoring stops once it cannot reach it
    floor = fp32_score - inp.budget() - BUDGET_SLACK
    rows: list[Candidate] = []
    bar = _progress(len(recipes), progress)
    for i, recipe in enumerate(recipes):
        row = Candidate(recipe, recipe.name, graph.scratch / f"cand-{i}.onnx",
                        graph.user_rows + scope_rows(recipe, graph.nodes, graph.user_excluded))  # fmt: skip
        t0 = time.perf_counter()
        try:
            quantize_with_recipe(
                graph.prepared, row.path, recipe, inp.calib, cache_dir=graph.cache_dir,
                nodes_to_exclude=graph.user_excluded, caps=caps,
                range_overrides=range_overrides,
            )  # fmt: skip
            row.quantize_s = time.perf_counter() - t0
            # ORT's default threads: scoring is not a latency measurement
            row.val_top1, row.scored_on = inp.evalset.score_screened(
                session(row.path, provider, threads=0), floor
            )
        except OnnxshipError as exc:  # CalibrateError, or BenchError from the session
            if not searching:
                raise
            row.error = str(exc)
            log.warning("recipe %s failed: %s", recipe.name, exc)
        rows.append(row)
        bar.update(1)
    bar.close()
    if all(r.error is not None for r in rows):
        raise CalibrateError(
            f"every recipe failed to quantize {inp.src}: "
            + "; ".join(f"{r.name}: {r.error}" for r in rows)
        )
    return rows


def _progress(total: int, enabled: bool) -> Any:
    from onnxship.core.progress import progress

    return progress(total, "quantize recipes", "recipe", enabled=enabled)
