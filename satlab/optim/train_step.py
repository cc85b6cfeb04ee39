"""One call that runs both SAM passes on a batch (the Keras `train_step` override, for torch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from satlab.optim.amp import finish_scaled_step, skip_overflowed_step, unscale_first_pass_
from satlab.optim.bn import frozen_bn_stats
from satlab.optim.sam import SAM


def _passes(model: nn.Module, loss_fn: Callable[..., torch.Tensor], xs: Sequence[Any],
            ys: Sequence[Any], n: int, scaler: torch.amp.GradScaler | None,
            autocast_dtype: torch.dtype | None, device_type: str,
            keep_outputs: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Accumulate the gradient of the full-batch mean loss over micro-batches."""
    total = torch.zeros(())
    outs = []
    for x, y in zip(xs, ys):
        ctx = (torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None
               else nullcontext())
        with ctx:
            out = model(x)
            # Weight by micro-batch size so the sum equals the mean loss of the whole batch.
            loss = loss_fn(out, y) * (len(x) / n)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total = total + loss.detach().float().cpu()
        if keep_outputs:
            outs.append(out.detach())
    return total, outs


def sam_train_step(model: nn.Module, loss_fn: Callable[..., torch.Tensor],
                   batch: tuple[torch.Tensor, torch.Tensor], optimizer: SAM, *,
                   accumulation_steps: int = 1, scaler: torch.amp.GradScaler | None = None,
                   autocast_dtype: torch.dtype | None = None, device_type: str = "cpu",
                   freeze_bn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Both SAM passes for one batch; returns (mean loss at w, outputs at w)."""
    inputs, targets = batch
    n = len(inputs)
    xs, ys = inputs.tensor_split(accumulation_steps), targets.tensor_split(accumulation_steps)
    optimizer.zero_grad()
    loss, outs = _passes(model, loss_fn, xs, ys, n, scaler, autocast_dtype, device_type, True)
    outputs = torch.cat(outs)
    if scaler is not None and unscale_first_pass_(optimizer, scaler):
        skip_overflowed_step(optimizer, scaler)
        return loss, outputs
    optimizer.first_step(zero_grad=True)
    with frozen_bn_stats(model) if freeze_bn else nullcontext():
        _passes(model, loss_fn, xs, ys, n, scaler, autocast_dtype, device_type, False)
    if scaler is not None:
        finish_scaled_step(optimizer, scaler)
    else:
        optimizer.step()
    optimizer.zero_grad()
    return loss, outputs
