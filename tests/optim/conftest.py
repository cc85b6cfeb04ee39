"""Shared helpers for the satlab.optim tests."""

import torch


def quad_loss(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """L(w) = 0.5 * sum(a * w^2), so grad = a * w: easy to compute by hand."""
    return 0.5 * (a * w * w).sum()
