"""The INT8 selection rule (`calibrate.selection.choose_recipe`): one rule, written once, the
same accuracy-budget test in the search and in the fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxship.calibrate import fallback, quantize, selection
from onnxship.calibrate.errors import CalibrateError
from onnxship.calibrate.latency_race import FP32_ROW, Candidate, speed_score
from onnxship.calibrate.quantize import LatencyConfig, QuantizeConfig
from onnxship.calibrate.recipes import recipes_for
from onnxship.calibrate.selection import choose_recipe

RECIPE = recipes_for("auto")[0]


def _row(name: str, val_top1: float, ratios: tuple[float, float]) -> Candidate:
    row = Candidate(RECIPE, name, Path(f"{name}.onnx"), [])
    row.val_top1 = val_top1
    row.latency = {
        str(b): {"min_ratio": r, "p50_ratio": r} for b, r in zip((1, 64), ratios, strict=True)
    }
    return row


def _fp32(val_top1: float) -> Candidate:
    row = Candidate(None, FP32_ROW, Path("fp32.onnx"), [])
    row.val_top1 = val_top1
    return row


def test_choose_recipe_picks_the_fastest_within_budget() -> None:
    cfg = QuantizeConfig(max_drop=0.003, latency=LatencyConfig(batch_sizes=(1, 64)))
    rows = [
        # Faster than FP32 at both batch sizes, geometric mean 0.90.
        _row("steady", 0.990, (0.90, 0.90)),
        # Much faster at batch 1, a little slower at 64: geometric mean 0.74, the fastest
        # within the budget (0.1.0's "faster at every batch size first" key picked "steady").
        _row("uneven", 0.989, (0.50, 1.10)),
        # The fastest of all, but 0.5 pp below FP32: outside the budget.
        _row("lossy", 0.985, (0.30, 0.30)),
        # Failed to quantize: never chosen.
        _row("broken", 0.999, (0.10, 0.10)),
    ]
    rows[-1].error = "boom"
    chosen = choose_recipe(rows, _fp32(0.990), cfg)
    assert chosen.name == "uneven"
    within = [r for r in rows if r.error is None and r.name != "lossy"]
    assert chosen is min(within, key=lambda r: speed_score(r, cfg.latency))
    assert speed_score(chosen, cfg.latency) == pytest.approx((0.5 * 1.1) ** 0.5, rel=1e-9)


def test_choose_recipe_counts_a_drop_of_exactly_the_budget_as_within() -> None:
    """15 of 5,000 validation images: 0.99 - 0.987 is 0.0030000000000000027 in floats."""
    cfg = QuantizeConfig(max_drop=0.003)
    chosen = choose_recipe([_row("edge", 0.987, (0.9, 0.9))], _fp32(0.99), cfg)
    assert chosen.name == "edge"
    # The fallback's stopping test is the same function, so both agree at the boundary.
    assert fallback.within_budget(0.99, 0.987, 0.003)
    assert not fallback.within_budget(0.99, 0.9868, 0.003)
    assert selection.within_budget is fallback.within_budget


def test_choose_recipe_exits_1_naming_the_best_when_none_is_within_budget() -> None:
    cfg = QuantizeConfig(max_drop=0.001)
    with pytest.raises(CalibrateError, match=r"best found b with 0\.9850") as info:
        choose_recipe([_row("a", 0.98, (0.9, 0.9)), _row("b", 0.985, (0.9, 0.9))], _fp32(0.99), cfg)
    assert info.value.exit_code == 1


def test_quantize_module_has_one_selection_rule() -> None:
    assert not hasattr(quantize, "_choice_key")
    modules = (quantize, selection, fallback)
    source = "".join(Path(m.__file__ or "").read_text() for m in modules)
    assert source.count("<= max_drop +") == 1  # the comparison lives in within_budget only
    assert "1e-9" not in Path(quantize.__file__).read_text()
    assert "1e-9" not in Path(selection.__file__).read_text()


@pytest.mark.parametrize(
    ("metric", "fp32", "best", "says", "never"),
    [
        ("sqnr_db", 140.0, 19.96, "19.96 dB output SQNR vs FP32", " pp"),
        ("top1_agreement", 1.0, 0.95, "95.00 % top-1 agreement with FP32", "dB"),
        ("top1", 0.99, 0.98, "0.9800 val top-1, 1.00 pp below FP32", "dB"),
    ],
)
def test_no_recipe_within_budget_names_the_metric_of_the_budget(
    metric: str, fp32: float, best: float, says: str, never: str
) -> None:
    """0.1.0 wrote an SQNR shortfall as 'drop 12003.90 pp'."""
    cfg = QuantizeConfig(max_drop=0.001)
    with pytest.raises(CalibrateError) as info:
        choose_recipe([_row("b", best, (0.9, 0.9))], _fp32(fp32), cfg, budget=0.001,
                      budget_text="the budget", metric=metric)  # fmt: skip
    assert says in str(info.value) and never not in str(info.value), str(info.value)
    reason = fallback._reason({"val_top1_alone_in_float": best, "sqnr_db": 12.0}, metric)
    assert fallback.METRIC_WORDS[metric] in reason and " pp" not in reason
