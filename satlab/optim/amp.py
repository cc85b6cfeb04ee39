"""Mixed precision for SAM: unscale each pass correctly with one GradScaler, skip on overflow."""

from __future__ import annotations

import math

import torch

from satlab.optim._foreach import global_norm
from satlab.optim.sam import SAM


@torch.no_grad()
def unscale_first_pass_(optimizer: SAM, scaler: torch.amp.GradScaler) -> bool:
    """Divide first-pass grads by the scale; return True if they overflowed (inf/NaN)."""
    # GradScaler.unscale_ may run only once per update(), and scaler.step() must unscale the
    # second pass, so the first pass is unscaled here without touching the scaler's state.
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, 1.0 / float(scaler.get_scale()))
    return not math.isfinite(float(global_norm(grads)))


def skip_overflowed_step(optimizer: SAM, scaler: torch.amp.GradScaler) -> None:
    """First pass overflowed: drop the step, back the scale off as GradScaler would."""
    optimizer.zero_grad()
    scaler.update(float(scaler.get_scale()) * scaler.get_backoff_factor())


def finish_scaled_step(optimizer: SAM, scaler: torch.amp.GradScaler) -> bool:
    """After the scaled second backward: unscale, step unless overflow, restore w; True if stepped."""
    scaler.step(optimizer)  # unscales the second-pass grads, calls optimizer.step() if finite
    stepped = not optimizer.pending
    optimizer.restore()  # no-op after a real step; undoes the perturbation after a skipped one
    scaler.update()
    return stepped
