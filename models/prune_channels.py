"""Structured pruning of a registry architecture by its channel groups.

Per channel group (one registry width), the producer loses output rows, a BatchNorm between
producer and consumer loses the same channels, and every consumer loses the matching input
slices; the result is rebuilt with `create_model(arch, **smaller_widths)`, a dense, smaller
model of the same architecture:

    simple_cnn:  conv1 -> relu -> pool -> flatten -> fc1 (13*13 input columns per channel)
                 fc1   -> relu -> fc2 (one input column per hidden unit)
    bn_cnn:      conv1 -> bn1 -> ... -> conv2 (one input channel per channel)
                 conv2 -> bn2 -> ... -> flatten -> fc1 (7*7 columns per channel);  fc1 -> fc2

Importance of a channel is the L1 or L2 norm of its producer
weights; behind a BatchNorm the norm is taken of the BN-folded filter (|gamma| /
sqrt(running_var + eps) times the filter), which is what the channel actually contributes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from onnxship.models.errors import ModelsError
from onnxship.models.prune_config import Importance  # declared torch-free there
from onnxship.models.registry import ChannelGroup, create_model, prune_groups


def prune_spec(arch: str) -> tuple[ChannelGroup, ...]:
    """The channel groups `arch` declared when it was registered (models.registry)."""
    return prune_groups(arch)


def arch_of(model: nn.Module) -> str:
    name = getattr(model, "arch_name", None)
    if not name:
        raise ModelsError(f"{type(model).__name__} has no arch_name; build it with create_model()")
    return str(name)


def widths_of(model: nn.Module) -> dict[str, int]:
    return dict(model.widths())  # type: ignore[operator]


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def weight_of(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise ModelsError(f"{type(module).__name__} has no weight tensor")
    return weight.detach()


def layer_label(group: ChannelGroup) -> str:
    return f"{group.producer} ({group.width})"


# ---------------------------------------------------------------------------------------------
# Importance and selection.


@torch.no_grad()
def channel_importance(model: nn.Module, importance: Importance) -> dict[str, torch.Tensor]:
    """Per width name, a score per output channel of its producer (higher = keep)."""
    scores: dict[str, torch.Tensor] = {}
    p = 1 if importance is Importance.L1 else 2
    for group in prune_spec(arch_of(model)):
        weight = weight_of(_module(model, group.producer)).float()
        flat = weight.reshape(weight.shape[0], -1)
        if group.norm is not None:
            bn = _module(model, group.norm)
            assert isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None
            scale = weight_of(bn).abs() / torch.sqrt(bn.running_var + bn.eps)
            flat = flat * scale[:, None]
        scores[group.width] = torch.linalg.vector_norm(flat, ord=p, dim=1)
    return scores


def select_channels(
    model: nn.Module, widths: Mapping[str, int], importance: Importance
) -> dict[str, torch.Tensor]:
    """Indices (ascending) of the channels to keep per width: the `widths[name]` highest
    scores; ties go to the lower index, so the choice is deterministic."""
    current = widths_of(model)
    scores = channel_importance(model, importance)
    keep: dict[str, torch.Tensor] = {}
    for group in prune_spec(arch_of(model)):
        target = int(widths.get(group.width, current[group.width]))
        if not 1 <= target <= current[group.width]:
            raise ModelsError(
                f"cannot keep {target} of the {current[group.width]} channels of "
                f"{layer_label(group)}: expected 1..{current[group.width]}"
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
    arch = arch_of(model)
    groups = prune_spec(arch)
    widths = widths_of(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    new_widths = dict(widths)
    for group in groups:
        if group.width not in keep:
            continue
        idx = torch.as_tensor(keep[group.width], dtype=torch.long).reshape(-1)
        full = widths[group.width]
        if idx.numel() == 0:
            raise ModelsError(
                f"pruning would remove every channel of {layer_label(group)}; keep at least one"
            )
        if idx.unique().numel() != idx.numel() or int(idx.min()) < 0 or int(idx.max()) >= full:
            raise ModelsError(
                f"kept channels of {layer_label(group)} must be distinct indices in "
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
