"""SAM under DistributedDataParallel: per-replica perturbation, averaged final gradient."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn

from satlab.optim.bn import frozen_bn_stats
from satlab.optim.sam import SAM


def sam_ddp_step(ddp_model: nn.parallel.DistributedDataParallel,
                 loss_fn: Callable[..., torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor],
                 optimizer: SAM, freeze_bn: bool = True) -> torch.Tensor:
    """First pass under no_sync (local eps = m-sharpness per replica), second pass all-reduced."""
    x, y = batch
    optimizer.zero_grad()
    with ddp_model.no_sync():
        loss = loss_fn(ddp_model(x), y)
        loss.backward()
    optimizer.first_step(zero_grad=True)
    # Variants keep g for the update; it must be the replica average or replicas drift apart.
    saved_g = [s["g"] for s in optimizer.state.values() if "g" in s]
    if saved_g:
        for t in saved_g:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        torch._foreach_div_(saved_g, dist.get_world_size())
    with frozen_bn_stats(ddp_model) if freeze_bn else nullcontext():
        loss_fn(ddp_model(x), y).backward()  # DDP averages g~ across replicas here
    optimizer.second_step(zero_grad=True)
    return loss.detach()
