"""The INT8 selection rule, written once: among the candidates within the accuracy budget
(`calibrate.fallback.within_budget`, the same test the fallback stops on), the fastest by
`calibrate.latency_race.speed_score`. The settings are
`calibrate.quantize_config.QuantizeConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.fallback import METRIC_WORDS, drop_text, score_text, within_budget
from onnxship.calibrate.latency_race import Candidate, speed_score
from onnxship.calibrate.quantize_config import QuantizeConfig
from onnxship.calibrate.quantize_inputs import Inputs


def choose_recipe(
    rows: Sequence[Candidate],
    fp32: Candidate,
    cfg: QuantizeConfig,
    *,
    src: Path | None = None,
    fallback_ran: bool = False,
    budget: float | None = None,
    budget_text: str | None = None,
    metric: str = "top1",
) -> Candidate:
    """The one selection rule: among the candidates within the accuracy budget
    (`within_budget`: FP32 val top-1 minus the candidate's is at most `max_drop`), the fastest,
    i.e. the lowest `speed_score` (geometric mean over the batch sizes of its latency ratio
    to FP32); the first in table order on a tie.

    `budget` replaces `cfg.max_drop` when the score is not top-1 (fidelity without labels:
    `EvaluationSet.drop_budget`); `budget_text` then says what it means and `metric` (a
    `BudgetMetric` value) names the score in the message.
    Raises CalibrateError (exit 1) when no candidate is within the budget.
    """
    budget = cfg.max_drop if budget is None else budget
    within = within_rows(rows, fp32, cfg, budget)
    if within:
        return min(within, key=lambda r: speed_score(r, cfg.latency))
    fp32_top1 = float(fp32.val_top1 or 0.0)
    scored = [r for r in rows if r.val_top1 is not None and r.error is None]
    best = max(scored, key=lambda r: r.val_top1 or 0.0) if scored else None
    found = (
        f"best found {best.name} with {drop_text(metric, fp32_top1, best.val_top1 or 0.0)}"
        if best is not None
        else "no candidate was scored"
    )
    raise CalibrateError(
        f"no INT8 recipe for {src} is within the accuracy budget of "
        f"{budget_text or f'{cfg.max_drop * 100:.2f} pp of val top-1'}: FP32 "
        f"{score_text(metric, fp32_top1)}, {found} after trying "
        f"{len(rows)} candidates{' and the float fallback' if fallback_ran else ''}; "
        "raise --max-drop, calibrate with more data (--calib-size) or exclude "
        "sensitive nodes",
        exit_code=1,
    )


def within_rows(
    rows: Sequence[Candidate], fp32: Candidate, cfg: QuantizeConfig, budget: float | None = None
) -> list[Candidate]:
    """Rows within the accuracy budget and timed at every batch size FP32 was: the ones the
    selection rule chooses from."""
    fp32_top1 = float(fp32.val_top1 or 0.0)
    budget = cfg.max_drop if budget is None else budget
    timed = set(fp32.latency)  # every row must be timed at every batch size FP32 was
    return [
        r
        for r in rows
        if r.error is None
        and r.latency
        and set(r.latency) >= timed
        and within_budget(fp32_top1, r.val_top1, budget)
    ]


def budget_text(inp: Inputs) -> str:
    """The budget in its metric's words: dB for SQNR, % for agreement, pp for top-1."""
    metric = inp.metric
    if metric == "sqnr_db":
        return f"{inp.min_sqnr_db:.1f} dB output SQNR vs FP32 (on {inp.evalset.source})"
    if metric == "top1_agreement":
        return f"{(1 - inp.max_drop) * 100:.2f} % {METRIC_WORDS[metric]} (on {inp.evalset.source})"
    return f"{inp.max_drop * 100:.2f} pp of {METRIC_WORDS[metric]} (on {inp.evalset.source})"


def within_budget_rows(
    rows: Sequence[Candidate], fp32: Candidate, budget: float
) -> list[Candidate]:
    """Scored rows within the accuracy budget (timed or not)."""
    fp32_top1 = float(fp32.val_top1 or 0.0)
    return [r for r in rows if r.error is None and within_budget(fp32_top1, r.val_top1, budget)]
