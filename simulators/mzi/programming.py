"""Programming a unitary into an MZI mesh: Clements and Reck decompositions, fidelity,
and an error-aware refinement for a mesh whose couplers are not 50:50.

The decompositions null the target's off-diagonal elements one MZI at a time
(Reck et al., PRL 73, 58; Clements et al., Optica 3, 1460) with the MZI of
``mesh.py``: ``M = g [[s e^{i phi}, c], [c e^{i phi}, -s]]``, ``g = i e^{i theta/2}``,
``s, c = sin, cos(theta/2)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from satlab.simulators.mzi.mesh import MeshLayout, MziMesh, mesh_unitary

_TINY = 1e-14


def _mzi(theta: float, phi: float) -> np.ndarray:
    g = 1j * np.exp(1j * theta / 2)
    s, c = math.sin(theta / 2), math.cos(theta / 2)
    return g * np.array([[s * np.exp(1j * phi), c], [c * np.exp(1j * phi), -s]])


def _null_on_the_right(um: complex, un: complex) -> tuple[float, float]:
    """theta, phi with ([um, un] @ M^H)[0] = 0."""
    theta = 2 * math.atan2(abs(un), abs(um))
    phi = float(np.angle(-um / un)) if min(abs(um), abs(un)) > _TINY else 0.0
    return theta, phi


def _null_on_the_left(um: complex, un: complex) -> tuple[float, float]:
    """theta, phi with (M @ [um, un])[1] = 0."""
    theta = 2 * math.atan2(abs(um), abs(un))
    phi = float(np.angle(un / um)) if min(abs(um), abs(un)) > _TINY else 0.0
    return theta, phi


def _diagonal_first(a: np.ndarray) -> tuple[float, float, complex, complex]:
    """theta, phi, d1, d2 with a = diag(d1, d2) @ M(theta, phi) for a 2x2 unitary a."""
    theta = 2 * math.atan2(abs(a[0, 0]), abs(a[0, 1]))
    g = 1j * np.exp(1j * theta / 2)
    s, c = math.sin(theta / 2), math.cos(theta / 2)
    both = a[0, 0] * np.conj(a[0, 1]) - a[1, 0] * np.conj(a[1, 1])
    turn = both / abs(both) if abs(both) > _TINY else 1.0
    d1 = (a[0, 0] / turn * s + a[0, 1] * c) / g
    d2 = (a[1, 0] / turn * c - a[1, 1] * s) / g
    return theta, float(np.angle(turn)), d1, d2


def _clements(u: np.ndarray) -> tuple[list[tuple[int, float, float]], np.ndarray]:
    n = len(u)
    right, left = [], []
    for i in range(1, n):
        if i % 2:
            for j in range(i):
                row, m = n - 1 - j, i - 1 - j
                theta, phi = _null_on_the_right(u[row, m], u[row, m + 1])
                u[:, m:m + 2] = u[:, m:m + 2] @ _mzi(theta, phi).conj().T
                right.append((m, theta, phi))
        else:
            for j in range(1, i + 1):
                row, col = n + j - i - 1, j - 1
                theta, phi = _null_on_the_left(u[row - 1, col], u[row, col])
                u[row - 1:row + 1] = _mzi(theta, phi) @ u[row - 1:row + 1]
                left.append((row - 1, theta, phi))
    d = np.diag(u).copy()
    # u = L1^H ... Lk^H D R_p ... R_1: move each L^H through D, innermost first
    moved = []
    for m, theta, phi in reversed(left):
        theta, phi, d[m], d[m + 1] = _diagonal_first(_mzi(theta, phi).conj().T @ np.diag(d[m:m + 2]))
        moved.append((m, theta, phi))
    return right + moved, d


def _reck(u: np.ndarray) -> tuple[list[tuple[int, float, float]], np.ndarray]:
    n, sequence = len(u), []
    for row in range(n - 1, 0, -1):
        for m in range(row):
            theta, phi = _null_on_the_right(u[row, m], u[row, m + 1])
            u[:, m:m + 2] = u[:, m:m + 2] @ _mzi(theta, phi).conj().T
            sequence.append((m, theta, phi))
    return sequence, np.diag(u).copy()


def decompose(layout: MeshLayout, target: np.ndarray) -> torch.Tensor:
    """Heater-ordered phases (theta, phi of every MZI, then psi) that make an error-free
    mesh of ``layout`` equal the unitary ``target``."""
    u = np.array(target, dtype=complex)
    if u.shape != (layout.modes, layout.modes):
        raise ValueError(f"a {layout.modes}-mode mesh programs a {layout.modes}x{layout.modes} "
                         f"unitary, got {u.shape}")
    sequence, d = (_clements if layout.name == "rectangular" else _reck)(u)
    theta, phi = np.zeros(layout.size), np.zeros(layout.size)
    slots: dict[int, list[int]] = {}  # the k-th MZI on a pair goes to the pair's k-th slot
    for k, m in enumerate(layout.pairs):
        slots.setdefault(int(m), []).append(k)
    for m, t, p in sequence:
        k = slots[m].pop(0)
        theta[k], phi[k] = t, p
    return torch.from_numpy(np.concatenate([theta, phi, np.angle(d)]))


def fidelity(target: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """|tr(T^H U)|^2 / (N tr(U^H U)): 1 when U equals T up to a global phase and loss."""
    n = target.shape[-1]
    overlap = (target.conj() * got).sum((-2, -1))
    return overlap.abs() ** 2 / (n * (got.abs() ** 2).sum((-2, -1)))


def refine_for_errors(mesh: MziMesh, target: torch.Tensor, phases: torch.Tensor,
                      iterations: int = 300) -> torch.Tensor:
    """Phases that bring the mesh's own unitary (its coupler errors, not its unknown phase
    errors) closest to ``target``, starting from ``phases`` (an error-free decomposition)."""
    free = phases.double().clone().requires_grad_(True)
    e1, e2 = mesh.errors.get("e1", 0.0), mesh.errors.get("e2", 0.0)
    target = target.to(torch.complex128)
    n = mesh.layout.size
    optimizer = torch.optim.LBFGS([free], lr=1, max_iter=iterations, tolerance_grad=1e-12,
                                  tolerance_change=1e-15, history_size=50,
                                  line_search_fn="strong_wolfe")

    def infidelity() -> torch.Tensor:
        optimizer.zero_grad()
        u = mesh_unitary(mesh.layout, free[:n], free[n:2 * n], free[2 * n:], e1, e2)
        loss = 1 - fidelity(target, u)
        loss.backward()
        return loss

    optimizer.step(infidelity)
    return free.detach()


def haar_unitary(modes: int, generator: np.random.Generator) -> np.ndarray:
    """A unitary drawn from the Haar measure (QR of a complex Gaussian, phases fixed)."""
    z = (generator.standard_normal((modes, modes)) + 1j * generator.standard_normal((modes, modes)))
    q, r = np.linalg.qr(z / math.sqrt(2))
    return q * (np.diag(r) / np.abs(np.diag(r)))
