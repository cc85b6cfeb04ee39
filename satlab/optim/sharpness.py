"""Sharpness probes: top Hessian eigenvalue and max loss in a rho-ball, for weights or controls."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from satlab.optim._foreach import global_dot, global_norm


@contextmanager
def _requiring_grad(params: Sequence[torch.Tensor]) -> Iterator[None]:
    # Physical controls are often plain tensors; autograd needs them as leaves with grad.
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def top_hessian_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                           iters: int = 100, tol: float = 1e-4, seed: int = 0) -> float:
    """Largest-magnitude Hessian eigenvalue of loss_fn() w.r.t. params by power iteration on HVPs."""
    params = list(params)
    gen = torch.Generator().manual_seed(seed)
    with _requiring_grad(params):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
        torch._foreach_div_(v, float(global_norm(v)))
        eig = 0.0
        for _ in range(iters):
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            new = float(global_dot(list(hv), v))
            norm = float(global_norm(list(hv)))
            if norm == 0.0:
                return 0.0
            v = [h.detach() / norm for h in hv]
            if abs(new - eig) <= tol * max(abs(new), 1e-12):
                return new
            eig = new
    return eig


@torch.no_grad()
def max_loss_in_ball(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                     rho: float, steps: int = 5,
                     project: Callable[[], None] | None = None) -> tuple[float, float]:
    """(loss at w, highest loss seen within ||delta|| <= rho by normalised ascent); w is restored."""
    params = list(params)
    w0 = [p.detach().clone() for p in params]
    with _requiring_grad(params), torch.enable_grad():
        base = float(loss_fn().detach())
        best = base
        for _ in range(steps):
            g = torch.autograd.grad(loss_fn(), params, allow_unused=True)
            g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)]
            gn = float(global_norm(g))
            if gn == 0.0:
                break
            with torch.no_grad():
                torch._foreach_add_(params, g, alpha=rho / gn)
                delta = torch._foreach_sub([p.detach() for p in params], w0)
                dn = float(global_norm(delta))
                if dn > rho:  # back onto the sphere: the maximiser of a convex loss lies there
                    torch._foreach_mul_(delta, rho / dn)
                    torch._foreach_copy_(params, torch._foreach_add(w0, delta))
                if project is not None:
                    project()  # e.g. keep heater currents inside the driver's range
            best = max(best, float(loss_fn().detach()))
    for p, w in zip(params, w0):
        p.copy_(w)
    return base, best
