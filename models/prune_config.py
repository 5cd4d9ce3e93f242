"""What the `prune` stage does (`PruneConfig`) and the enums it names, torch-free: the CLI builds
`onnxship prune`'s flags from it without importing torch. The stage and its algorithms are
`models.prune` and the modules it names; all these names are importable from there too.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onnxship.core.flags import flag, non_negative_int, number, parse_ratios, positive_int
from onnxship.models.errors import ModelsError
from onnxship.models.sgd_config import SgdConfig

DEFAULT_MACS_BUDGET = 0.1  # the default target: a student with <= 10 % of the teacher's MACs
DEFAULT_SPARSITY = 0.8  # unstructured default when neither sparsity nor threshold is given


class PruneMethod(enum.Enum):
    STRUCTURED = "structured"  # remove channels / units: a dense, smaller model (default)
    UNSTRUCTURED = "unstructured"  # zero single weights: same shapes, smaller gzip download


class Importance(enum.Enum):
    """The norm that ranks channels in structured pruning (`models.prune_channels`)."""

    L1 = "l1"
    L2 = "l2"


class PruneScope(enum.Enum):
    """Where unstructured pruning ranks weights (`models.prune_magnitude`)."""

    GLOBAL = "global"  # one magnitude ranking over all layers' weights
    PER_LAYER = "per_layer"  # the same sparsity in every layer


def check_open_unit(value: Any, what: str, meaning: str) -> None:
    """Refuse a pruning target that is not a number in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelsError(f"{what} must be a number in (0, 1) ({meaning}), got {value!r}")
    if not 0 < value < 1:
        raise ModelsError(
            f"{what} {value} is outside (0, 1): it is {meaning}; pass e.g. 0.25 "
            "(0 would remove everything, 1 would remove nothing)"
        )


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how far.

    Structured targets (pick one; neither means `macs_budget=0.1`):
      width_ratios: fraction of each width to KEEP, in (0, 1). A number applies to every
        width; a mapping names widths (`{"conv_channels": 0.25, "hidden": 0.3}`) and leaves
        the others whole.
      macs_budget: the pruned model's MACs as a fraction of the source's, in (0, 1).
    Unstructured targets (pick one; neither means `sparsity=0.8`):
      sparsity: fraction of Conv2d/Linear weights set to zero, in (0, 1), over `scope`.
      threshold: zero every weight with |w| <= threshold (scope does not apply).
    steps: prune in this many steps (geometric in width, linear in sparsity);
    finetune: SGD fine-tune on the 'fit' split after every step (None: no fine-tune).
    """

    # fmt: off
    method: PruneMethod = field(default=PruneMethod.STRUCTURED, metadata=flag(
        "--method", "structured removes channels (default); unstructured zeroes single weights"))
    importance: Importance = field(default=Importance.L1, metadata=flag(
        "--importance", "structured: norm that ranks channels (default: {default})"))
    width_ratios: float | Mapping[str, float] | None = field(default=None, metadata=flag(
        "--ratios", "structured: fraction of each width to KEEP, in (0, 1): one number for every "
        "width (0.25) or NAME=R pairs (conv_channels=0.25,hidden=0.3; unnamed widths stay whole)",
        type=parse_ratios, metavar="R"))
    macs_budget: float | None = field(default=None, metadata=flag(
        "--macs-budget", "structured: MACs of the result as a fraction of the source's, in "
        f"(0, 1) (default: {DEFAULT_MACS_BUDGET})", type=number, metavar="F"))
    sparsity: float | None = field(default=None, metadata=flag(
        "--sparsity", "unstructured: fraction of weights to zero, in (0, 1) "
        f"(default: {DEFAULT_SPARSITY})", type=number, metavar="S"))
    threshold: float | None = field(default=None, metadata=flag(
        "--threshold", "unstructured: zero every weight with |w| <= T", type=number, metavar="T"))
    scope: PruneScope = field(default=PruneScope.GLOBAL, metadata=flag(
        "--scope", "unstructured --sparsity: one ranking over all layers, or the same sparsity "
        "in each (default: {default})"))
    steps: int = field(default=1, metadata=flag(
        "--steps", "iterative schedule: prune in this many steps (default: {default})",
        type=positive_int))
    finetune: SgdConfig | None = None  # the CLI's --finetune-epochs / --finetune-lr
    seed: int = field(default=0, metadata=flag(
        "--seed", "fine-tune seed (default: {default})", type=non_negative_int))
    # fmt: on

    def validate(self) -> None:
        if not isinstance(self.method, PruneMethod):
            raise ModelsError(
                f"prune method {self.method!r} is not one of structured, unstructured"
            )
        if not isinstance(self.importance, Importance):
            raise ModelsError(f"prune importance {self.importance!r} is not one of l1, l2")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ModelsError(f"prune steps must be an integer >= 1, got {self.steps!r}")
        if self.finetune is not None:
            self.finetune.validate()
        if self.method is PruneMethod.STRUCTURED:
            if self.sparsity is not None or self.threshold is not None:
                raise ModelsError(
                    "sparsity/threshold apply to unstructured pruning only; pass "
                    "method=unstructured, or width ratios / a MACs budget for structured"
                )
            if self.width_ratios is not None and self.macs_budget is not None:
                raise ModelsError(
                    "give width ratios or a MACs budget, not both: the budget is turned into "
                    "widths by itself"
                )
            for name, ratio in _ratio_items(self.width_ratios):
                check_open_unit(ratio, f"width ratio {name}", "the fraction of the width to keep")
            if self.macs_budget is not None:
                check_open_unit(
                    self.macs_budget, "MACs budget", "a fraction of the source model's MACs"
                )
        else:
            if self.width_ratios is not None or self.macs_budget is not None:
                raise ModelsError(
                    "width ratios / MACs budget apply to structured pruning only; pass "
                    "sparsity or threshold for unstructured"
                )
            if self.sparsity is not None and self.threshold is not None:
                raise ModelsError("give a target sparsity or a threshold, not both")
            if self.sparsity is not None:
                check_open_unit(self.sparsity, "sparsity", "the fraction of weights set to zero")
            if self.threshold is not None and not (
                math.isfinite(self.threshold) and self.threshold > 0
            ):
                raise ModelsError(
                    f"magnitude threshold must be a finite number > 0, got {self.threshold}"
                )
            if self.threshold is not None and self.steps != 1:
                raise ModelsError("a magnitude threshold prunes in one step; pass steps=1")

    @property
    def effective_macs_budget(self) -> float | None:
        if self.method is not PruneMethod.STRUCTURED or self.width_ratios is not None:
            return None
        return DEFAULT_MACS_BUDGET if self.macs_budget is None else self.macs_budget

    @property
    def effective_sparsity(self) -> float | None:
        if self.method is not PruneMethod.UNSTRUCTURED or self.threshold is not None:
            return None
        return DEFAULT_SPARSITY if self.sparsity is None else self.sparsity


def _ratio_items(ratios: float | Mapping[str, float] | None) -> list[tuple[str, float]]:
    if ratios is None:
        return []
    if isinstance(ratios, Mapping):
        return [(str(k), v) for k, v in ratios.items()]
    return [("(all widths)", ratios)]
