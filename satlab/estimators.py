"""Gradient estimators for physical layers: how dL/d(controls) and dL/d(inputs) are obtained.

Each estimator gets the upstream gradient G = dL/dy of a layer's output and
returns the gradients for its inputs and controls. Perturbative estimators
measure the directional change of the layer output on the rig for the same
batch, so <G, dy>/h is the loss's directional derivative without re-running
the digital layers. The input gradient comes from the twin's VJP.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class LayerBackend(Protocol):
    """What an estimator needs of a physical layer."""

    n_controls: int
    twin: torch.nn.Module

    def evaluate(self, x: torch.Tensor, currents: torch.Tensor) -> torch.Tensor: ...

    def query(self, x: torch.Tensor, currents: np.ndarray) -> np.ndarray: ...


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


def _check_scheme(scheme: str) -> None:
    if scheme not in ("central", "forward"):
        raise ValueError(f"scheme must be 'central' or 'forward', got {scheme!r}")


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
        _check_scheme(scheme)
        self.step, self.scheme = step, scheme
        self.margin = step

    def control_grad(self, backend, x, controls, y, grad_out):
        h, central = self.step, self.scheme == "central"
        # numpy in the loop: this is the hot path, one iteration per rig query pair
        probe = controls.detach().numpy().copy()
        y_np = y.numpy()
        changes = np.empty((probe.size, y_np.size))
        for k in range(probe.size):
            base = probe[k]
            probe[k] = base + h
            plus = backend.query(x, probe)
            if central:
                probe[k] = base - h
            np.subtract(plus, backend.query(x, probe) if central else y_np,
                        out=changes[k].reshape(plus.shape))
            probe[k] = base
        g = changes @ grad_out.detach().double().numpy().ravel() / (2 * h if central else h)
        return torch.from_numpy(g).to(controls.dtype)


class Spsa(GradientEstimator):
    """Simultaneous perturbation along k random sign directions: 2k (or k) queries per step."""

    name = "spsa"

    def __init__(self, step: float = 1e-5, directions: int = 8, scheme: str = "central",
                 seed: int = 0) -> None:
        _check_scheme(scheme)
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
        h, central = self.step, self.scheme == "central"
        base = controls.detach().numpy()
        signs = torch.randint(0, 2, (self.directions, base.size), generator=self.generator)
        u = signs.double().numpy() * 2 - 1
        changes = np.empty((self.directions, y.numel()))
        for d in range(self.directions):
            plus = backend.query(x, base + h * u[d])
            minus = backend.query(x, base - h * u[d]) if central else y.numpy()
            changes[d] = (plus - minus).ravel()
        slopes = changes @ grad_out.detach().double().numpy().ravel() / (2 * h if central else h)
        # Rademacher u: E[u u^T] = I, so the mean of slope * u is an unbiased gradient estimate
        return torch.from_numpy(slopes @ u / self.directions).to(controls.dtype)


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
