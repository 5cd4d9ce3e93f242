"""Structured pruning of any network (a user's factory model) with Torch-Pruning's DepGraph:
coupled layers - residual adds, concatenations, depthwise convs, BatchNorms - are pruned
together; the classifier's outputs never are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from onnxship.models.prune_channels import Importance


def classifier_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The layers whose outputs are the logits: never pruned (the class count is fixed).
    Found by their output width matching the logits' among the last Linear/Conv layers."""
    with torch.no_grad():
        classes = int(model(example).shape[1])
    layers: list[nn.Module] = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    last = [
        m for m in layers if getattr(m, "out_features", getattr(m, "out_channels", 0)) == classes
    ]
    return last[-1:] if last else layers[-1:]


def depgraph_pruner(
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
        ignored_layers=classifier_layers(model, example),
        global_pruning=False,
    )


# A MACs budget is reached by small DepGraph steps (up to DEPGRAPH_MAX_RATIO of every group's
# channels in DEPGRAPH_STEPS steps), stopping at the first that fits: MACs are not monotone in
# a one-shot ratio (measured on a residual+concat net: one-shot 0.5 -> 108,704 MACs, 0.7 ->
# 130,880; >= 0.95 prunes nothing, as a group would vanish), but fall step by step.
DEPGRAPH_MAX_RATIO = 0.9
DEPGRAPH_STEPS = 30


def tp_version() -> str:
    from importlib.metadata import version

    return version("torch-pruning")
