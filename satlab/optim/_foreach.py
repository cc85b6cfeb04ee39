"""Small foreach helpers shared by the SAM variants (global norms, dot products, clipping)."""

from __future__ import annotations

import torch


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all tensors taken together, on the first tensor's device."""
    if not tensors:
        return torch.zeros(())
    dev = tensors[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(dev) for n in torch._foreach_norm(tensors)]))


def global_dot(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    """Sum over tensors of <x_i, y_i>."""
    if not xs:
        return torch.zeros(())
    dev = xs[0].device
    return torch.stack([(x * y).sum().to(dev) for x, y in zip(xs, ys)]).sum()


def clip_(tensors: list[torch.Tensor], max_norm: float) -> None:
    """Scale tensors in place so their global norm is at most max_norm (as clip_grad_norm_)."""
    norm = float(global_norm(tensors))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        torch._foreach_mul_(tensors, coef)
