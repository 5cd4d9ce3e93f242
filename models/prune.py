"""Pruning: structured (the default; the network really shrinks) and unstructured (an option).

Structured pruning removes whole conv filters and hidden units and rewires their consumers, so
the result is a *dense, smaller* model of the same architecture, rebuilt with
`create_model(arch, **smaller_widths)`: it is faster and smaller once exported. Per channel
group (one registry width), the producer loses output rows, a BatchNorm between producer and
consumer loses the same channels, and every consumer loses the matching input slices:

    simple_cnn:  conv1 -> relu -> pool -> flatten -> fc1 (13*13 input columns per channel)
                 fc1   -> relu -> fc2 (one input column per hidden unit)
    bn_cnn:      conv1 -> bn1 -> ... -> conv2 (one input channel per channel)
                 conv2 -> bn2 -> ... -> flatten -> fc1 (7*7 columns per channel);  fc1 -> fc2

Importance of a channel is the L1 or L2 norm of its producer weights; behind a BatchNorm the
norm is taken of the BN-folded filter (|gamma| / sqrt(running_var + eps) times the filter),
which is what the channel actually contributes. Targets are width ratios (fraction of each
width kept) or a MACs budget (a fraction of the source's MACs), turned into widths by
proportional shrinking and then a greedy fill of what is left of the budget. An optional
iterative schedule prunes in `steps` geometric steps with a fine-tune after each.

Unstructured magnitude pruning (`torch.nn.utils.prune`, baked in with `prune.remove`) zeroes
individual weights of every Conv2d/Linear, per layer or globally, by target sparsity or by a
magnitude threshold. Every tensor keeps its full shape, so dense inference is exactly as slow
and the raw file exactly as large; the honest benefit is a smaller *compressed download*, which
is why the stage reports the gzip-compressed size of the state dict before and after.
"""

from __future__ import annotations

import copy
import enum
import gzip
import io
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from onnxship.core.artifact import Artifact, sha256_file
from onnxship.core.flags import flag, non_negative_int, number, parse_ratios, positive_int
from onnxship.models.checkpoint import load_checkpoint, save_checkpoint
from onnxship.models.data import DataConfig, DataSplits, open_data
from onnxship.models.errors import ModelsError
from onnxship.models.flops import count_macs, count_nonzero_params, count_params
from onnxship.models.loop import SgdConfig
from onnxship.models.registry import ChannelGroup, create_model, prune_groups

log = logging.getLogger(__name__)

DEFAULT_MACS_BUDGET = 0.1  # the target: a student with <= 10 % of the teacher's MACs
DEFAULT_SPARSITY = 0.8  # unstructured default when neither sparsity nor threshold is given


class PruneMethod(enum.Enum):
    STRUCTURED = "structured"  # remove channels / units: a dense, smaller model (default)
    UNSTRUCTURED = "unstructured"  # zero single weights: same shapes, smaller gzip download


class Importance(enum.Enum):
    L1 = "l1"
    L2 = "l2"


class PruneScope(enum.Enum):
    GLOBAL = "global"  # one magnitude ranking over all layers' weights
    PER_LAYER = "per_layer"  # the same sparsity in every layer


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
                _check_open_unit(ratio, f"width ratio {name}", "the fraction of the width to keep")
            if self.macs_budget is not None:
                _check_open_unit(
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
                _check_open_unit(self.sparsity, "sparsity", "the fraction of weights set to zero")
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


def _check_open_unit(value: Any, what: str, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelsError(f"{what} must be a number in (0, 1) ({meaning}), got {value!r}")
    if not 0 < value < 1:
        raise ModelsError(
            f"{what} {value} is outside (0, 1): it is {meaning}; pass e.g. 0.25 "
            "(0 would remove everything, 1 would remove nothing)"
        )


# ---------------------------------------------------------------------------------------------
# Channel groups: which layers one registry width touches.


def prune_spec(arch: str) -> tuple[ChannelGroup, ...]:
    """The channel groups `arch` declared when it was registered (models.registry)."""
    return prune_groups(arch)


def _arch(model: nn.Module) -> str:
    name = getattr(model, "arch_name", None)
    if not name:
        raise ModelsError(f"{type(model).__name__} has no arch_name; build it with create_model()")
    return str(name)


def _widths(model: nn.Module) -> dict[str, int]:
    return dict(model.widths())  # type: ignore[operator]


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise ModelsError(f"{type(module).__name__} has no weight tensor")
    return weight.detach()


def _layer_label(group: ChannelGroup) -> str:
    return f"{group.producer} ({group.width})"


# ---------------------------------------------------------------------------------------------
# Importance and selection.


@torch.no_grad()
def channel_importance(model: nn.Module, importance: Importance) -> dict[str, torch.Tensor]:
    """Per width name, a score per output channel of its producer (higher = keep)."""
    scores: dict[str, torch.Tensor] = {}
    p = 1 if importance is Importance.L1 else 2
    for group in prune_spec(_arch(model)):
        weight = _weight(_module(model, group.producer)).float()
        flat = weight.reshape(weight.shape[0], -1)
        if group.norm is not None:
            bn = _module(model, group.norm)
            assert isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None
            scale = _weight(bn).abs() / torch.sqrt(bn.running_var + bn.eps)
            flat = flat * scale[:, None]
        scores[group.width] = torch.linalg.vector_norm(flat, ord=p, dim=1)
    return scores


def select_channels(
    model: nn.Module, widths: Mapping[str, int], importance: Importance
) -> dict[str, torch.Tensor]:
    """Indices (ascending) of the channels to keep per width: the `widths[name]` highest
    scores; ties go to the lower index, so the choice is deterministic."""
    current = _widths(model)
    scores = channel_importance(model, importance)
    keep: dict[str, torch.Tensor] = {}
    for group in prune_spec(_arch(model)):
        target = int(widths.get(group.width, current[group.width]))
        if not 1 <= target <= current[group.width]:
            raise ModelsError(
                f"cannot keep {target} of the {current[group.width]} channels of "
                f"{_layer_label(group)}: expected 1..{current[group.width]}"
            )
        order = torch.argsort(scores[group.width], descending=True, stable=True)
        keep[group.width] = torch.sort(order[:target]).values
    return keep


# ---------------------------------------------------------------------------------------------
# Rewiring.


def _per_channel(consumer: nn.Module, producer: nn.Module, channels: int) -> int:
    """Input columns of `consumer` per producer channel: 1 for a conv or a Linear after a
    Linear; the flattened spatial size for a Linear after a conv (read off the layers)."""
    if isinstance(consumer, nn.Linear) and isinstance(producer, nn.Conv2d):
        if consumer.in_features % channels:
            raise ModelsError(
                f"{type(consumer).__name__} has {consumer.in_features} inputs, not a multiple "
                f"of the {channels} channels feeding it; the channel groups do not match"
            )
        return consumer.in_features // channels
    return 1


def _consumer_index(consumer: nn.Module, idx: torch.Tensor, per_channel: int) -> torch.Tensor:
    if isinstance(consumer, nn.Conv2d) or per_channel == 1:
        return idx
    # Flatten of NCHW is channel-major: channel c owns columns c*S .. c*S + S - 1.
    return (idx[:, None] * per_channel + torch.arange(per_channel)[None, :]).reshape(-1)


@torch.no_grad()
def prune_structured(model: nn.Module, keep: Mapping[str, torch.Tensor]) -> nn.Module:
    """A new, dense model of the same architecture holding only the kept channels.

    `keep[width]` are channel indices into the producer's outputs (see `select_channels`);
    widths not named stay whole. The source model is not modified.
    """
    arch = _arch(model)
    groups = prune_spec(arch)
    widths = _widths(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    new_widths = dict(widths)
    for group in groups:
        if group.width not in keep:
            continue
        idx = torch.as_tensor(keep[group.width], dtype=torch.long).reshape(-1)
        full = widths[group.width]
        if idx.numel() == 0:
            raise ModelsError(
                f"pruning would remove every channel of {_layer_label(group)}; keep at least one"
            )
        if idx.unique().numel() != idx.numel() or int(idx.min()) < 0 or int(idx.max()) >= full:
            raise ModelsError(
                f"kept channels of {_layer_label(group)} must be distinct indices in "
                f"0..{full - 1}, got {idx.tolist()}"
            )
        idx = torch.sort(idx).values
        new_widths[group.width] = int(idx.numel())
        for suffix in ("weight", "bias"):
            key = f"{group.producer}.{suffix}"
            if key in state:
                state[key] = state[key].index_select(0, idx)
        if group.norm is not None:
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                key = f"{group.norm}.{suffix}"
                state[key] = state[key].index_select(0, idx)
        producer = _module(model, group.producer)
        for consumer in group.consumers:
            module = _module(model, consumer)
            cols = _consumer_index(module, idx, _per_channel(module, producer, full))
            key = f"{consumer}.weight"
            state[key] = state[key].index_select(1, cols)
    pruned = create_model(arch, **new_widths)
    try:
        pruned.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # a spec that does not match the architecture's layers
        first = str(exc).strip().splitlines()[0]
        raise ModelsError(f"prune spec of {arch} does not match its layers: {first}") from exc
    pruned.train(model.training)
    return pruned


# ---------------------------------------------------------------------------------------------
# Targets: ratios or a MACs budget -> widths.


def macs_of_widths(arch: str, widths: Mapping[str, int]) -> int:
    return count_macs(create_model(arch, **dict(widths)))


def widths_for_ratios(model: nn.Module, ratios: float | Mapping[str, float]) -> dict[str, int]:
    """Target widths keeping `ratio` of each width (rounded half up)."""
    arch = _arch(model)
    widths = _widths(model)
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
        _check_open_unit(ratio, f"width ratio {group.width}", "the fraction of the width to keep")
        new = math.floor(ratio * widths[group.width] + 0.5)
        if new < 1:
            raise ModelsError(
                f"width ratio {ratio} would remove every channel of {_layer_label(group)} "
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
    _check_open_unit(budget, "MACs budget", "a fraction of the source model's MACs")
    arch = _arch(model)
    widths = _widths(model)
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
            f"channel of {_layer_label(first_to_vanish)}: the smallest proportional {arch} "
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


def _step_widths(
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


# ---------------------------------------------------------------------------------------------
# Unstructured magnitude pruning.


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _apply_sparsity_step(
    layers: list[tuple[str, nn.Module]], previous: float, target: float, scope: PruneScope
) -> None:
    """Raise the sparsity of the (possibly already masked) weights from `previous` to `target`.

    torch's pruning containers take `amount` as a fraction of the weights still unpruned.
    """
    amount = 1.0 - (1.0 - target) / (1.0 - previous)
    if amount <= 0:
        return
    if scope is PruneScope.GLOBAL:
        torch_prune.global_unstructured(
            [(m, "weight") for _, m in layers],
            pruning_method=torch_prune.L1Unstructured,
            amount=amount,
        )
    else:
        for _, m in layers:
            torch_prune.l1_unstructured(m, "weight", amount=amount)


def _bake(layers: list[tuple[str, nn.Module]]) -> None:
    for _, m in layers:
        if torch_prune.is_pruned(m):
            torch_prune.remove(m, "weight")


def sparsity_report(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights per Conv2d/Linear, plus `"total"` over all of them."""
    report: dict[str, float] = {}
    zeros = total = 0
    for name, m in prunable_weights(model):
        w = _weight(m)
        z = int((w == 0).sum())
        report[name] = round(z / w.numel(), 6)
        zeros += z
        total += w.numel()
    report["total"] = round(zeros / max(total, 1), 6)
    return report


def gzip_state_bytes(model: nn.Module) -> int:
    """Size of the model's state dict as torch.save bytes, gzip-compressed (level 9)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buffer)
    return len(gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0))


# ---------------------------------------------------------------------------------------------
# The stage.


def _val_top1(model: nn.Module, data: DataSplits) -> float:
    from onnxship.models.evaluate import top1

    val = data.split("val")
    return round(top1(model, val.x, val.y), 6)


def _finetune(model: nn.Module, cfg: PruneConfig, data: DataSplits, step: int) -> float:
    from onnxship.models.loop import train_sgd

    assert cfg.finetune is not None
    fit = data.split("fit")
    t0 = time.perf_counter()
    train_sgd(
        model,
        fit.x,
        fit.y,
        cfg.finetune,
        seed=cfg.seed + step,
        desc=f"prune fine-tune {step}/{cfg.steps}",
    )
    return time.perf_counter() - t0


def prune_model_structured(
    model: nn.Module, cfg: PruneConfig, data: DataSplits | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Structured pruning of `model` (not modified) to the config's target; returns the new
    model and the metrics of the schedule (per-step widths and validation accuracy)."""
    cfg.validate()
    if cfg.width_ratios is not None:
        goal = widths_for_ratios(model, cfg.width_ratios)
    else:
        goal = widths_for_macs_budget(model, cfg.effective_macs_budget or DEFAULT_MACS_BUDGET)
    start = _widths(model)
    current = model
    history: list[dict[str, Any]] = []
    finetune_s = 0.0
    for k in range(1, cfg.steps + 1):
        widths_k = _step_widths(start, goal, k, cfg.steps)
        keep = select_channels(current, widths_k, cfg.importance)
        current = prune_structured(current, keep)
        entry: dict[str, Any] = {"step": k, "widths": widths_k}
        if data is not None:
            entry["val_top1_pruned"] = _val_top1(current, data)
        if cfg.finetune is not None and data is not None:
            finetune_s += _finetune(current, cfg, data, k)
            entry["val_top1_finetuned"] = _val_top1(current, data)
        history.append(entry)
        log.info("prune step %d/%d: %s", k, cfg.steps, entry)
    current.eval()
    metrics: dict[str, Any] = {"widths_before": start, "widths_after": _widths(current)}
    metrics.update(_schedule_metrics(history, cfg, data is not None, finetune_s))
    return current, metrics


def _schedule_metrics(
    history: list[dict[str, Any]], cfg: PruneConfig, measured: bool, finetune_s: float
) -> dict[str, Any]:
    """Accuracy after the last step (and its fine-tune), plus the per-step history."""
    metrics: dict[str, Any] = {}
    if measured:
        metrics["val_top1_pruned"] = history[-1]["val_top1_pruned"]
        if cfg.finetune is not None:
            metrics["val_top1_finetuned"] = history[-1]["val_top1_finetuned"]
            metrics["finetune_s"] = round(finetune_s, 3)
    if cfg.steps > 1:
        metrics["schedule"] = history
    return metrics


def prune_model_unstructured(
    model: nn.Module, cfg: PruneConfig, data: DataSplits | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Unstructured magnitude pruning of a copy of `model`, baked with `prune.remove`."""
    cfg.validate()
    pruned = copy.deepcopy(model)
    layers = prunable_weights(pruned)
    if not layers:
        raise ModelsError(f"{_arch(model)} has no Conv2d/Linear weights to prune")
    history: list[dict[str, Any]] = []
    finetune_s = 0.0
    plan: list[tuple[int, float | None]]
    if cfg.threshold is not None:
        plan = [(1, None)]
    else:
        target = cfg.effective_sparsity or DEFAULT_SPARSITY
        plan = [(k, target * k / cfg.steps) for k in range(1, cfg.steps + 1)]
    previous = 0.0
    for k, s_k in plan:
        if s_k is None:
            with torch.no_grad():
                for _, m in layers:
                    mask = _weight(m).abs() > float(cfg.threshold or 0.0)
                    torch_prune.custom_from_mask(m, "weight", mask=mask)
        else:
            _apply_sparsity_step(layers, previous, s_k, cfg.scope)
            previous = s_k
        # Masks stay attached while fine-tuning (a forward pre-hook re-applies them), so
        # pruned weights stay zero; `prune.remove` bakes them in at the end.
        entry: dict[str, Any] = {"step": k, "sparsity": sparsity_report(pruned)["total"]}
        if data is not None:
            entry["val_top1_pruned"] = _val_top1(pruned, data)
        if cfg.finetune is not None and data is not None:
            finetune_s += _finetune(pruned, cfg, data, k)
            entry["val_top1_finetuned"] = _val_top1(pruned, data)
        history.append(entry)
    _bake(layers)
    pruned.eval()
    metrics: dict[str, Any] = {"sparsity_per_layer": sparsity_report(pruned)}
    metrics["sparsity"] = metrics["sparsity_per_layer"]["total"]
    metrics.update(_schedule_metrics(history, cfg, data is not None, finetune_s))
    return pruned, metrics


def _classifier_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The layers whose outputs are the logits: never pruned (the class count is fixed).
    Found by their output width matching the logits' among the last Linear/Conv layers."""
    with torch.no_grad():
        classes = int(model(example).shape[1])
    layers: list[nn.Module] = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    last = [
        m for m in layers if getattr(m, "out_features", getattr(m, "out_channels", 0)) == classes
    ]
    return last[-1:] if last else layers[-1:]


def _depgraph_pruner(
    model: nn.Module, ratio: float, steps: int, example: torch.Tensor, importance: Importance
) -> Any:
    """Torch-Pruning's DepGraph pruner on `model` (pruned in place by `.step()`): coupled
    layers - residual adds, concatenations, depthwise convs, BatchNorms - are pruned together,
    channels ranked by the group's L1/L2 weight magnitude; `ratio` of every group's channels
    is gone after `steps` calls (linear schedule). The classifier's outputs are never pruned."""
    import torch_pruning as tp

    p = 1 if importance is Importance.L1 else 2
    return tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=p),
        pruning_ratio=ratio,
        iterative_steps=steps,
        ignored_layers=_classifier_layers(model, example),
        global_pruning=False,
    )


# A MACs budget is reached by small DepGraph steps (up to DEPGRAPH_MAX_RATIO of every group's
# channels in DEPGRAPH_STEPS steps), stopping at the first that fits: MACs are not monotone in
# a one-shot ratio (measured on a residual+concat net: one-shot 0.5 -> 108,704 MACs, 0.7 ->
# 130,880; >= 0.95 prunes nothing, as a group would vanish), but fall step by step.
DEPGRAPH_MAX_RATIO = 0.9
DEPGRAPH_STEPS = 30


def prune_model_depgraph(
    model: nn.Module,
    cfg: PruneConfig,
    input_shape: tuple[int, ...],
    data: DataSplits | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Structured pruning of any network (a user's factory model) with Torch-Pruning's DepGraph;
    `model` is not modified.

    Width ratios: one number, the fraction of channels kept in every prunable group. MACs
    budget: DepGraph steps until MACs <= budget * MACs(model). With `steps` > 1 the budget (or
    ratio) is reached geometrically over the steps, with a fine-tune after each when configured.
    """
    cfg.validate()
    if isinstance(cfg.width_ratios, Mapping):
        raise ModelsError(
            "width ratios by name apply to registry architectures; for a factory model give one "
            "number (the fraction of channels kept in every layer) or a MACs budget"
        )
    example = torch.zeros((1, *input_shape), dtype=torch.float32)
    macs_src = count_macs(model, example.shape)
    current = copy.deepcopy(model).eval()
    history: list[dict[str, Any]] = []
    finetune_s = 0.0
    if cfg.width_ratios is not None:
        pruner = _depgraph_pruner(
            current, 1.0 - float(cfg.width_ratios), cfg.steps, example, cfg.importance
        )
    else:
        pruner = _depgraph_pruner(
            current, DEPGRAPH_MAX_RATIO, DEPGRAPH_STEPS, example, cfg.importance
        )
        budget = cfg.effective_macs_budget or DEFAULT_MACS_BUDGET
    taken = 0
    for k in range(1, cfg.steps + 1):
        current.eval()
        if cfg.width_ratios is not None:
            pruner.step()
            taken += 1
        else:
            limit = budget ** (k / cfg.steps) * macs_src
            while count_macs(current, example.shape) > limit:
                if taken == DEPGRAPH_STEPS:
                    reached = count_macs(current, example.shape)
                    raise ModelsError(
                        f"a MACs budget of {budget} ({limit:,.0f} of {macs_src:,} MACs) is out "
                        f"of reach: DepGraph pruning of {DEPGRAPH_MAX_RATIO:.0%} of every "
                        f"prunable group leaves {reached:,} MACs (unprunable layers dominate); "
                        f"pass a budget >= {reached / macs_src:.4f}"
                    )
                pruner.step()
                taken += 1
        entry: dict[str, Any] = {
            "step": k,
            "depgraph_steps": taken,
            "macs": count_macs(current, example.shape),
        }
        if data is not None:
            entry["val_top1_pruned"] = _val_top1(current, data)
        if cfg.finetune is not None and data is not None:
            finetune_s += _finetune(current, cfg, data, k)
            entry["val_top1_finetuned"] = _val_top1(current, data)
        history.append(entry)
        log.info("DepGraph prune step %d/%d: %s", k, cfg.steps, entry)
    current.eval()
    metrics: dict[str, Any] = {
        "pruner": f"torch-pruning {_tp_version()} DepGraph (MetaPruner, group magnitude)",
        "depgraph_steps": taken,
    }
    metrics.update(_schedule_metrics(history, cfg, data is not None, finetune_s))
    return current, metrics


def _tp_version() -> str:
    from importlib.metadata import version

    return version("torch-pruning")


def pruned_from_checkpoint(
    src: str | os.PathLike[str],
    cfg: PruneConfig,
    out_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    data: DataConfig | None = None,
) -> Artifact:
    """Prune the checkpoint `src` and write the pruned checkpoint (+ sidecar) to `out_path`.
    The data is `data`, else the one the checkpoint records, else MNIST under `data_dir`.
    Registry architectures prune by their channel groups; a user's factory model by DepGraph.

    Metrics: macs/params before and after, widths before/after, `val_top1_before`,
    `val_top1_pruned` (right after pruning), `val_top1_finetuned` when fine-tuning, and for
    unstructured pruning the sparsity per layer and gzip-compressed state-dict sizes.
    """
    cfg.validate()
    src_path = Path(src)
    model, meta = load_checkpoint(src_path)
    parent = sha256_file(src_path)
    splits = open_data(data or _recorded_data(meta.data), data_dir)
    shape = (1, *meta.input_shape)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {
        "method": cfg.method.value,
        "arch": meta.arch,
        "macs_before": count_macs(model, shape),
        "params_before": count_params(model),
        "val_top1_before": _val_top1(model, splits),
    }
    if cfg.method is PruneMethod.STRUCTURED and meta.factory is not None:
        pruned, extra = prune_model_depgraph(model, cfg, meta.input_shape, splits)
        metrics["macs_budget"] = cfg.effective_macs_budget
        metrics["width_ratios"] = cfg.width_ratios
    elif cfg.method is PruneMethod.STRUCTURED:
        pruned, extra = prune_model_structured(model, cfg, splits)
        metrics["macs_budget"] = cfg.effective_macs_budget
        metrics["width_ratios"] = cfg.width_ratios
    else:
        pruned, extra = prune_model_unstructured(model, cfg, splits)
        metrics["gzip_bytes_before"] = gzip_state_bytes(model)
        metrics["gzip_bytes_after"] = gzip_state_bytes(pruned)
        metrics["params_nonzero_after"] = count_nonzero_params(pruned)
        metrics["note"] = (
            "unstructured sparsity keeps every tensor at full size: dense inference is not "
            "faster and the raw file is not smaller; the benefit is the gzip-compressed download"
        )
    metrics["macs_after"] = count_macs(pruned, shape)
    metrics["params_after"] = count_params(pruned)
    metrics["macs_ratio"] = round(metrics["macs_after"] / metrics["macs_before"], 6)
    metrics.update(extra)
    metrics["prune_wall_s"] = round(time.perf_counter() - t0, 3)
    if meta.factory is None:
        metrics.setdefault("widths_before", dict(meta.widths))
        metrics.setdefault("widths_after", _widths(pruned))
    else:  # a factory model's "widths": the output channels of its conv and linear layers
        metrics["widths_before"] = _layer_widths(model)
        metrics["widths_after"] = _layer_widths(pruned)
    log.info(
        "pruned %s: %s -> %s MACs, val top-1 %.4f -> %.4f",
        src_path,
        metrics["macs_before"],
        metrics["macs_after"],
        metrics["val_top1_before"],
        metrics["val_top1_pruned"],
    )
    return save_checkpoint(
        pruned,
        out_path,
        stage="prune",
        seed=cfg.seed,
        metrics=metrics,
        parent_sha256=parent,
        config=cfg,
        extra={"pruned_from": os.fspath(src_path), "pruned_from_sha256": parent},
        like=meta,
    )


def _layer_widths(model: nn.Module) -> dict[str, int]:
    return {
        name: int(getattr(m, "out_channels", getattr(m, "out_features", 0)))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    }


def _recorded_data(raw: Mapping[str, Any] | None) -> DataConfig | None:
    return None if raw is None else DataConfig.from_json(raw)
