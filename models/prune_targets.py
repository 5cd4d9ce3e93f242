"""Pruning targets solved to widths: width ratios, or a MACs budget (a fraction of the source's
MACs) turned into widths by proportional shrinking and then a greedy fill of what is left of
the budget; an iterative schedule's intermediate widths (`step_widths`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import nn

from onnxship.models.errors import ModelsError
from onnxship.models.flops import count_macs
from onnxship.models.prune_channels import arch_of, layer_label, prune_spec, widths_of
from onnxship.models.prune_config import check_open_unit  # declared torch-free there
from onnxship.models.registry import create_model


def macs_of_widths(arch: str, widths: Mapping[str, int]) -> int:
    return count_macs(create_model(arch, **dict(widths)))


def widths_for_ratios(model: nn.Module, ratios: float | Mapping[str, float]) -> dict[str, int]:
    """Target widths keeping `ratio` of each width (rounded half up)."""
    arch = arch_of(model)
    widths = widths_of(model)
    names = [g.width for g in prune_spec(arch)]
    if isinstance(ratios, Mapping):
        unknown = sorted(set(ratios) - set(names))
        if unknown:
            raise ModelsError(
                f"unknown width(s) {', '.join(unknown)} for {arch}; its widths are "
                f"{', '.join(names)}"
            )
        per_width = {str(k): float(v) for k, v in ratios.items()}
    else:
        per_width = {name: float(ratios) for name in names}
    target = dict(widths)
    for group in prune_spec(arch):
        if group.width not in per_width:
            continue
        ratio = per_width[group.width]
        check_open_unit(ratio, f"width ratio {group.width}", "the fraction of the width to keep")
        new = math.floor(ratio * widths[group.width] + 0.5)
        if new < 1:
            raise ModelsError(
                f"width ratio {ratio} would remove every channel of {layer_label(group)} "
                f"({widths[group.width]} * {ratio} rounds to 0); pass a ratio >= "
                f"{0.5 / widths[group.width]:.4g}"
            )
        target[group.width] = new
    return target


def widths_for_macs_budget(model: nn.Module, budget: float) -> dict[str, int]:
    """The widths of a model with MACs <= budget * MACs(model).

    Proportional shrinking first: the largest scale s with floor(s * w) for every width under
    the budget (MACs grow monotonically in s, so a bisection over the candidate scales k / w
    finds it). Then a greedy fill: the width furthest below its original (relative) grows by
    one while the budget allows, until no width can grow.
    """
    check_open_unit(budget, "MACs budget", "a fraction of the source model's MACs")
    arch = arch_of(model)
    widths = widths_of(model)
    groups = prune_spec(arch)
    names = [g.width for g in groups]
    macs_src = count_macs(model)
    limit = budget * macs_src

    def at(scale: float) -> dict[str, int]:
        out = dict(widths)
        for n in names:
            out[n] = math.floor(scale * widths[n] + 1e-9)
        return out

    candidates = sorted({k / widths[n] for n in names for k in range(1, widths[n] + 1)})
    s_min = max(1 / widths[n] for n in names)  # smallest scale with every width >= 1
    candidates = [s for s in candidates if s >= s_min - 1e-12]
    smallest = at(candidates[0])
    smallest_macs = macs_of_widths(arch, smallest)
    if smallest_macs > limit:
        first_to_vanish = max(groups, key=lambda g: 1 / widths[g.width])
        raise ModelsError(
            f"a MACs budget of {budget} ({limit:,.0f} of {macs_src:,} MACs) would remove every "
            f"channel of {layer_label(first_to_vanish)}: the smallest proportional {arch} "
            f"{smallest} already costs {smallest_macs:,} MACs; pass a budget >= "
            f"{smallest_macs / macs_src:.4f} or explicit width ratios"
        )
    lo, hi = 0, len(candidates) - 1  # invariant: candidates[lo] fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if macs_of_widths(arch, at(candidates[mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    target = at(candidates[lo])
    while True:
        growable = sorted(
            (n for n in names if target[n] < widths[n]),
            key=lambda n: (target[n] / widths[n], names.index(n)),
        )
        for n in growable:
            trial = dict(target, **{n: target[n] + 1})
            if macs_of_widths(arch, trial) <= limit:
                target = trial
                break
        else:
            return target


def step_widths(
    start: Mapping[str, int], goal: Mapping[str, int], k: int, steps: int
) -> dict[str, int]:
    """Geometric interpolation from start to goal; step `steps` is exactly `goal`."""
    if k >= steps:
        return dict(goal)
    out = {}
    for n, w0 in start.items():
        w1 = goal[n]
        out[n] = max(w1, min(w0, round(w0 * (w1 / w0) ** (k / steps))))
    return out
