"""Sharpness probes: top Hessian eigenvalue, Hessian trace, max loss in a rho-ball; weights or controls."""

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


def hutchinson_trace(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                     samples: int = 20, seed: int = 0) -> tuple[float, float]:
    """(Hessian trace of loss_fn() w.r.t. params, its standard error) by Hutchinson's estimator."""
    if samples < 2:
        raise ValueError(f"samples must be at least 2 for a standard error, got {samples}")
    params = list(params)
    gen = torch.Generator().manual_seed(seed)
    with _requiring_grad(params):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        draws = []
        for _ in range(samples):
            # Rademacher rather than Gaussian probes: lower variance, exact for a diagonal Hessian.
            v = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.dtype).to(p.device)
                 for p in params]
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            draws.append(float(global_dot(list(hv), v)))
    values = torch.tensor(draws, dtype=torch.float64)
    return float(values.mean()), float(values.std() / samples ** 0.5)


@torch.no_grad()
def ascend_in_ball(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                   centre: Sequence[torch.Tensor], rho: float) -> bool:
    """One normalised ascent step of length rho, pulled back into the rho-ball about ``centre``;
    False (nothing moved) where the gradient is zero."""
    gn = float(global_norm(list(grads)))
    if gn == 0.0:
        return False
    params = list(params)
    torch._foreach_add_(params, list(grads), alpha=rho / gn)
    delta = torch._foreach_sub([p.detach() for p in params], list(centre))
    dn = float(global_norm(delta))
    if dn > rho:  # back onto the sphere: the maximiser of a convex loss lies there
        torch._foreach_mul_(delta, rho / dn)
        torch._foreach_copy_(params, torch._foreach_add(list(centre), delta))
    return True


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
            if not ascend_in_ball(params, g, w0, rho):
                break
            if project is not None:
                with torch.no_grad():
                    project()  # e.g. keep heater currents inside the driver's range
            best = max(best, float(loss_fn().detach()))
    for p, w in zip(params, w0):
        p.copy_(w)
    return base, best
