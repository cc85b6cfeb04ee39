"""ASAM: scale-invariant SAM (T_w = |w| + eta), optionally only on weight tensors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.optim import Optimizer

from satlab.optim.sam import SAM


def asam_param_groups(model: nn.Module, weights_only: bool = True) -> list[dict[str, Any]]:
    """Split a model's parameters: adaptive for weights, plain SAM for biases/others."""
    adaptive, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Name-based like the reference ASAM: biases are not scale-invariant quantities.
        (adaptive if (not weights_only or "weight" in name) else plain).append(p)
    groups = [{"params": adaptive, "adaptive": True}]
    if plain:
        groups.append({"params": plain, "adaptive": False})
    return groups


class ASAM(SAM):
    """SAM with adaptive=True by default; pass an nn.Module to apply T_w to weights only."""

    def __init__(self, params: Iterable[Any] | nn.Module | None,
                 base_optimizer: type[Optimizer] | Optimizer, rho: float = 0.5,
                 eta: float = 0.01, weights_only: bool = True, **base_kwargs: Any):
        if isinstance(params, nn.Module):
            params = asam_param_groups(params, weights_only=weights_only)
        super().__init__(params, base_optimizer, rho=rho, adaptive=True, eta=eta, **base_kwargs)
