"""Unstructured magnitude pruning (`torch.nn.utils.prune`, baked in with `prune.remove`): zero
individual weights of every Conv2d/Linear, per layer or globally, by target sparsity or by a
magnitude threshold. Every tensor keeps its full shape, so dense inference is exactly as slow
and the raw file exactly as large; the honest benefit is a smaller *compressed download*
(`gzip_state_bytes`).
"""

from __future__ import annotations

import gzip
import io

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from onnxship.models.prune_channels import weight_of
from onnxship.models.prune_config import PruneScope  # declared torch-free there


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def apply_sparsity_step(
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


def bake(layers: list[tuple[str, nn.Module]]) -> None:
    for _, m in layers:
        if torch_prune.is_pruned(m):
            torch_prune.remove(m, "weight")


def sparsity_report(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights per Conv2d/Linear, plus `"total"` over all of them."""
    report: dict[str, float] = {}
    zeros = total = 0
    for name, m in prunable_weights(model):
        w = weight_of(m)
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
