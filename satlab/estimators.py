"""Gradient estimators for physical layers: how dL/d(controls) and dL/d(inputs) are obtained.

Each estimator gets the upstream gradient G = dL/dy of a layer's output and
returns the gradients for its inputs and controls. Perturbative estimators
measure the directional change of the layer output on the rig for the same
batch, so <G, dy>/h is the loss's directional derivative without re-running
the digital layers. The input gradient comes from the twin's VJP.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from satlab.systems.protocol import LayerBackend

# Probes per query_many call are capped so (probes x controls) stays near 32 MB of float64.
MAX_PROBE_VALUES = 2**22


def _query_chunked(backend: LayerBackend, x: torch.Tensor, probes: np.ndarray) -> np.ndarray:
    """Readings (P, B, out) of every probe; one call unless the stack is very large."""
    rows = max(1, MAX_PROBE_VALUES // probes.shape[1])
    if len(probes) <= rows:
        return backend.query_many(x, probes)
    return np.concatenate([backend.query_many(x, probes[i:i + rows])
                           for i in range(0, len(probes), rows)])


def twin_vjp(backend: LayerBackend, x: torch.Tensor, controls: torch.Tensor,
             grad_out: torch.Tensor, need_controls: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Vector-Jacobian product of the twin at (x, controls): gradients to inputs and controls."""
    with torch.enable_grad():
        xd = x.detach().requires_grad_(True)
        cd = controls.detach().requires_grad_(need_controls)
        out = backend.twin_output(xd, cd)
        wrt = (xd, cd) if need_controls else (xd,)
        grads = torch.autograd.grad(out, wrt, grad_out.to(out.dtype))
    return grads[0].to(x.dtype), grads[1] if need_controls else None


def alignment_slopes(backend: LayerBackend, x: torch.Tensor, controls: torch.Tensor,
                     grad_out: torch.Tensor, probed: np.ndarray) -> np.ndarray:
    """dL/d(knob) of the ``probed`` alignment knobs by central differences on the rig: each
    knob moved by ± its step, the layer queried at the same inputs and controls; the
    knobs end where they started."""
    g = grad_out.detach().double().numpy()
    c = controls.detach().numpy()
    start = backend.alignment.copy()
    slopes = np.zeros(len(start))
    try:
        for i in np.flatnonzero(probed):
            step = backend.knobs[i].step
            readings = []
            for sign in (1.0, -1.0):
                at = start.copy()
                at[i] += sign * step
                backend.align(at)
                readings.append(backend.query(x, c))
            slopes[i] = float(np.sum((readings[0] - readings[1]) * g)) / (2 * step)
    finally:
        backend.align(start)
    return slopes


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


@functools.lru_cache(maxsize=16)
def hadamard(size: int) -> np.ndarray:
    """Sylvester Hadamard matrix of the next power of two >= size: orthogonal +-1 rows."""
    h = np.ones((1, 1))
    while len(h) < size:
        h = np.block([[h, h], [h, -h]])
    return h


def positions_in_block(outputs: np.ndarray) -> np.ndarray:
    """Each control's index among the controls that share its output."""
    order = np.argsort(outputs, kind="stable")
    starts = np.searchsorted(outputs[order], outputs[order])
    pos = np.empty_like(order)
    pos[order] = np.arange(len(order)) - starts
    return pos


class GradientEstimator:
    """Base class: forward on the rig; subclasses say how the control gradient is found."""

    name = "base"
    forward_on_rig = True
    perturbs = False  # probes the rig at controls +- step (the step must fit the control range)
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
    perturbs = True

    def __init__(self, step: float = 1e-5, scheme: str = "central") -> None:
        _check_choice("scheme", scheme, ("central", "forward"))
        self.step, self.scheme = step, scheme
        self.margin = step

    def control_grad(self, backend, x, controls, y, grad_out):
        h, central = self.step, self.scheme == "central"
        base = controls.detach().numpy()
        n, k = base.size, np.arange(base.size)
        # probes in the order of a one-at-a-time loop: +h e_0, -h e_0, +h e_1, ...
        probes = np.repeat(base[None], 2 * n if central else n, axis=0)
        if central:
            probes[2 * k, k] += h
            probes[2 * k + 1, k] -= h
            readings = _query_chunked(backend, x, probes).reshape(n, 2, -1)
            changes = readings[:, 0] - readings[:, 1]
        else:
            probes[k, k] += h
            changes = _query_chunked(backend, x, probes).reshape(n, -1) - y.numpy().reshape(1, -1)
        g = changes @ grad_out.detach().double().numpy().ravel() / (2 * h if central else h)
        return torch.from_numpy(g).to(controls.dtype)


class Spsa(GradientEstimator):
    """Simultaneous perturbation along k sign directions: 2k (or k) queries per step.

    ``directions="rademacher"``: independent random signs. ``"hadamard"``: rows of
    a Hadamard matrix (orthogonal, drawn without replacement) with a random sign
    per control, so k = (block size) directions recover the gradient exactly in
    the linear regime. ``blockwise``: where the layer declares which output each
    control changes (``control_outputs``), each control's slope is read from its
    own output alone; the other outputs' changes, pure noise for it, drop out.
    Every variant is unbiased: E[u u^T] = I over the random draws.
    """

    name = "spsa"
    perturbs = True

    def __init__(self, step: float = 1e-5, directions: int = 8, scheme: str = "central",
                 seed: int = 0, distribution: str = "rademacher", blockwise: bool = False) -> None:
        _check_choice("scheme", scheme, ("central", "forward"))
        _check_choice("distribution", distribution, ("rademacher", "hadamard"))
        self.step, self.directions, self.scheme = step, directions, scheme
        self.distribution, self.blockwise = distribution, blockwise
        self.margin = step
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        """The direction generator's state."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the direction generator."""
        self.generator.set_state(state["generator"])

    def draw(self, n: int, outputs: np.ndarray | None) -> np.ndarray:
        """Perturbation directions (k, n) of +-1 entries."""
        if self.distribution == "rademacher":
            signs = torch.randint(0, 2, (self.directions, n), generator=self.generator)
            return signs.double().numpy() * 2 - 1
        pos = positions_in_block(outputs) if outputs is not None else np.arange(n)
        rows = hadamard(int(pos.max()) + 1)
        pick = torch.randperm(len(rows), generator=self.generator)[:self.directions].numpy()
        flips = torch.randint(0, 2, (n,), generator=self.generator).double().numpy() * 2 - 1
        return rows[np.ix_(pick, pos)] * flips

    def control_grad(self, backend, x, controls, y, grad_out):
        h, central = self.step, self.scheme == "central"
        base = controls.detach().numpy()
        outputs = backend.control_outputs if self.blockwise else None
        u = self.draw(base.size, outputs)
        k = len(u)
        if central:  # +h u_0, -h u_0, +h u_1, ...: the order of a one-at-a-time loop
            probes = np.empty((2 * k, base.size))
            probes[0::2], probes[1::2] = base + h * u, base - h * u
            readings = _query_chunked(backend, x, probes).reshape(k, 2, *y.shape)
            changes = readings[:, 0] - readings[:, 1]
        else:
            changes = _query_chunked(backend, x, base + h * u) - y.numpy()
        scale = 2 * h if central else h
        g_out = grad_out.detach().double().numpy()
        if outputs is None:
            slopes = changes.reshape(k, -1) @ g_out.ravel() / scale
            g = slopes @ u / k
        else:  # each output's own directional derivative, (k, out)
            slopes = np.einsum("dbo,bo->do", changes, g_out) / scale
            g = (slopes[:, outputs] * u).sum(0) / k
        return torch.from_numpy(g).to(controls.dtype)


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
