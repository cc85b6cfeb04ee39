"""Gradient estimators for physical layers: how dL/d(controls) and dL/d(inputs) are obtained.

Each estimator gets the upstream gradient G = dL/dy of a layer's output and
returns the gradients for its inputs and controls. Perturbative estimators
measure the directional change of the layer output on the rig for the same
batch, so <G, dy>/h is the loss's directional derivative without re-running
the digital layers. The input gradient comes from the twin's VJP.
"""

from __future__ import annotations

from typing import Protocol

import torch


class LayerBackend(Protocol):
    """What an estimator needs of a physical layer."""

    n_controls: int
    twin: torch.nn.Module

    def evaluate(self, x: torch.Tensor, currents: torch.Tensor) -> torch.Tensor: ...


def twin_vjp(backend: LayerBackend, x: torch.Tensor, controls: torch.Tensor,
             grad_out: torch.Tensor, need_controls: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Vector-Jacobian product of the twin at (x, controls): gradients to inputs and controls."""
    with torch.enable_grad():
        xd = x.detach().requires_grad_(True)
        cd = controls.detach().requires_grad_(need_controls)
        out = backend.twin(xd, cd)
        wrt = (xd, cd) if need_controls else (xd,)
        grads = torch.autograd.grad(out, wrt, grad_out.to(out.dtype))
    return grads[0].to(x.dtype), grads[1] if need_controls else None


class GradientEstimator:
    """Base class: forward on the rig; subclasses say how the control gradient is found."""

    name = "base"
    forward_on_rig = True
    margin = 0.0  # distance controls keep from their bounds so perturbations stay legal

    def state_dict(self) -> dict:
        """Random state of the estimator (for exact resume)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""

    def backward(self, backend: LayerBackend, x: torch.Tensor, controls: torch.Tensor,
                 y: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients for (inputs, controls) given dL/dy."""
        grad_x, _ = twin_vjp(backend, x, controls, grad_out, need_controls=False)
        return grad_x, self.control_grad(backend, x, controls, y, grad_out)

    def control_grad(self, backend: LayerBackend, x: torch.Tensor, controls: torch.Tensor,
                     y: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        """dL/d(controls)."""
        raise NotImplementedError


class FiniteDifference(GradientEstimator):
    """Coordinate finite differences: 1 (forward) or 2 (central) rig queries per control."""

    name = "finite_difference"

    def __init__(self, step: float = 1e-5, scheme: str = "central") -> None:
        if scheme not in ("central", "forward"):
            raise ValueError(f"scheme must be 'central' or 'forward', got {scheme!r}")
        self.step, self.scheme = step, scheme
        self.margin = step

    def control_grad(self, backend, x, controls, y, grad_out):
        h, g = self.step, torch.zeros_like(controls)
        probe = controls.detach().clone()
        grad_out = grad_out.to(y.dtype)
        for k in range(probe.numel()):
            base = probe[k].item()
            probe[k] = base + h
            dy = backend.evaluate(x, probe)
            if self.scheme == "central":
                probe[k] = base - h
                dy = dy - backend.evaluate(x, probe)
            else:
                dy = dy - y
            probe[k] = base
            g[k] = torch.vdot(grad_out.flatten(), dy.flatten())
        return g / (2 * h if self.scheme == "central" else h)


class Spsa(GradientEstimator):
    """Simultaneous perturbation along k random sign directions: 2k (or k) queries per step."""

    name = "spsa"

    def __init__(self, step: float = 1e-5, directions: int = 8, scheme: str = "central",
                 seed: int = 0) -> None:
        if scheme not in ("central", "forward"):
            raise ValueError(f"scheme must be 'central' or 'forward', got {scheme!r}")
        self.step, self.directions, self.scheme = step, directions, scheme
        self.margin = step
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        """The direction generator's state."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the direction generator."""
        self.generator.set_state(state["generator"])

    def control_grad(self, backend, x, controls, y, grad_out):
        h, g = self.step, torch.zeros_like(controls)
        grad_out = grad_out.to(y.dtype).flatten()
        base = controls.detach()
        for _ in range(self.directions):
            u = torch.randint(0, 2, base.shape, generator=self.generator).to(base.dtype) * 2 - 1
            dy = backend.evaluate(x, base + h * u)
            if self.scheme == "central":
                slope = torch.vdot(grad_out, (dy - backend.evaluate(x, base - h * u)).flatten()) / (2 * h)
            else:
                slope = torch.vdot(grad_out, (dy - y).flatten()) / h
            g += slope * u  # Rademacher u: E[u u^T] = I, so E[g] is the gradient
        return g / self.directions


class PhysicsAware(GradientEstimator):
    """Physics-aware training: forward on the rig, backward through the twin."""

    name = "physics_aware"

    def backward(self, backend, x, controls, y, grad_out):
        grad_x, grad_c = twin_vjp(backend, x, controls, grad_out)
        return grad_x, grad_c


class TwinAutograd(GradientEstimator):
    """In-silico training: forward and backward through the twin, no rig queries."""

    name = "twin_autograd"
    forward_on_rig = False


ESTIMATORS: dict[str, type[GradientEstimator]] = {
    cls.name: cls for cls in (FiniteDifference, Spsa, PhysicsAware, TwinAutograd)
}
