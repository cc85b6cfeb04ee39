"""m-sharpness: perturb per micro-batch (or per replica) and average the perturbed gradients."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from satlab.optim.bn import frozen_bn_stats
from satlab.optim.sam import SAM


def m_sharpness_step(model: nn.Module, loss_fn: Callable[..., torch.Tensor],
                     batch: tuple[torch.Tensor, torch.Tensor], optimizer: SAM,
                     num_batch_splits: int, freeze_bn: bool = True) -> torch.Tensor:
    """One update where each of num_batch_splits micro-batches gets its own eps; returns mean loss."""
    inputs, targets = batch
    n = len(inputs)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    acc_gt: dict[torch.Tensor, torch.Tensor] = {}
    acc_g: dict[torch.Tensor, torch.Tensor] = {}
    total, all_finite = torch.zeros(()), True
    for x, y in zip(inputs.tensor_split(num_batch_splits), targets.tensor_split(num_batch_splits)):
        w = len(x) / n
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        total += loss.detach().cpu() * w
        optimizer.first_step(zero_grad=True)
        all_finite &= math.isfinite(optimizer.grad_norm)
        with frozen_bn_stats(model) if freeze_bn else nullcontext():
            loss_fn(model(x), y).backward()
        optimizer.restore()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    acc_gt[p] = acc_gt.get(p, 0) + p.grad * w
                if "g" in optimizer.state.get(p, {}):  # WSAM/GSAM keep g; average it too
                    acc_g[p] = acc_g.get(p, 0) + optimizer.state[p]["g"] * w
    for p in params:
        p.grad = acc_gt.get(p)
        if p in acc_g:
            optimizer.state[p]["g"] = acc_g[p]
    # Hand the averaged (g, g~) to the variant hooks as if one first_step were pending.
    optimizer.pending, optimizer._saved = True, []
    optimizer.grad_norm = optimizer.grad_norm if all_finite else float("inf")
    optimizer.step()
    optimizer.zero_grad()
    return total
