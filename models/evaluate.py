"""Accuracy of a PyTorch model on in-memory tensors (eval mode, no grad, batched)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    finally:
        model.train(was_training)


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction in [0, 1] of samples whose argmax logit equals the label."""
    logits = predict_logits(model, x, batch_size)
    return float((logits.argmax(dim=1) == y).float().mean().item())
